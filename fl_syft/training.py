"""The federated round loop, the same whether sites are in-process or PySyft datasites.

A site is anything with a ``name`` and ``fit(global_params, config) -> dict`` returning
what ``ml_experiment`` returns. Each round calls every site concurrently, averages with
FedAvg and scores the global model on the test set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
from tqdm import tqdm

from fl_syft.evaluate import score
from fl_syft.fedavg import SiteResultError, fedavg, validate_result

log = logging.getLogger(__name__)


class Site(Protocol):
    name: str

    def fit(self, global_params: dict, config: dict) -> dict: ...


@dataclass(frozen=True)
class TrainConfig:
    """Rounds and the local-training settings sent to every site."""

    rounds: int = 5
    local_iters: int = 20
    C: float = 1.0
    holdout: float = 0.05
    seed: int = 0
    logit_adjust: bool = True  # FedAvg under label skew: see ml_experiment

    def check(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"--rounds must be at least 1, got {self.rounds}")
        if self.local_iters < 1:
            raise ValueError(f"--local-iters must be at least 1, got {self.local_iters}")
        if not self.C > 0:
            raise ValueError(f"--C must be > 0, got {self.C}")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"--holdout must be in [0, 1), got {self.holdout}")

    def site_config(self) -> dict:
        """The ``config`` argument of ``ml_experiment`` (plain Python types: PySyft checks them)."""
        return {"local_iters": int(self.local_iters), "C": float(self.C),
                "holdout": float(self.holdout), "seed": int(self.seed), "logit_adjust": bool(self.logit_adjust)}

    def to_dict(self) -> dict:
        return asdict(self)


SITE_METRICS = ("n_samples", "train_accuracy", "holdout_accuracy", "global_accuracy")


class SitesFailed(Exception):
    """Too few sites answered a round; the message names the failing sites."""


@dataclass(frozen=True)
class Resilience:
    """How a round treats a failing site: ``retries`` more tries, waiting ``backoff`` s,
    then 2x, 4x ...; the round goes on if at least ``min_sites`` answered (None: all)."""

    retries: int = 2
    backoff: float = 1.0
    min_sites: int | None = None

    def check(self, n_sites: int | None = None) -> None:
        if self.retries < 0:
            raise ValueError(f"--retries must be >= 0, got {self.retries}")
        if self.backoff < 0:
            raise ValueError(f"--retry-backoff must be >= 0, got {self.backoff}")
        if self.min_sites is not None and self.min_sites < 1:
            raise ValueError(f"--min-sites must be at least 1, got {self.min_sites}")
        if self.min_sites is not None and n_sites is not None and self.min_sites > n_sites:
            raise ValueError(f"--min-sites {self.min_sites} is more than the {n_sites} sites")


def train(
    sites: Sequence[Site],
    cfg: TrainConfig,
    X_test: np.ndarray,
    y_test: np.ndarray,
    on_round: Callable[[dict, list[dict]], None] | None = None,
    params: dict | None = None,
    history: list[dict] | None = None,
    resilience: Resilience = Resilience(),
) -> tuple[dict, list[dict]]:
    """Run rounds ``len(history)+1 .. cfg.rounds``; return (global params, history).

    ``params``/``history`` continue an earlier run; ``on_round(params, history)`` is called
    after each completed round (to write outputs and checkpoints). A site that still fails
    after its retries is left out of that round (recorded under "dropped") if at least
    ``resilience.min_sites`` answered; otherwise SitesFailed is raised.
    """
    params, history = params or {}, list(history or [])
    site_cfg = cfg.site_config()
    first = len(history) + 1
    with ThreadPoolExecutor(max_workers=len(sites)) as pool:
        bar = tqdm(range(first, cfg.rounds + 1), desc="rounds", unit="round",
                   initial=first - 1, total=cfg.rounds, leave=False)
        for rnd in bar:
            started = time.perf_counter()
            calls, dropped = call_sites(pool, sites, "fit", params, site_cfg, resilience, rnd, validate_result)
            params = fedavg({name: result for name, (result, _) in calls.items()})
            record = round_record(rnd, params, calls, dropped, started, X_test, y_test)
            history.append(record)
            tqdm.write(format_round(record))
            if on_round:
                on_round(params, history)
        bar.close()
    return params, history


def call_sites(pool: ThreadPoolExecutor, sites: Sequence[Site], method: str, params: dict, config: dict,
               res: Resilience, rnd: int, validate: Callable[[str, object], None]
               ) -> tuple[dict[str, tuple[dict, float]], dict[str, str]]:
    """Call ``site.<method>(params, config)`` on every site concurrently, with retries.

    Returns ({site: (validated result, wall seconds)}, {dropped site: reason}). Raises
    SitesFailed if fewer than ``res.min_sites`` (default all) answered; an invalid result
    (``validate`` raising SiteResultError) is never retried or averaged around.
    """
    futures = {site.name: pool.submit(_call_with_retries, site, method, params, config, res, validate)
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
                          f"({len(calls)} of {len(sites)} sites answered, {need} needed; "
                          f"rounds 1..{rnd - 1} are saved: resume with --resume)")
    for name, reason in dropped.items():
        log.warning("round %d: continuing without %s (%s)", rnd, name, reason)
    return calls, dropped


def _call_with_retries(site: Site, method: str, params: dict, config: dict, res: Resilience,
                       validate: Callable[[str, object], None]) -> tuple[dict, float]:
    """(validated result, wall seconds of the successful call)."""
    attempt = 0
    while True:
        started = time.perf_counter()
        try:
            result = getattr(site, method)(params, config)
            break
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


def one_line(e: BaseException, limit: int = 300) -> str:
    """``e``'s message (PySyft's ``public_message`` if it has one) as one line of at most ``limit`` chars."""
    text = getattr(e, "public_message", None) or str(e)
    return " ".join(text.split())[:limit] or type(e).__name__


def round_record(rnd: int, params: dict, calls: dict[str, tuple[dict, float]], dropped: dict[str, str],
                 started: float, X_test: np.ndarray, y_test: np.ndarray) -> dict:
    """One entry of the run's history: the new global model scored on the test set, the
    round's wall time since ``started`` (perf_counter), and each site's metrics."""
    test = score(params, X_test, y_test)
    return {"round": rnd, "global_test_accuracy": test["accuracy"], "global_test_loss": test["loss"],
            "seconds": time.perf_counter() - started,
            "sites": {name: site_record(result, wall) for name, (result, wall) in calls.items()},
            "dropped": dropped}


def site_record(result: dict, wall: float) -> dict:
    """Per-site metrics; ``transport_seconds`` is the call's wall time not spent computing."""
    compute = float(result.get("seconds", 0.0))
    record = {key: result[key] for key in SITE_METRICS if key in result}
    record["n_samples"] = int(record["n_samples"])
    if "class_counts" in result:
        record["class_counts"] = np.asarray(result["class_counts"]).tolist()
    record.update(compute_seconds=compute, call_seconds=wall, transport_seconds=max(wall - compute, 0.0))
    return record


def format_round(record: dict) -> str:
    """One table row: round, test accuracy/loss, time, each site's local training accuracy."""
    sites = "  ".join(
        f"{name}: local {m['train_accuracy']:.2%}" for name, m in record["sites"].items() if "train_accuracy" in m
    )
    dropped = f"  dropped: {', '.join(record['dropped'])}" if record.get("dropped") else ""
    return (f"round {record['round']:>3}  test acc {record['global_test_accuracy']:.2%}  "
            f"loss {record['global_test_loss']:.4f}  {record['seconds']:6.2f}s  {sites}{dropped}")
