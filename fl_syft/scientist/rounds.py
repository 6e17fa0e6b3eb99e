"""Calling the sites in a round: concurrency, retries, dropouts, and the round's record.

A site is anything with a ``name`` and ``call(function, global_params, config) -> dict`` that
runs the named vetted function on its rows: a PySyft datasite (``connect.SyftSite``) or an
in-process shard (``fl_syft.simulate.LocalSite``). Algorithms build their rounds on
:func:`call_sites`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fl_syft.common.errors import ConfigError, FlSyftError, one_line
from fl_syft.scientist.aggregate import SiteResultError
from fl_syft.scientist.evaluate import score

log = logging.getLogger("fl_syft.rounds")

SITE_METRICS = ("n_samples", "train_accuracy", "holdout_accuracy", "global_accuracy")


class Site(Protocol):
    name: str

    def call(self, function: str, global_params: dict, config: dict) -> dict: ...

    def privacy(self) -> dict: ...  # the owner's policy and the budget spent (``owner.guard.Guard.status``)

    def secagg(self, steps: dict) -> dict: ...  # secure-aggregation steps (``owner.guard.Guard.secagg_steps``)


class SitesFailed(FlSyftError):
    """Too few sites answered a round; the message names the failing sites."""


class SiteRefused(FlSyftError):
    """A site's owner refused the call (its policy: bounds, budget); asking again gets the same answer."""


@dataclass(frozen=True)
class Resilience:
    """How a round treats a failing site: ``retries`` more tries, waiting ``backoff`` s,
    then 2x, 4x ...; the round goes on if at least ``min_sites`` answered (None: all)."""

    retries: int = 2
    backoff: float = 1.0
    min_sites: int | None = None

    def check(self, n_sites: int | None = None) -> None:
        if self.retries < 0:
            raise ConfigError(f"{{retries}} must be >= 0, got {self.retries}")
        if self.backoff < 0:
            raise ConfigError(f"{{retry_backoff}} must be >= 0, got {self.backoff}")
        if self.min_sites is not None and self.min_sites < 1:
            raise ConfigError(f"{{min_sites}} must be at least 1, got {self.min_sites}")
        if self.min_sites is not None and n_sites is not None and self.min_sites > n_sites:
            raise ConfigError(f"{{min_sites}} {self.min_sites} is more than the {n_sites} sites")


Calls = dict[str, tuple[dict, float | None]]  # site -> (validated result, wall seconds of its call, if its own)


def call_sites(pool: ThreadPoolExecutor, sites: Sequence[Site], function: str, params: dict, config: dict,
               res: Resilience, rnd: int, validate: Callable[[str, object], None]) -> tuple[Calls, dict[str, str]]:
    """Call ``function`` on every site concurrently, with retries.

    Returns ({site: (validated result, wall seconds)}, {dropped site: reason}). Raises
    SitesFailed if fewer than ``res.min_sites`` (default all) answered; an invalid result
    (``validate`` raising SiteResultError) is never retried or averaged around.
    """
    futures = {site.name: pool.submit(_call_with_retries, site, function, params, config, res, validate)
               for site in sites}
    calls, dropped = {}, {}
    for name, future in futures.items():
        try:
            calls[name] = future.result()
        except SiteResultError:
            raise
        except Exception as e:
            dropped[name] = one_line(e)
    need = res.min_sites or len(sites)
    if len(calls) < need:
        raise SitesFailed(f"round {rnd}: {'; '.join(dropped.values())} "
                          f"({len(calls)} of {len(sites)} sites answered, {need} needed)")
    for name, reason in dropped.items():
        log.warning("round %d: continuing without %s (%s)", rnd, name, reason)
    return calls, dropped


def _call_with_retries(site: Site, function: str, params: dict, config: dict, res: Resilience,
                       validate: Callable[[str, object], None]) -> tuple[dict, float]:
    """(validated result, wall seconds of the successful call)."""
    attempt = 0
    while True:
        started = time.perf_counter()
        try:
            result = site.call(function, params, config)
            break
        except SiteRefused:
            raise
        except Exception as e:
            if attempt == res.retries:
                raise
            wait = res.backoff * 2 ** attempt
            attempt += 1
            log.warning("%s failed (%s); retry %d/%d in %.1f s", site.name, one_line(e), attempt,
                        res.retries, wait)
            time.sleep(wait)
    wall = time.perf_counter() - started
    validate(site.name, result)
    return result, wall


def round_record(rnd: int, params: dict, calls: Calls, dropped: dict[str, str], started: float,
                 X_test: np.ndarray, y_test: np.ndarray) -> dict:
    """One entry of the run's history: the new global model scored on the test set, the
    round's wall time since ``started`` (perf_counter), and each site's metrics."""
    test = score(params, X_test, y_test)
    return {"round": rnd, "global_test_accuracy": test["accuracy"], "global_test_loss": test["loss"],
            "seconds": time.perf_counter() - started,
            "sites": {name: site_record(result, wall) for name, (result, wall) in calls.items()},
            "dropped": dropped}


def site_record(result: dict, wall: float | None) -> dict:
    """Per-site metrics; ``call_seconds`` the call's wall time (None: not the site's own, as under
    secure aggregation), ``transport_seconds`` the part not spent computing (when the site
    reports its compute time: under DP it does not)."""
    record = {key: result[key] for key in SITE_METRICS if key in result}
    if "n_samples" in record:  # (under secure aggregation no site result is seen)
        record["n_samples"] = int(record["n_samples"])
    if "class_counts" in result:
        record["class_counts"] = np.asarray(result["class_counts"]).tolist()
    if wall is None:
        return record
    record["call_seconds"] = wall
    if "seconds" in result:
        compute = float(result["seconds"])
        record.update(compute_seconds=compute, transport_seconds=max(wall - compute, 0.0))
    return record


def format_round(record: dict) -> str:
    """One table row: round, test accuracy/loss, time, each site's local training accuracy."""
    sites = "  ".join(
        f"{name}: local {m['train_accuracy']:.2%}" for name, m in record["sites"].items() if "train_accuracy" in m
    )
    dropped = f"  dropped: {', '.join(record['dropped'])}" if record.get("dropped") else ""
    return (f"round {record['round']:>3}  test acc {record['global_test_accuracy']:.2%}  "
            f"loss {record['global_test_loss']:.4f}  {record['seconds']:6.2f}s  {sites}{dropped}")
