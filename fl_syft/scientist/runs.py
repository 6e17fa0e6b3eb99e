"""One run, end to end, the same for the CLI, the notebook, the demo and the benchmark.

A :class:`RunRequest` says what to run; :func:`run` plans it against the sites' published
privacy statuses (the algorithm, wrapped as the sites' policies and the request make it run),
trains, scores the baselines if asked, and writes every output (``scientist.outputs``, then
``scientist.report``). :func:`resume` continues a run from its checkpoint with exactly the
algorithm, mode and state it saved.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fl_syft.common.errors import ConfigError, counted
from fl_syft.common.features import DEFAULT as DEFAULT_FEATURES
from fl_syft.common.features import feature_map
from fl_syft.common.protocol import ML_EXPERIMENT
from fl_syft.scientist import baselines as reference
from fl_syft.scientist import spending
from fl_syft.scientist.algorithms import (
    REGISTRY,
    Algorithm,
    State,
    build,
    check_given,
    mode_of,
    rebuild,
    setting_owners,
    settings_names,
)
from fl_syft.scientist.algorithms.private import Private
from fl_syft.scientist.algorithms.secure import Secure
from fl_syft.scientist.evaluate import features_of_test_set, score
from fl_syft.scientist.outputs import (
    CheckpointError,
    check_out_dir,
    metrics,
    read_checkpoint,
    write_csv,
    write_outputs,
)
from fl_syft.scientist.report import write_report
from fl_syft.scientist.rounds import Resilience, Site, SitesFailed

log = logging.getLogger("fl_syft")

Histogram = tuple[dict[str, list[int]], str]  # site -> rows per digit, and which rows they are


@dataclass(frozen=True)
class RunRequest:
    """What a run asks for. ``settings``: the algorithm's and its wrappers' settings given (by name;
    unset ones take their defaults); ``rounds`` None: the mode's default; under the sites' DP
    ``epsilon`` is what the run may spend per site (default: what the sites have left);
    ``secure``: secure aggregation (the scientist sees only sums); ``features``: the fixed feature
    map the model is on (``common.features``); ``config`` describes the run in metrics.json
    (command, data, partition ...; the algorithm, its settings, features and mode are added)."""

    algorithm: str = "fedavg"
    features: str = DEFAULT_FEATURES
    settings: dict[str, Any] = field(default_factory=dict)
    rounds: int | None = None
    epsilon: float | None = None
    secure: bool = False
    baselines: bool = False
    out: Path | None = None
    overwrite: bool = False
    resilience: Resilience = Resilience()
    config: dict = field(default_factory=dict)

    def check(self) -> None:
        """Refuse, before anything is launched or connected, what this run could not do."""
        if self.algorithm not in REGISTRY:
            raise ConfigError(f"{{algorithm}} {self.algorithm!r} is unknown: use one of {', '.join(REGISTRY)}")
        feature_map(self.features)
        check_given(self.algorithm, self.settings)
        build_settings(self.algorithm, self.settings)
        if self.rounds is not None and self.rounds < 1:
            raise ConfigError(f"{{rounds}} must be at least 1, got {self.rounds}")
        if self.epsilon is not None and not self.epsilon > 0:
            raise ConfigError(f"{{epsilon}} must be > 0, got {self.epsilon:g}")
        check_resilience(REGISTRY[self.algorithm], self.resilience)
        if self.out is not None:
            check_out_dir(self.out, self.overwrite, resumable=self.config.get("command") != "simulate")

    def functions(self) -> tuple[Callable, ...]:
        """The vetted functions every site must approve for this run (each once, in order)."""
        return required_functions(REGISTRY[self.algorithm], self.baselines)


def build_settings(name: str, given: dict[str, Any]) -> None:
    """Every settings object the given values make (the algorithm's, each wrapper's), checked."""
    for owner in setting_owners(name):
        owner.settings_type(**{k: v for k, v in given.items() if k in settings_names(owner)}).check()


def check_resilience(algorithm: type[Algorithm] | Algorithm, resilience: Resilience) -> None:
    """A dropout rule the algorithm cannot honour is refused before anything is connected."""
    if resilience.min_sites is not None and algorithm.needs_every_site:
        raise ConfigError(f"{{min_sites}} cannot apply to {algorithm.name}: every site must answer every round "
                          "(its objective is their sum): drop {min_sites}")


def required_functions(cls: type[Algorithm], baselines: bool) -> tuple[Callable, ...]:
    return tuple(dict.fromkeys(cls.functions + (reference.FUNCTIONS if baselines else ())))


@dataclass
class Resume:
    """Where an interrupted run stopped: its directory, config (with its mode), completed rounds,
    and every array its algorithm carried after the last of them."""

    out: Path
    config: dict
    history: list[dict]
    params: dict

    @classmethod
    def read(cls, out: Path) -> Resume:
        config, history, params = read_checkpoint(out)
        if "rounds" not in config:  # before the run's mode was saved with it
            raise CheckpointError(f"--resume {out}: its checkpoint was written by an older fl-syft, which saved "
                                  "neither the rounds nor the plan a resume needs; start a new run")
        return cls(out, config, history, params)

    @cached_property
    def algorithm(self) -> Algorithm:
        return rebuild(self.config)

    def check(self, rounds: int | None = None, resilience: Resilience = Resilience()) -> int:
        """The rounds the resumed run ends at; ConfigError if it cannot continue."""
        algorithm = self.algorithm
        if not algorithm.resumable:
            raise ConfigError(f"{{resume}} continues {', '.join(n for n, c in REGISTRY.items() if c.resumable)} "
                              f"runs only ({algorithm.name} keeps its state in memory)")
        check_resilience(algorithm, resilience)
        if rounds is not None and rounds < 1:
            raise ConfigError(f"{{rounds}} must be at least 1, got {rounds}")
        if rounds is None:
            return self.config["rounds"]
        # Under DP the remaining rounds are replanned (``spending.replan``), which refuses a count
        # the budget left cannot carry.
        return rounds if Private.key in mode_of(algorithm) else algorithm.rounds_for(rounds)

    def functions(self) -> tuple[Callable, ...]:
        return required_functions(REGISTRY[self.config["algorithm"]], False)


@dataclass
class Outcome:
    params: dict
    history: list[dict]
    scores: dict = field(default_factory=dict)  # baselines
    report: Path | None = None
    config: dict = field(default_factory=dict)  # the run as metrics.json describes it (its plan included)


@dataclass(frozen=True)
class Planned:
    """A run planned against the sites' published statuses, before anything is submitted to them:
    its algorithm (wrapped as the sites' policies make it run), rounds, metrics.json config and,
    under DP with baselines, the request each site alone runs with."""

    algorithm: Algorithm
    rounds: int
    config: dict
    alone: RunRequest | None = None


def plan(sites: Sequence[Site], request: RunRequest) -> Planned:
    """Plan ``request`` over ``sites`` from their published privacy statuses (their ledgers); a
    run that cannot go ahead (a spent budget, noise no step can carry ...) is refused here, with
    ConfigError, before anything is submitted, trained or charged."""
    request.check()
    statuses = [site.privacy() for site in sites]
    algorithm = build(request.algorithm, request.settings, statuses, request)
    rounds = algorithm.rounds_for(request.rounds)
    mode = mode_of(algorithm)
    alone = spending.plan_private_alone(request, mode, statuses) if request.baselines and Private.key in mode else None
    config = {**request.config, "algorithm": algorithm.name, "features": algorithm.features.spec, "rounds": rounds,
              "training": algorithm.training(), **mode}
    if Secure.key in mode:
        log.info("secure aggregation: each round only the sum of at least %d sites is unmasked",
                 mode[Secure.key]["threshold"])
    if Private.key in mode:
        spending.log_plan(mode[Private.key])
    return Planned(algorithm, rounds, config, alone)


def run(sites: Sequence[Site], request: RunRequest, X_test: np.ndarray, y_test: np.ndarray, *,
        ceiling: Callable[[float, str], dict] | None = None, histogram: Histogram | None = None,
        planned: Planned | None = None) -> Outcome:
    """Plan ``request`` over ``sites`` (or take ``planned``: :func:`plan`), train, score the
    baselines if asked, write the outputs.

    ``X_test``: the public test set's (n, 784) uint8 images (their features are computed here).
    ``ceiling(C, features)`` and ``histogram``: what only a simulation can compute from pooled rows
    (``fl_syft.simulate``): the centralized ceiling's model for the run's C and feature map, and
    each site's rows per digit.
    """
    planned = planned or plan(sites, request)
    algorithm = planned.algorithm
    return _train(sites, algorithm, planned.rounds, State(), planned.config,
                  features_of_test_set(algorithm.features, X_test), y_test, out=request.out,
                  resilience=request.resilience, baselines=request.baselines, ceiling=ceiling, histogram=histogram,
                  alone=planned.alone)


def resume(sites: Sequence[Site], saved: Resume, X_test: np.ndarray, y_test: np.ndarray, *,
           rounds: int | None = None, resilience: Resilience = Resilience(),
           replanned: Algorithm | None = None) -> Outcome:
    """Continue ``saved`` from its last completed round to ``rounds`` (default: the rounds it
    planned); under DP the remaining rounds' noise is replanned from the sites' ledgers
    (``spending.replan``, or ``replanned``: its result): a round charged but lost is accounted,
    and the run still ends within what it was to spend."""
    rounds = saved.check(rounds, resilience)
    done = len(saved.history)
    config = {**saved.config, "rounds": rounds}
    if done >= rounds:
        return _nothing_to_do(saved, rounds)
    log.info("resuming %s after round %d of %d", saved.out, done, rounds)
    algorithm = replanned or spending.replan(saved.algorithm, sites, done, rounds)
    config.update(mode_of(algorithm), training=algorithm.training())
    return _train(sites, algorithm, rounds, State(saved.params, saved.history), config,
                  features_of_test_set(algorithm.features, X_test), y_test, out=saved.out, resilience=resilience)


def _nothing_to_do(saved: Resume, rounds: int) -> Outcome:
    log.info("nothing to do: %s already completed (%s asked for)", counted(len(saved.history), "round"),
             counted(rounds, "round"))
    return Outcome(saved.params, saved.history, config={**saved.config, "rounds": rounds})


def secure_by_default(algorithm: str) -> bool:
    """The demo's default: secure aggregation wherever the algorithm has a secure form (the
    scientist sees sums, and under DP the sum carries the noise of one mechanism, not one per site)."""
    return Secure.wraps(REGISTRY[algorithm])


def run_over(addresses: Sequence, password: Any, request: RunRequest, data: str, *,
             approval_timeout: float = 60.0) -> Outcome:
    """:func:`run` over running datasites: the public test set loaded, the sites connected and the
    request's vetted functions approved there (``scientist.connect``)."""
    from fl_syft.common.data import load_mnist
    from fl_syft.scientist.connect import approve, connect

    request.check()
    mnist = load_mnist(data)
    sites = connect(addresses, password)
    planned = plan(sites, request)  # refused here, before anything is submitted
    approve(sites, request.functions(), approval_timeout)
    return run(sites, request, mnist.X_test, mnist.y_test, planned=planned)


