"""Sections through real datasites without DP: PySyft against in-process, the demo, scaling, federated L-BFGS."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from fl_syft.common.partition import PartitionSpec, make_shards, scenario
from fl_syft.scientist.algorithms import FedAvg, Lbfgs, State
from fl_syft.scientist.evaluate import score
from fl_syft.simulate import centralized, local_sites
from sections.shared import PLAIN, deployed, median_round, peak_rss_mb, pixel_features, split


def bench_syft(mnist, work: Path) -> dict:
    """PySyft vs in-process round time, iid-2, 9 rounds x 20 local iterations; approval latency.

    The two runs alternate round by round, so a slow spell of this VM hits both alike.
    """
    spec, rounds = scenario("iid-2"), 9
    local = local_sites(make_shards(mnist.X_train, mnist.y_train, spec), PLAIN)
    X_test = pixel_features(mnist.X_test)
    with deployed(spec, work / "syft") as (d, sites, timings):
        runs = {"syft": (sites, {}, []), "simulate": (local, {}, [])}
        for rnd in range(1, rounds + 1):
            for name, (path_sites, params, hist) in runs.items():
                params, hist = FedAvg(features="pixels").run(path_sites, X_test, mnist.y_test, rounds=rnd,
                                                             state=State(params, hist))
                runs[name] = (path_sites, params, hist)
        site_rss = peak_rss_mb([p.pid for p in d.procs.values()])
    syft_hist, sim_hist = runs["syft"][2], runs["simulate"][2]
    syft_round, sim_round = median_round(syft_hist), median_round(sim_hist)
    print(f"syft round {syft_round:.2f} s vs simulate {sim_round:.2f} s", flush=True)
    return {"launch_seconds": timings["launch"], "login_and_approval_seconds_per_site": timings["connect"] / len(sites),
            "syft_round_seconds": syft_round, "simulate_round_seconds": sim_round, "ratio": syft_round / sim_round,
            "syft_split": split(syft_hist), "simulate_split": split(sim_hist),
            "syft_final": syft_hist[-1]["global_test_accuracy"], "simulate_final": sim_hist[-1]["global_test_accuracy"],
            "datasite_peak_rss_mb": site_rss, "rounds": rounds,
            "round_ratios": [a["seconds"] / b["seconds"] for a, b in zip(syft_hist[1:], sim_hist[1:], strict=True)]}


def bench_scaling(mnist, work: Path) -> list[dict]:
    """PySyft round time at the same total data (60k rows) over 2, 5 and 10 datasites."""
    rows = []
    for n in (2, 5, 10):
        with deployed(PartitionSpec(sites=n), work / f"scale{n}") as (d, sites, _):
            _, hist = FedAvg(features="pixels").run(sites, pixel_features(mnist.X_test), mnist.y_test, rounds=4)
            rss = peak_rss_mb([p.pid for p in d.procs.values()])
        rows.append({"sites": n, "round_seconds": median_round(hist), **split(hist),
                     "final": hist[-1]["global_test_accuracy"], "datasite_peak_rss_mb_max": max(rss),
                     "datasite_peak_rss_mb_total": sum(rss)})
        print(f"scaling {n} sites: {rows[-1]['round_seconds']:.2f} s/round", flush=True)
    return rows


def bench_lbfgs_syft(mnist, work: Path) -> dict:
    """Federated L-BFGS through PySyft on dirichlet-0.1-10."""
    spec = scenario("dirichlet-0.1-10")
    X_test = pixel_features(mnist.X_test)
    local = local_sites(make_shards(mnist.X_train, mnist.y_train, spec), PLAIN)
    ceiling = score(centralized(local, "pixels", 1.0)["params"], X_test, mnist.y_test)["accuracy"]
    with deployed(spec, work / "lbfgs", functions=Lbfgs.functions) as (_, sites, _):
        t = time.perf_counter()
        _, hist = Lbfgs(features="pixels").run(sites, X_test, mnist.y_test, rounds=500)
        wall = time.perf_counter() - t
    final = hist[-1]["global_test_accuracy"]
    print(f"lbfgs via PySyft: {100 * final:.2f}% vs ceiling {100 * ceiling:.2f}% in {len(hist)} rounds, {wall:.0f} s",
          flush=True)
    early, late = (statistics.median(r["seconds"] for r in hist[a:b]) for a, b in ((15, 25), (195, 205)))
    return {"rounds": len(hist), "wall_seconds": wall, "final": final, "ceiling": ceiling,
            "gap_pp": 100 * (ceiling - final), "median_round_seconds": median_round(hist), **split(hist),
            "round_20_seconds": early, "round_200_seconds": late}
