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
from fl_syft.scientist.report import metrics, read_checkpoint, write_outputs, write_report
from fl_syft.scientist.rounds import Resilience, Site

log = logging.getLogger("fl_syft")


def required_functions(algorithm: Algorithm, baselines: bool) -> tuple[Callable, ...]:
    """The vetted functions every site must approve for this run (each once, in order)."""
    needed = algorithm.functions + (reference.FUNCTIONS if baselines else ())
    return tuple(dict.fromkeys(needed))


def algorithm_from_config(config: dict) -> Algorithm:
    """The algorithm a run's saved ``config`` (metrics.json, checkpoint) describes."""
    cls = REGISTRY[config.get("algorithm", "fedavg")]
    return cls(cls.settings_type(**config["training"]))


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
                     resume: Resume | None = None, baselines: bool = False,
                     pooled: Sequence[np.ndarray] | None = None) -> Outcome:
    """Train, score the baselines if asked, and write every output to ``out`` (if given).

    ``config`` describes the run in metrics.json (command, data, partition ...; the algorithm
    and its settings are added here). ``pooled``: every site's shard, where pooling is
    legitimate (simulation only): enables the centralized ceiling and the exact histogram.
    """
    if resume and not algorithm.resumable:
        raise ConfigError(f"{{resume}} continues {', '.join(n for n, c in REGISTRY.items() if c.resumable)} "
                          f"runs only ({algorithm.name} keeps its state in memory)")
    config = {**config, "algorithm": algorithm.name, "training": asdict(algorithm.settings)}
    history = resume.history if resume else []
    if history and len(history) >= algorithm.settings.rounds:
        log.info("nothing to do: %d of %d rounds already completed", len(history), algorithm.settings.rounds)
        return Outcome(resume.params, history)
    scores: dict = {}

    def save(params: dict, history: list[dict]) -> None:
        if out:
            write_outputs(out, config, history, params, scores)

    params, history = algorithm.run(sites, X_test, y_test, params=resume.params if resume else None,
                                    history=history, on_round=save, resilience=resilience)
    final = history[-1]
    log.info("final global test accuracy %.2f%% after %d rounds", 100 * final["global_test_accuracy"],
             final["round"])
    if baselines:
        scores.update(_baselines(sites, algorithm, X_test, y_test, resilience, pooled))
    outcome = Outcome(params, history, scores)
    if out:
        write_outputs(out, config, history, params, scores)
        histogram, rows = _histogram(sites, history, scores, algorithm, pooled)
        outcome.report = write_report(out, metrics(config, history, scores), algorithm, params, X_test, y_test,
                                      histogram, rows)
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
    """The held-out fraction of each site's rows in ``ml_experiment`` calls (its default if unset)."""
    return getattr(algorithm.settings, "holdout", reference.DEFAULT_HOLDOUT)
