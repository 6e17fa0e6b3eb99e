"""Sections on the scattering feature map: its cost per site, accuracy against epsilon beside pixels
(in-process), the targets through real datasites, and Fashion-MNIST."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fl_syft.common.data import load_mnist
from fl_syft.common.partition import PartitionSpec, make_shards
from fl_syft.owner.policy import owner_policy
from fl_syft.simulate import local_sites
from sections.shared import DP_EPSILONS, PLAIN, deployed, peak_rss_mb, private_run

FASHION = "idx:/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist

# One site's shard (30k rows) through the feature map in a process of its own: time and memory.
_COST = """
import json, resource, sys, tempfile, time
from pathlib import Path
from fl_syft.common.data import load_mnist
from fl_syft.common.features import MAPS, cached
rows = load_mnist().X_train[:30000]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
cache = Path(tempfile.mkdtemp())
t = time.perf_counter(); cached(MAPS["scattering"], rows, cache, "bench"); first = time.perf_counter() - t
t = time.perf_counter(); cached(MAPS["scattering"], rows, cache, "bench"); read = time.perf_counter() - t
size = sum(p.stat().st_size for p in cache.iterdir())
print(json.dumps({"rows": len(rows), "compute_seconds": first, "ms_per_image": 1000 * first / len(rows),
                  "cache_read_seconds": read, "cache_file_mb": size / 2 ** 20,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_mb": before}))
"""


def bench_features() -> dict:
    """Scattering features of one 30k-row site: compute time, memory, cache size and read time."""
    out = subprocess.run([sys.executable, "-c", _COST], check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(f"features: {result['ms_per_image']:.2f} ms per image, cache read {result['cache_read_seconds']:.2f} s",
          flush=True)
    return result


def bench_features_curve(mnist) -> dict:
    """Scattering against epsilon in-process (the same guards and ledgers as datasites): iid over 2
    and 10 sites, each site's own noise or secure aggregation, the planner's steps for each epsilon."""
    rows = []
    for n in (2, 10):
        shards = make_shards(mnist.X_train, mnist.y_train, PartitionSpec(sites=n))
        for secure in (False, True):
            for epsilon in DP_EPSILONS:
                if epsilon is None and (secure or n == 10):
                    continue  # without DP: once (secure aggregation changes nothing of the sum)
                policy = owner_policy(epsilon=epsilon) if epsilon else PLAIN
                row = {"sites": n, **private_run(local_sites(shards, policy), epsilon, mnist, secure, "scattering")}
                rows.append(row)
                print(f"scattering {n} sites epsilon {epsilon} secure {secure}: {100 * row['final']:.2f}% "
                      f"({row['noisy_steps_per_site']} steps, {row['wall_seconds']:.0f} s)", flush=True)
    return {"rows": rows}


def bench_features_syft(mnist, work: Path) -> list[dict]:
    """The targets through real datasites, scattering features: iid-2 at epsilon 1 with secure
    aggregation (the demo's run) and with each site's own noise, at epsilon 3 secure, without DP,
    and 10 sites at epsilon 1 secure; each datasite's peak memory."""
    rows = []
    for n, epsilon, secure in ((2, 1.0, True), (2, 1.0, False), (2, 3.0, True), (2, None, False), (10, 1.0, True)):
        policy = owner_policy(epsilon=epsilon) if epsilon else PLAIN
        with deployed(PartitionSpec(sites=n), work / f"feat-{n}-{epsilon}-{secure}", policy=policy) as (d, sites, t):
            row = {"sites": n, **private_run(sites, epsilon, mnist, secure, "scattering"),
                   "launch_seconds": t["launch"]}
            row["datasite_peak_rss_mb"] = peak_rss_mb([p.pid for p in d.procs.values()])
        rows.append(row)
        print(f"scattering via PySyft {n} sites epsilon {epsilon} secure {secure}: {100 * row['final']:.2f}% in "
              f"{row['wall_seconds']:.0f} s, datasites <= {max(row['datasite_peak_rss_mb']):.0f} MB", flush=True)
    return rows


def bench_fashion() -> dict:
    """Fashion-MNIST in-process, 2 sites, epsilon 3 with secure aggregation: scattering against pixels."""
    data = load_mnist(FASHION)
    shards = make_shards(data.X_train, data.y_train, PartitionSpec(sites=2))
    rows = []
    for features in ("scattering", "pixels"):
        row = private_run(local_sites(shards, owner_policy(epsilon=3.0)), 3.0, data, True, features)
        rows.append(row)
        print(f"fashion {features} epsilon 3: {100 * row['final']:.2f}%", flush=True)
    return {"data": FASHION, "rows": rows}


def bench_demo(work: Path, warm_repeats: int = 2) -> dict:
    """``fl-syft demo`` end to end: cold (no features computed yet: an empty cache and state
    directory) and then warm (the same state directory, its budget reset by the owner)."""
    state, cache = work / "demo-state", Path(tempfile.mkdtemp(prefix="demo-cache-"))
    env = {**os.environ, "FL_SYFT_CACHE_DIR": str(cache)}
    times, finals, docs = [], [], []
    for i in range(1 + warm_repeats):
        command = [sys.executable, "-m", "fl_syft", "demo", "--out", str(work / f"demo{i}"), "--state-dir", str(state)]
        if i:
            command.append("--reset-privacy-budget")  # the owner's decision: these rows' budget starts again
        t = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - t)
        if done.returncode != 0:
            raise RuntimeError(f"demo failed: {done.stderr[-800:]}")
        doc = json.loads((work / f"demo{i}" / "metrics.json").read_text())
        docs.append(doc)
        finals.append(doc["final"]["global_test_accuracy"])
    m = docs[-1]
    print(f"demo cold {times[0]:.1f} s, warm {statistics.median(times[1:]):.1f} s", flush=True)
    return {"cold_seconds": times[0], "warm_seconds_median": statistics.median(times[1:]), "seconds": times,
            "finals": finals, "features": m["config"]["features"],
            "secure_aggregation": "secure_aggregation" in m["config"],
            "epsilon_spent": {k: v["epsilon"] for k, v in m["final"].get("epsilon_spent", {}).items()},
            "epsilon_total": {k: v["of"] for k, v in m["final"].get("epsilon_spent", {}).items()},
            "alone": {k: v["test_accuracy"] for k, v in m.get("baselines", {}).get("private_alone", {}).items()}}
