"""In-process sections: loading MNIST, accuracy per scenario and algorithm, and the loop public examples use."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from fl_syft.common.features import MAPS
from fl_syft.common.partition import SCENARIOS, make_shards, scenario
from fl_syft.scientist import baselines
from fl_syft.scientist.algorithms import REGISTRY, Algorithm, FedAvg
from fl_syft.scientist.algorithms.fedavg import FedAvgSettings
from fl_syft.scientist.evaluate import score
from fl_syft.simulate import centralized, local_sites
from sections.shared import FEDAVG_ROUNDS, PLAIN, median_round, pixel_features, rounds_to_within


def bench_data(repeats: int = 5) -> dict:
    """Embedded MNIST load: first (hash check + restricted unpickle + cache write) and from the cache."""
    code = "import time; from fl_syft.common.data import load_mnist; t = time.perf_counter(); load_mnist(); " \
           "print(time.perf_counter() - t)"
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "FL_SYFT_CACHE_DIR": cache}
        runs = [float(subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                                     text=True).stdout) for _ in range(repeats + 1)]
    return {"first_load_seconds": runs[0], "cached_load_seconds": statistics.median(runs[1:]), "repeats": repeats}


def accuracy_runs() -> list[tuple[str, Algorithm, int]]:
    """Every registered algorithm at its defaults (FedAvg for 30 rounds), plus plain FedAvg; with its rounds."""
    runs = [(name, cls(features="pixels"), FEDAVG_ROUNDS if cls is FedAvg else cls.default_rounds)
            for name, cls in REGISTRY.items()]
    runs.insert(1, ("fedavg (plain: no logit adjustment)", FedAvg(FedAvgSettings(logit_adjust=False), "pixels"),
                    FEDAVG_ROUNDS))
    return runs


def bench_accuracy(mnist) -> list[dict]:
    """Per scenario: ceiling, local-only, and every algorithm (see :func:`accuracy_runs`), in-process, on pixels."""
    rows = []
    X_test = pixel_features(mnist.X_test)
    for scenario_name in SCENARIOS:
        shards = make_shards(mnist.X_train, mnist.y_train, scenario(scenario_name))
        sites = local_sites(shards, PLAIN)
        t = time.perf_counter()
        pooled = centralized(sites, "pixels", 1.0)["params"]
        ceiling = {"test_accuracy": score(pooled, X_test, mnist.y_test)["accuracy"]}
        ceiling_s = time.perf_counter() - t
        local = baselines.local_only(sites, X_test, mnist.y_test, features=MAPS["pixels"])
        local_acc = [v["test_accuracy"] for v in local.values()]
        for algorithm, algo, rounds in accuracy_runs():
            t = time.perf_counter()
            _, hist = algo.run(sites, X_test, mnist.y_test, rounds=rounds)
            wall = time.perf_counter() - t
            final = hist[-1]["global_test_accuracy"]
            rows.append({"scenario": scenario_name, "algorithm": algorithm, "rounds": len(hist), "final": final,
                         "ceiling": ceiling["test_accuracy"], "ceiling_seconds": ceiling_s,
                         "gap_pp": 100 * (ceiling["test_accuracy"] - final),
                         "rounds_to_0.2pp": rounds_to_within(hist, ceiling["test_accuracy"]),
                         "local_only_mean": float(np.mean(local_acc)), "local_only_min": float(np.min(local_acc)),
                         "wall_seconds": wall, "median_round_seconds": median_round(hist),
                         "at_round_5": hist[min(4, len(hist) - 1)]["global_test_accuracy"]})
            print(f"accuracy {scenario_name} {algorithm}: {100 * final:.2f}% "
                  f"(ceiling {100 * ceiling['test_accuracy']:.2f}%) in {len(hist)} rounds, {wall:.0f} s", flush=True)
    return rows


def bench_reference(mnist, rounds: int = 2) -> dict:
    """The loop public examples use: per-site StandardScaler, cold refit (max_iter=1000), plain mean."""
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    shards = make_shards(mnist.X_train, mnist.y_train, scenario("iid-2"))
    times, accs, coef = [], [], None
    for _ in range(rounds):
        t = time.perf_counter()
        models = []
        for shard in shards:
            scaler = StandardScaler().fit(shard[:, :-1].astype(float))
            clf = LogisticRegression(max_iter=1000)
            if coef is not None:
                clf.coef_ = coef  # discarded by fit(): warm_start is False, as in the public example
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf.fit(scaler.transform(shard[:, :-1].astype(float)), shard[:, -1])
            models.append((clf, scaler))
        times.append(time.perf_counter() - t)
        coef = np.mean([m.coef_ for m, _ in models], axis=0)
        intercept = np.mean([m.intercept_ for m, _ in models], axis=0)
        # The averaged model, scored as those examples do: with the first site's scaler.
        scaler = models[0][1]
        z = scaler.transform(mnist.X_test.astype(float)) @ coef.T + intercept
        accs.append(float(np.mean(z.argmax(axis=1) == mnist.y_test)))
    print(f"reference loop: {statistics.median(times):.1f} s/round, {100 * accs[-1]:.2f}%", flush=True)
    return {"round_seconds": statistics.median(times), "accuracy_per_round": accs}