def resume_over(addresses: Sequence, password: Any, saved: Resume, data: str, *, rounds: int | None = None,
                resilience: Resilience = Resilience(), approval_timeout: float = 60.0) -> Outcome:
    """:func:`resume` over running datasites (as :func:`run_over`)."""
    from fl_syft.common.data import load_mnist
    from fl_syft.scientist.connect import approve, connect

    to = saved.check(rounds, resilience)
    if len(saved.history) >= to:
        return _nothing_to_do(saved, to)  # no site is needed
    mnist = load_mnist(data)
    sites = connect(addresses, password)
    replanned = spending.replan(saved.algorithm, sites, len(saved.history), to)  # refused up front
    approve(sites, saved.functions(), approval_timeout)
    return resume(sites, saved, mnist.X_test, mnist.y_test, rounds=rounds, resilience=resilience, replanned=replanned)


def _train(sites: Sequence[Site], algorithm: Algorithm, rounds: int, state: State, config: dict,
           X_test: np.ndarray, y_test: np.ndarray, *, out: Path | None, resilience: Resilience,
           baselines: bool = False, ceiling: Callable[[float, str], dict] | None = None,
           histogram: Histogram | None = None, alone: RunRequest | None = None) -> Outcome:
    """Train, score and write (``X_test``: the test set's features on ``algorithm.features``;
    ``alone``: under DP, the request each site alone runs with, :func:`spending.plan_private_alone`)."""
    scores: dict = {}
    saved = len(state.history) if out else 0  # the rounds out's checkpoint holds

    def save(params: dict, history: list[dict]) -> None:
        nonlocal saved
        if out:
            write_outputs(out, metrics(config, history, scores), params, algorithm.features)
            saved = len(history)

    try:
        state = algorithm.run(sites, X_test, y_test, rounds=rounds, state=state, on_round=save, resilience=resilience)
    except SitesFailed as e:
        raise SitesFailed(f"{e.template}; {_after_failure(saved, out, config.get('command'))}") from None
    mode = mode_of(algorithm)
    if alone:
        spending.run_private_alone(scores, alone, sites, X_test, y_test, resilience)
    elif baselines and mode:
        why = "with secure aggregation no site's own model is revealed"
        log.info("baselines dropped: %s", why)
        scores["dropped"] = why
    elif baselines:
        scores.update(_baselines(sites, algorithm, X_test, y_test, resilience, ceiling))
    doc = metrics(config, state.history, scores, algorithm.final_round(state.history),
                  algorithm.stop_reason(state.history, rounds))
    if Private.key in mode:
        doc["final"]["epsilon_spent"] = {s["site"]: {"epsilon": s["epsilon_spent"], "delta": s["policy"]["delta"],
                                                     "of": s["policy"]["epsilon"]}
                                         for s in (site.privacy() for site in sites)}
        log.info("epsilon spent per site: %s", ", ".join(f"{k} {v['epsilon']:.4g} of {v['of']:.4g}"
                                                          for k, v in doc["final"]["epsilon_spent"].items()))
    log.info("final global test accuracy %.2f%% (the model of round %d; %s run: %s)",
             100 * doc["final"]["global_test_accuracy"], doc["final"]["round"], counted(len(state.history), "round"),
             doc["final"]["stopped"])
    outcome = Outcome(state.params, state.history, scores, config=config)
    if out:
        write_outputs(out, doc, state.params, algorithm.features)
        write_csv(out / "metrics.csv", state.history)
        counts, rows = histogram or _histogram(state.history, scores, algorithm)
        outcome.report = write_report(out, doc, algorithm, state.params, X_test, y_test, counts, rows)
        log.info("report: %s", outcome.report)
    return outcome


