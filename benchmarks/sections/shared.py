"""What the benchmark sections share: the owners' plain policy, one run's figures, round medians,
started datasites and their memory."""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path

from fl_syft.common.features import MAPS
from fl_syft.common.partition import PartitionSpec
from fl_syft.owner.launch import Deployment, LaunchOptions
from fl_syft.owner.network import free_base_port
from fl_syft.owner.policy import OwnerPolicy, owner_policy
from fl_syft.scientist.addresses import ds_password, read_connection
from fl_syft.scientist.algorithms import FedAvg
from fl_syft.scientist.connect import connect
from fl_syft.scientist.runs import RunRequest, run

HERE = Path(__file__).resolve().parents[1]  # benchmarks/: where the results and plots go

FEDAVG_ROUNDS = 30

PLAIN = owner_policy(epsilon=None, min_rows=1)  # the non-private sections measure the algorithms alone

DP_EPSILONS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, None)



def dp_request(epsilon: float | None, secure: bool = False, features: str = "pixels") -> RunRequest:
    """FedAvg under DP at ``epsilon`` per site on ``features``. On pixels (the sections measured before
    feature maps): more noisy steps where the budget affords them (the noise per step grows only
    with their square root); with secure aggregation one step per round (a site's own noise
    protects only the sum of one step): the default 80 up to epsilon 1, then as many as without it.
    On scattering: the planner's own choice of steps for the epsilon (``private.planned_steps``).
    No epsilon: plain FedAvg for 30 rounds."""
    base = {"features": features, "secure": secure, "config": {"command": "benchmark"}}
    if not epsilon:
        return RunRequest(rounds=FEDAVG_ROUNDS, **base)
    if features != "pixels":
        return RunRequest(**base)
    steps = 120 if epsilon <= 1 else 300 if epsilon <= 3 else 600
    if secure:
        return RunRequest(settings={"local_steps": 1}, rounds=None if epsilon <= 1 else steps, **base)
    return RunRequest(settings={"local_steps": 10}, rounds=steps // 10, **base)


def private_run(sites: list, epsilon: float | None, mnist, secure: bool = False, features: str = "pixels") -> dict:
    """One run (the sites' policies decide DP) on ``features``; its figures."""
    request = dp_request(epsilon, secure, features)
    t = time.perf_counter()
    outcome = run(sites, request, mnist.X_test, mnist.y_test)
    wall = time.perf_counter() - t
    spent = [s.privacy().get("epsilon_spent") for s in sites]
    secure_seconds = [r["secure_aggregation"]["seconds"] for r in outcome.history[1:] if "secure_aggregation" in r]
    plan = outcome.config.get("privacy", {})
    return {"epsilon": epsilon, "secure_aggregation": secure, "features": features,
            "final": outcome.history[-1]["global_test_accuracy"], "rounds": len(outcome.history),
            "noisy_steps_per_site": plan.get("noisy_steps_per_site", 0),
            "epsilon_spent_max": max(spent) if epsilon else None, "wall_seconds": wall,
            "median_round_seconds": median_round(outcome.history),
            "secure_split": {k: statistics.median(t[k] for t in secure_seconds) for k in secure_seconds[0]}
            if secure_seconds else None}


def pixel_features(X):
    """Images as the pixels feature map has them (what the sections measured before feature maps take)."""
    return MAPS["pixels"].transform(X)


def rounds_to_within(history: list[dict], ceiling: float, pp: float = 0.2) -> int | None:
    for r in history:
        if r["global_test_accuracy"] >= ceiling - pp / 100:
            return r["round"]
    return None


def median_round(history: list[dict], skip_first: bool = True) -> float:
    rows = history[1:] if skip_first and len(history) > 1 else history
    return statistics.median(r["seconds"] for r in rows)


def split(history: list[dict]) -> dict:
    rows = [m for r in history[1:] or history for m in r["sites"].values()]
    return {"compute_s": statistics.median(m["compute_seconds"] for m in rows),
            "transport_s": statistics.median(m["transport_seconds"] for m in rows)}


@contextlib.contextmanager
def deployed(spec: PartitionSpec, state: Path, functions: tuple = FedAvg.functions, policy: OwnerPolicy = PLAIN):
    """Started datasites for ``spec`` with the owners' ``policy`` and the scientist's sites with
    ``functions`` approved; yields (deployment, sites, {"launch": s, "connect": s (login + approvals)})."""
    with Deployment(LaunchOptions(partition=spec, base_port=free_base_port(spec.n_sites), state_dir=state,
                                  policy=policy)) as d:
        t = time.perf_counter()
        d.start()
        launch = time.perf_counter() - t
        import syft  # noqa: F401  (its ~5 s import is paid once per process, not per site login)

        t = time.perf_counter()
        sites = connect(read_connection(d.connection_file), ds_password(d.connection_file), functions)
        yield d, sites, {"launch": launch, "connect": time.perf_counter() - t}


def peak_rss_mb(pids: list[int]) -> list[float]:
    """VmHWM (peak resident set) of each process, in MiB."""
    out = []
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out.append(int(line.split()[1]) / 1024)
    return out
