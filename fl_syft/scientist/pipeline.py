"""One run, end to end, the same for the CLI, the notebook and the benchmark: train with an
algorithm over the sites, score the baselines if asked, and write every output."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fl_syft.common.errors import ConfigError
from fl_syft.scientist import baselines as reference
from fl_syft.scientist.algorithms import REGISTRY, Algorithm
from fl_syft.scientist.report import check_out_dir, metrics, read_checkpoint, write_outputs, write_report
from fl_syft.scientist.rounds import Resilience, Site

log = logging.getLogger("fl_syft")


def required_functions(algorithm: Algorithm, baselines: bool) -> tuple[Callable, ...]:
    """The vetted functions every site must approve for this run (each once, in order)."""
    needed = algorithm.functions + (reference.FUNCTIONS if baselines else ())
    return tuple(dict.fromkeys(needed))


def algorithm_from_config(config: dict) -> Algorithm:
    """The algorithm a run's saved ``config`` (metrics.json, checkpoint) describes (under DP with
    its saved plan: a resumed run keeps its noise)."""
    cls = REGISTRY[config.get("algorithm", "fedavg")]
    settings = cls.settings_type(**config["training"])
    if config.get("privacy") or config.get("secure_aggregation"):
        from fl_syft.scientist.algorithms import fedavg

        secure = config.get("secure_aggregation")
        if config.get("privacy"):
            return (fedavg.SecurePrivateFedAvg(settings, config["privacy"], secure["threshold"]) if secure
                    else fedavg.PrivateFedAvg(settings, config["privacy"]))
        return fedavg.SecureFedAvg(settings, secure["threshold"])
    return cls(settings)


def check_run(algorithm: Algorithm, resilience: Resilience | None = None, *, out: Path | None = None,
              overwrite: bool = False) -> None:
    """Refuse, before anything is launched or connected, what this run could not do: a
    dropout rule the algorithm cannot honour, or an ``out`` that cannot (or must not) be written."""
    if resilience and resilience.min_sites is not None and algorithm.needs_every_site:
        raise ConfigError(f"{{min_sites}} cannot apply to {algorithm.name}: every site must answer every round "
                          "(its objective is their sum): drop {min_sites}")
    if out is not None:
        check_out_dir(out, overwrite)


@dataclass
class Resume:
    """Where an interrupted run stopped: its config, completed rounds and last global model."""

    config: dict
    history: list[dict]
    params: dict

    @classmethod
    def read(cls, out: Path) -> Resume:
        return cls(*read_checkpoint(out))


@dataclass
class Outcome:
    params: dict
    history: list[dict]
    scores: dict = field(default_factory=dict)  # baselines
    report: Path | None = None


def train_and_report(sites: Sequence[Site], algorithm: Algorithm, X_test: np.ndarray, y_test: np.ndarray,
                     config: dict, *, out: Path | None = None, resilience: Resilience = Resilience(),
                     resume: Resume | None = None, baselines: bool = False, epsilon: float | None = None,
                     secure: bool = False, pooled: Sequence[np.ndarray] | None = None) -> Outcome:
    """Train, score the baselines if asked, and write every output to ``out`` (if given).

    ``config`` describes the run in metrics.json (command, data, partition ...; the algorithm,
    its settings and its privacy plan are added here). The sites' published privacy policies
    decide how the algorithm runs (:meth:`Algorithm.for_privacy`); under DP ``epsilon`` is what
    this run may spend per site (default: what the sites have left); ``secure``: secure
    aggregation (the scientist sees only sums). ``pooled``: every site's
    shard, where pooling is legitimate (simulation only): enables the centralized ceiling and
    the exact histogram.
    """
    if resume and not algorithm.resumable:
        raise ConfigError(f"{{resume}} continues {', '.join(n for n, c in REGISTRY.items() if c.resumable)} "
                          f"runs only ({algorithm.name} keeps its state in memory)")
    check_run(algorithm, resilience)
    algorithm = algorithm.for_privacy([site.privacy() for site in sites], epsilon, secure)
    private, threshold = getattr(algorithm, "plan", None), getattr(algorithm, "threshold", None)
    config = {**config, "algorithm": algorithm.name,
              "training": asdict(algorithm.requested if private or threshold else algorithm.settings)}
    if threshold:
        config["secure_aggregation"] = {"threshold": threshold}
        log.info("secure aggregation: each round only the sum of at least %d sites is unmasked", threshold)
    if private:
        config["privacy"] = private
        log.info("privacy: this run spends epsilon %.3g per site (delta %g): %d noisy steps per site, noise "
                 "multiplier %.4g", private["epsilon_per_site"], private["delta"], private["noisy_steps_per_site"],
                 private["noise_multiplier"])
    history = resume.history if resume else []
    if history and len(history) >= algorithm.settings.rounds:
        log.info("nothing to do: %d of %d rounds already completed", len(history), algorithm.settings.rounds)
        return Outcome(resume.params, history)
    scores: dict = {}

    def save(params: dict, history: list[dict]) -> None:
        if out:
            write_outputs(out, metrics(config, history, scores), params)

    params, history = algorithm.run(sites, X_test, y_test, params=resume.params if resume else None,
                                    history=history, on_round=save, resilience=resilience)
    if baselines and (private or threshold):
        why = ("under differential privacy a site alone would spend its budget on it" if private else
               "with secure aggregation no site's own model is revealed")
        log.info("baselines dropped: %s", why)
        scores["dropped"] = why
    elif baselines:
        scores.update(_baselines(sites, algorithm, X_test, y_test, resilience, pooled))
    doc = metrics(config, history, scores, algorithm.final_round(history), algorithm.stop_reason(history))
    if private:
        doc["final"]["epsilon_spent"] = {s["site"]: {"epsilon": s["epsilon_spent"], "delta": s["policy"]["delta"],
                                                     "of": s["policy"]["epsilon"]}
                                         for s in (site.privacy() for site in sites)}
        log.info("epsilon spent per site: %s", ", ".join(f"{k} {v['epsilon']:.3g} of {v['of']:g}"
                                                          for k, v in doc["final"]["epsilon_spent"].items()))
    log.info("final global test accuracy %.2f%% (the model of round %d; %d rounds run: %s)",
             100 * doc["final"]["global_test_accuracy"], doc["final"]["round"], len(history), doc["final"]["stopped"])
    outcome = Outcome(params, history, scores)
    if out:
        write_outputs(out, doc, params)
        histogram, rows = _histogram(sites, history, scores, algorithm, pooled)
        outcome.report = write_report(out, doc, algorithm, params, X_test, y_test, histogram, rows)
        log.info("report: %s", outcome.report)
    return outcome


def _baselines(sites: Sequence[Site], algorithm: Algorithm, X_test: np.ndarray, y_test: np.ndarray,
               resilience: Resilience, pooled: Sequence[np.ndarray] | None) -> dict:
    s = algorithm.settings
    log.info("baselines: each site alone to convergence%s", " and the pooled ceiling" if pooled else "")
    scores = {"local_only": reference.local_only(sites, X_test, y_test, C=s.C, holdout=_holdout(algorithm),
                                                 seed=getattr(s, "seed", 0), resilience=resilience)}
    if pooled is not None:
        ceiling = reference.centralized(pooled, s.C, X_test, y_test)
        scores["centralized"] = {"test_accuracy": ceiling["test_accuracy"], "n_iter": ceiling["n_iter"],
                                 "note": "pooled shards: computable only in simulation"}
    for name, value in sorted(scores.items()):
        log.info("baseline %s: %s", name, _describe_baseline(value))
    return scores


def _describe_baseline(value: dict) -> str:
    if "test_accuracy" in value:
        return f"{100 * value['test_accuracy']:.2f}%"
    accs = [v["test_accuracy"] for v in value.values()]
    return f"mean {100 * sum(accs) / len(accs):.2f}%, min {100 * min(accs):.2f}%"


def _histogram(sites: Sequence[Site], history: list[dict], scores: dict, algorithm: Algorithm,
               pooled: Sequence[np.ndarray] | None) -> tuple[dict | None, str]:
    """(site -> rows per digit, which rows they are) for the report."""
    from fl_syft.common.partition import label_histogram

    if pooled is not None:
        return (dict(zip([s.name for s in sites], label_histogram(list(pooled)).tolist(), strict=True)),
                "every row of each site's shard (the partition)")
    rows = f"the training rows each site reported (its {_holdout(algorithm):.0%} held-out rows not included)"
    if scores.get("local_only"):
        return {name: v["class_counts"] for name, v in scores["local_only"].items()}, rows
    first = history[0]["sites"] if history else {}
    counts = {name: m["class_counts"] for name, m in first.items() if "class_counts" in m}
    return counts or None, rows


def _holdout(algorithm: Algorithm) -> float:
    """The held-out fraction of each site's rows in ``ml_experiment`` calls (its default if unset;
    none under DP, where every row trains)."""
    holdout = getattr(algorithm.settings, "holdout", reference.DEFAULT_HOLDOUT)
    return 0.0 if holdout is None else holdout