def _after_failure(saved: int, out: Path | None, command: str | None) -> str:
    """What a failed run leaves and how to go on from it (once its cause, named before, is fixed:
    a site down, or refusing by its owner's policy, which asking again does not change)."""
    if command == "simulate":
        return "a simulation keeps no state to resume from: run it again"
    if not saved:
        return "nothing is saved (no round completed, or no --out)"
    again = " (restart the demo's sites with fl-syft launch --keep)" if command == "demo" else ""
    return f"rounds 1..{saved} are saved in {out}: once the cause is fixed{again}, fl-syft run --resume {out}"


def _baselines(sites: Sequence[Site], algorithm: Algorithm, X_test: np.ndarray, y_test: np.ndarray,
               resilience: Resilience, ceiling: Callable[[float, str], dict] | None) -> dict:
    training = algorithm.training()
    C = training.get("C", ML_EXPERIMENT["C"].default)
    log.info("baselines: each site alone to convergence%s", " and the pooled ceiling" if ceiling else "")
    seed = training.get("seed", ML_EXPERIMENT["seed"].default)
    scores = {"local_only": reference.local_only(sites, X_test, y_test, features=algorithm.features, C=C,
                                                 holdout=_holdout(algorithm), seed=seed, resilience=resilience)}
    if ceiling is not None:
        started = time.perf_counter()
        best = ceiling(C, algorithm.features.name)
        scores["centralized"] = {"test_accuracy": score(best["params"], X_test, y_test)["accuracy"],
                                 "n_iter": best["n_iter"], "seconds": time.perf_counter() - started,
                                 "note": "pooled shards: computable only in simulation"}
    for name, value in sorted(scores.items()):
        log.info("baseline %s: %s", name, _describe_baseline(value))
    return scores


def _describe_baseline(value: dict) -> str:
    if "test_accuracy" in value:
        return f"{100 * value['test_accuracy']:.2f}%"
    accs = [v["test_accuracy"] for v in value.values()]
    return f"mean {100 * sum(accs) / len(accs):.2f}%, min {100 * min(accs):.2f}%"


def _histogram(history: list[dict], scores: dict, algorithm: Algorithm) -> tuple[dict | None, str]:
    """(site -> rows per digit, which rows they are) for the report, from what the sites reported."""
    rows = f"the training rows each site reported (its {_holdout(algorithm):.0%} held-out rows not included)"
    if scores.get("local_only"):
        return {name: v["class_counts"] for name, v in scores["local_only"].items()}, rows
    first = history[0]["sites"] if history else {}
    counts = {name: m["class_counts"] for name, m in first.items() if "class_counts" in m}
    return counts or None, rows


def _holdout(algorithm: Algorithm) -> float:
    """The held-out fraction of each site's rows in ``ml_experiment`` calls (its default if unset;
    none under DP, where every row trains)."""
    if Private.key in mode_of(algorithm):
        return 0.0
    holdout = algorithm.training().get("holdout")
    return reference.DEFAULT_HOLDOUT if holdout is None else holdout
