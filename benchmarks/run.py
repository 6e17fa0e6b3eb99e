"""Benchmark harness (not a test): writes benchmarks/RESULTS.md and benchmarks/results.json.

    python benchmarks/run.py                 # everything (~30 min on 2 cores)
    python benchmarks/run.py --only syft     # sections: data, accuracy, syft, demo, scaling, reference, lbfgs-syft

Every figure is measured in the same run on this machine; timings are medians of repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from fl_syft.common.data import load_mnist
from fl_syft.common.partition import SCENARIOS, PartitionSpec, make_shards, scenario
from fl_syft.owner.launch import Deployment, LaunchOptions, free_base_port
from fl_syft.owner.policy import owner_policy
from fl_syft.scientist import baselines
from fl_syft.scientist.algorithms import REGISTRY, Algorithm, FedAvg, Lbfgs, State, build
from fl_syft.scientist.algorithms.fedavg import FedAvgSettings
from fl_syft.scientist.algorithms.private import DEFAULTS, SECURE_DEFAULTS
from fl_syft.scientist.connect import connect, ds_password, read_connection
from fl_syft.scientist.runs import RunRequest, run
from fl_syft.simulate import centralized, local_sites

HERE = Path(__file__).resolve().parent
SECTIONS = ("data", "accuracy", "syft", "demo", "scaling", "reference", "lbfgs-syft", "dp-curve", "dp-syft",
            "secagg-syft")
FEDAVG_ROUNDS = 30
PLAIN = owner_policy(epsilon=None, min_rows=1)  # the non-private sections measure the algorithms alone
DP_EPSILONS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, None)


def dp_request(epsilon: float | None, secure: bool = False) -> RunRequest:
    """FedAvg under DP at ``epsilon`` per site: more noisy steps where the budget affords them
    (the noise per step grows only with their square root). With secure aggregation one step
    per round (a site's own noise protects only the sum of one step): the default 80 up to
    epsilon 1, then as many as without it. No epsilon: plain FedAvg for 30 rounds."""
    if not epsilon:
        return RunRequest(rounds=FEDAVG_ROUNDS, secure=secure, config={"command": "benchmark"})
    steps = 120 if epsilon <= 1 else 300 if epsilon <= 3 else 600
    if secure:
        return RunRequest(settings={"local_steps": 1}, rounds=None if epsilon <= 1 else steps, secure=True,
                          config={"command": "benchmark"})
    return RunRequest(settings={"local_steps": 10}, rounds=steps // 10, config={"command": "benchmark"})


def private_run(sites: list, epsilon: float | None, mnist, secure: bool = False) -> dict:
    """One run (the sites' policies decide DP); its figures."""
    request = dp_request(epsilon, secure)
    t = time.perf_counter()
    outcome = run(sites, request, mnist.X_test, mnist.y_test)
    wall = time.perf_counter() - t
    spent = [s.privacy().get("epsilon_spent") for s in sites]
    secure_seconds = [r["secure_aggregation"]["seconds"] for r in outcome.history[1:] if "secure_aggregation" in r]
    return {"epsilon": epsilon, "secure_aggregation": secure, "final": outcome.history[-1]["global_test_accuracy"],
            "rounds": len(outcome.history),
            "noisy_steps_per_site": len(outcome.history) * request.settings["local_steps"] if epsilon else 0,
            "epsilon_spent_max": max(spent) if epsilon else None, "wall_seconds": wall,
            "median_round_seconds": median_round(outcome.history),
            "secure_split": {k: statistics.median(t[k] for t in secure_seconds) for k in secure_seconds[0]}
            if secure_seconds else None}


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
    runs = [(name, cls(), FEDAVG_ROUNDS if cls is FedAvg else cls.default_rounds) for name, cls in REGISTRY.items()]
    runs.insert(1, ("fedavg (plain: no logit adjustment)", FedAvg(FedAvgSettings(logit_adjust=False)), FEDAVG_ROUNDS))
    return runs


def bench_accuracy(mnist) -> list[dict]:
    """Per scenario: ceiling, local-only, and every algorithm (see :func:`accuracy_runs`), in-process."""
    rows = []
    for scenario_name in SCENARIOS:
        shards = make_shards(mnist.X_train, mnist.y_train, scenario(scenario_name))
        sites = local_sites(shards, PLAIN)
        t = time.perf_counter()
        ceiling = centralized(shards, 1.0, mnist.X_test, mnist.y_test)
        ceiling_s = time.perf_counter() - t
        local = baselines.local_only(sites, mnist.X_test, mnist.y_test)
        local_acc = [v["test_accuracy"] for v in local.values()]
        for algorithm, algo, rounds in accuracy_runs():
            t = time.perf_counter()
            _, hist = algo.run(sites, mnist.X_test, mnist.y_test, rounds=rounds)
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


@contextlib.contextmanager
def deployed(spec: PartitionSpec, state: Path, functions: tuple = FedAvg.functions, policy: dict = PLAIN):
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


def bench_syft(mnist, work: Path) -> dict:
    """PySyft vs in-process round time, iid-2, 9 rounds x 20 local iterations; approval latency.

    The two runs alternate round by round, so a slow spell of this VM hits both alike.
    """
    spec, rounds = scenario("iid-2"), 9
    local = local_sites(make_shards(mnist.X_train, mnist.y_train, spec), PLAIN)
    with deployed(spec, work / "syft") as (d, sites, timings):
        runs = {"syft": (sites, {}, []), "simulate": (local, {}, [])}
        for rnd in range(1, rounds + 1):
            for name, (path_sites, params, hist) in runs.items():
                params, hist = FedAvg().run(path_sites, mnist.X_test, mnist.y_test, rounds=rnd,
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


def bench_demo(work: Path, repeats: int = 3) -> dict:
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "fl_syft", "demo", "--out", str(work / f"demo{i}"),
                               "--state-dir", str(work / f"demo-state{i}")], capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        if done.returncode != 0:
            raise RuntimeError(f"demo failed: {done.stderr[-500:]}")
    runs = [json.loads((work / f"demo{i}" / "metrics.json").read_text()) for i in range(repeats)]
    m = runs[0]
    print(f"demo {statistics.median(times):.1f} s", flush=True)
    return {"seconds_median": statistics.median(times), "seconds": times, "repeats": repeats,
            "finals": [r["final"]["global_test_accuracy"] for r in runs],
            "secure_aggregation": "secure_aggregation" in m["config"],
            "epsilon_spent": {k: v["epsilon"] for k, v in m["final"].get("epsilon_spent", {}).items()},
            "local_only": {k: v["test_accuracy"] for k, v in m.get("baselines", {}).get("local_only", {}).items()}}


def bench_scaling(mnist, work: Path) -> list[dict]:
    """PySyft round time at the same total data (60k rows) over 2, 5 and 10 datasites."""
    rows = []
    for n in (2, 5, 10):
        with deployed(PartitionSpec(sites=n), work / f"scale{n}") as (d, sites, _):
            _, hist = FedAvg().run(sites, mnist.X_test, mnist.y_test, rounds=4)
            rss = peak_rss_mb([p.pid for p in d.procs.values()])
        rows.append({"sites": n, "round_seconds": median_round(hist), **split(hist),
                     "final": hist[-1]["global_test_accuracy"], "datasite_peak_rss_mb_max": max(rss),
                     "datasite_peak_rss_mb_total": sum(rss)})
        print(f"scaling {n} sites: {rows[-1]['round_seconds']:.2f} s/round", flush=True)
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


def bench_lbfgs_syft(mnist, work: Path) -> dict:
    """Federated L-BFGS through PySyft on dirichlet-0.1-10."""
    spec = scenario("dirichlet-0.1-10")
    shards = make_shards(mnist.X_train, mnist.y_train, spec)
    ceiling = centralized(shards, 1.0, mnist.X_test, mnist.y_test)["test_accuracy"]
    with deployed(spec, work / "lbfgs", functions=Lbfgs.functions) as (_, sites, _):
        t = time.perf_counter()
        _, hist = Lbfgs().run(sites, mnist.X_test, mnist.y_test, rounds=500)
        wall = time.perf_counter() - t
    final = hist[-1]["global_test_accuracy"]
    print(f"lbfgs via PySyft: {100 * final:.2f}% vs ceiling {100 * ceiling:.2f}% in {len(hist)} rounds, {wall:.0f} s",
          flush=True)
    early, late = (statistics.median(r["seconds"] for r in hist[a:b]) for a, b in ((15, 25), (195, 205)))
    return {"rounds": len(hist), "wall_seconds": wall, "final": final, "ceiling": ceiling,
            "gap_pp": 100 * (ceiling - final), "median_round_seconds": median_round(hist), **split(hist),
            "round_20_seconds": early, "round_200_seconds": late}


def bench_dp_curve(mnist) -> dict:
    """Accuracy against the epsilon each site spends, in-process (the same guard and ledger as a
    datasite): iid over 2 and over 10 sites, noise added at every site."""
    rows = []
    for n in (2, 10):
        shards = make_shards(mnist.X_train, mnist.y_train, PartitionSpec(sites=n))
        for secure in (False, True):
            for epsilon in DP_EPSILONS if not secure else [e for e in DP_EPSILONS if e]:
                sites = local_sites(shards, owner_policy(epsilon=epsilon))
                row = {"sites": n, **private_run(sites, epsilon, mnist, secure)}
                rows.append(row)
                print(f"dp curve {n} sites epsilon {epsilon} secure {secure}: {100 * row['final']:.2f}%", flush=True)
    return {"rows": rows, "defaults": DEFAULTS, "secure_defaults": SECURE_DEFAULTS}


def bench_dp_syft(mnist, work: Path) -> list[dict]:
    """Through real datasites: iid-2 at epsilon 1 (with and without secure aggregation), 3 and 8 per
    site, and dirichlet-0.5-10 at 1."""
    rows = []
    for name, epsilon, secure in (("iid-2", 1.0, False), ("iid-2", 1.0, True), ("iid-2", 3.0, False),
                                  ("iid-2", 8.0, False), ("dirichlet-0.5-10", 1.0, False)):
        with deployed(scenario(name), work / f"dp-{name}-{epsilon}-{secure}", policy=owner_policy(epsilon=epsilon)) \
                as (_, sites, timings):
            row = {"scenario": name, **private_run(sites, epsilon, mnist, secure), "launch_seconds": timings["launch"]}
        rows.append(row)
        print(f"dp via PySyft {name} epsilon {epsilon} secure {secure}: {100 * row['final']:.2f}% "
              f"(spent {row['epsilon_spent_max']:.3f}) in {row['wall_seconds']:.0f} s", flush=True)
    return rows


def bench_secagg_syft(mnist, work: Path, compare_rounds: int = 8) -> dict:
    """Secure aggregation through real datasites at epsilon 1 per site: 10 sites (iid, 60k rows) and
    2 sites, each beside the same run without it; and the round time with and without it at 10
    sites, the two alternating round by round (so a slow spell of this VM hits both alike)."""
    out: dict = {"runs": []}
    for n in (2, 10):
        for secure in (False, True):
            with deployed(PartitionSpec(sites=n), work / f"sa-{n}-{secure}", policy=owner_policy()) as (_, sites, _):
                row = {"sites": n, **private_run(sites, 1.0, mnist, secure)}
            out["runs"].append(row)
            print(f"secagg via PySyft {n} sites secure {secure}: {100 * row['final']:.2f}% in "
                  f"{row['wall_seconds']:.0f} s ({row['median_round_seconds']:.2f} s/round)", flush=True)
    # Round time at 10 sites, one noisy step per round either way, alternating.
    with deployed(PartitionSpec(sites=10), work / "sa-time", policy=owner_policy()) as (_, sites, _):
        statuses = [s.privacy() for s in sites]  # each plans half the budget over 120 steps, and runs a few
        asked = {secure: RunRequest(settings={"local_steps": 1}, rounds=120, epsilon=0.45, secure=secure)
                 for secure in (False, True)}
        runs = {secure: build("fedavg", r.settings, statuses, r) for secure, r in asked.items()}
        state = {secure: State() for secure in runs}
        for rnd in range(1, compare_rounds + 1):
            for secure, algo in runs.items():
                state[secure] = algo.run(sites, mnist.X_test, mnist.y_test, rounds=rnd, state=state[secure])
    plain, masked = (state[s][1] for s in (False, True))
    out["round_seconds"] = {"without": median_round(plain), "with": median_round(masked)}
    out["ratio"] = out["round_seconds"]["with"] / out["round_seconds"]["without"]
    out["split"] = {k: statistics.median(r["secure_aggregation"]["seconds"][k] for r in masked[1:])
                    for k in masked[-1]["secure_aggregation"]["seconds"]}
    out["round_ratios"] = [a["seconds"] / b["seconds"] for a, b in zip(masked[1:], plain[1:], strict=True)]
    print(f"secagg round at 10 sites: {out['ratio']:.2f}x", flush=True)
    return out


def plot_dp_curve(results: dict) -> None:
    """benchmarks/accuracy_vs_epsilon.png from the dp-curve section."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.4))
    curve = results["dp-curve"]["rows"]
    for key, (label, style) in _CURVES.items():
        points = [(r["epsilon"], 100 * r["final"]) for r in curve if _curve_key(r) == key and r["epsilon"]]
        plain = [100 * r["final"] for r in curve if _curve_key(r) == key and not r["epsilon"]]
        if points:
            line = ax.plot(*zip(*points, strict=True), style, label=label)[0]
            if plain:
                ax.axhline(plain[0], color=line.get_color(), ls=":", lw=1,
                           label=f"{key[0]} sites, no DP ({plain[0]:.2f}%)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("epsilon per site (delta 1e-5)")
    ax.set_ylabel("MNIST test accuracy (%)")
    ax.set_title("Record-level DP at every site: accuracy against epsilon (MNIST iid, in-process)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "accuracy_vs_epsilon.png", dpi=110)
    plt.close(fig)


def _curve_key(row: dict) -> tuple:
    return row["sites"], row.get("secure_aggregation", False)


_CURVES = {(2, False): ("2 sites, noise at each site", "o-"), (10, False): ("10 sites, noise at each site", "s-"),
           (2, True): ("2 sites, secure aggregation", "o--"), (10, True): ("10 sites, secure aggregation", "s--")}


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "blas": [{k: i.get(k) for k in ("internal_api", "num_threads", "version")} for i in threadpool_info()],
            "blas_threads_used": 1, "date": time.strftime("%Y-%m-%d %H:%M")}


def write_markdown(results: dict) -> None:
    r, lines = results, ["# fl-syft benchmark results", ""]
    m = r["machine"]
    blas = ", ".join(f"{b['internal_api']} {b['version']}" for b in m["blas"])
    when = ", ".join(f"{k} {v}" for k, v in r.get("measured", {}).items())
    lines += [f"Measured with `python benchmarks/run.py` on {m['cpus']} cores ({m['platform']}, Python "
              f"{m['python']}), 1 BLAS thread per process ({blas}); sections measured at: {when}. "
              "MNIST 60k train / 10k test, C=1.0. Times are medians (rounds after the first; demo over repeats).", ""]
    if "data" in r:
        x = r["data"]
        lines += ["## Embedded MNIST load", "", f"First load (SHA-256 check, restricted unpickle, uint8 conversion, "
                  f"cache write): {x['first_load_seconds']:.2f} s; from the .npz cache: "
                  f"{x['cached_load_seconds']:.3f} s (median of {x['repeats']}, fresh process each).", ""]
    if "accuracy" in r:
        lines += ["## Accuracy per scenario and algorithm (in-process)", "",
                  "| scenario | algorithm | rounds | final | ceiling | gap (pp) | rounds to ceiling-0.2pp | "
                  "accuracy at round 5 | local-only mean / min | wall (s) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for x in r["accuracy"]:
            lines.append(f"| {x['scenario']} | {x['algorithm']} | {x['rounds']} | {100 * x['final']:.2f}% | "
                         f"{100 * x['ceiling']:.2f}% | {x['gap_pp']:+.2f} | {x['rounds_to_0.2pp'] or 'never'} | "
                         f"{100 * x['at_round_5']:.2f}% | {100 * x['local_only_mean']:.2f}% / "
                         f"{100 * x['local_only_min']:.2f}% | {x['wall_seconds']:.0f} |")
        lines += ["", f"FedAvg: {FEDAVG_ROUNDS} rounds x 20 local lbfgs iterations; by default each site trains "
                  "with its own label prior in the intercepts and returns the prior-free model (`--logit-adjust`), "
                  "'plain' is the same without it (`--no-logit-adjust`). L-BFGS: one round = one loss+gradient call "
                  "to every site; stops at scikit-learn's tolerance.", ""]
    if "syft" in r:
        s = r["syft"]
        lines += ["## PySyft overhead (iid-2, 20 local iterations)", "", "| | round (s) | site compute (s) | "
                  "transport/overhead (s) | final accuracy |", "|---|---|---|---|---|",
                  f"| PySyft (`run`) | {s['syft_round_seconds']:.2f} | {s['syft_split']['compute_s']:.2f} | "
                  f"{s['syft_split']['transport_s']:.2f} | {100 * s['syft_final']:.2f}% |",
                  f"| in-process (`simulate`) | {s['simulate_round_seconds']:.2f} | "
                  f"{s['simulate_split']['compute_s']:.2f} | {s['simulate_split']['transport_s']:.2f} | "
                  f"{100 * s['simulate_final']:.2f}% |", "",
                  f"Ratio PySyft / in-process: **{s['ratio']:.2f}x** (medians of rounds 2-{s['rounds']}; the two runs "
                  f"alternate round by round; per-round ratios {min(s['round_ratios']):.2f}-"
                  f"{max(s['round_ratios']):.2f}x). "
                  f"Launch of 2 datasites: {s['launch_seconds']:.1f} s; "
                  f"login + approval per site: {s['login_and_approval_seconds_per_site']:.2f} s. "
                  f"Peak RSS per datasite: {', '.join(f'{x:.0f}' for x in s['datasite_peak_rss_mb'])} MiB.", ""]
    if "demo" in r:
        d = r["demo"]
        lines += ["## `fl-syft demo` end to end", "",
                  f"Median {d['seconds_median']:.1f} s over {d['repeats']} runs "
                  f"({', '.join(f'{t:.1f}' for t in d['seconds'])} s): launch 2 datasites, approval, training"
                  + (" with secure aggregation" if d.get("secure_aggregation") else "") + ", report, shutdown. "
                  f"Final accuracy {', '.join(f'{100 * a:.2f}%' for a in d.get('finals') or [d['final']])}"
                  + (f"; epsilon spent per site {', '.join(f'{k} {v:.3f}' for k, v in d['epsilon_spent'].items())} "
                     "(the default policy: 1 per site)" if d.get("epsilon_spent") else "") + ".", ""]
    if "scaling" in r:
        lines += ["## Scaling at the same total data (60k rows, PySyft)", "",
                  "| datasites | round (s) | site compute (s) | transport (s) | peak RSS per site (max, MiB) "
                  "| all sites (MiB) |", "|---|---|---|---|---|---|"]
        for x in r["scaling"]:
            lines.append(f"| {x['sites']} | {x['round_seconds']:.2f} | {x['compute_s']:.2f} | {x['transport_s']:.2f} | "
                         f"{x['datasite_peak_rss_mb_max']:.0f} | {x['datasite_peak_rss_mb_total']:.0f} |")
        base = r["scaling"][0]["round_seconds"]
        lines += ["", f"10 sites / 2 sites: **{r['scaling'][-1]['round_seconds'] / base:.2f}x**.", ""]
    if "reference" in r:
        x = r["reference"]
        lines += ["## The public examples' loop, beside ours", "",
                  f"Per-site StandardScaler, cold refit with max_iter=1000 each round, plain mean of coefficients: "
                  f"{x['round_seconds']:.1f} s per round (both sites); averaged model on the MNIST test set: "
                  f"{', '.join(f'{100 * a:.2f}%' for a in x['accuracy_per_round'])} after rounds "
                  f"1..{len(x['accuracy_per_round'])}"
                  " (rounds do not build on each other)."
                  + (f" Ours (iid-2, PySyft): {r['syft']['syft_round_seconds']:.2f} s per round, "
                     f"{100 * r['syft']['syft_final']:.2f}% after 5 rounds." if "syft" in r else ""), ""]
    if "lbfgs-syft" in r:
        x = r["lbfgs-syft"]
        lines += ["## Federated L-BFGS through PySyft (dirichlet-0.1-10)", "",
                  f"{100 * x['final']:.2f}% vs ceiling {100 * x['ceiling']:.2f}% (gap {x['gap_pp']:+.2f} pp) in "
                  f"{x['rounds']} rounds, {x['wall_seconds']:.0f} s ({x['median_round_seconds']:.2f} s per round: "
                  f"compute {x['compute_s']:.2f} s, transport {x['transport_s']:.2f} s per site call)."
                  + (f" Per-call cost over the run: rounds 15-25 {x['round_20_seconds']:.2f} s, rounds 195-205 "
                     f"{x['round_200_seconds']:.2f} s (**{x['round_200_seconds'] / x['round_20_seconds']:.2f}x**)."
                     if "round_20_seconds" in x else ""), ""]
    if "dp-curve" in r:
        lines += ["## Accuracy against epsilon (record-level DP at every site; in-process, same guard and ledger)",
                  "", "![accuracy vs epsilon](accuracy_vs_epsilon.png)", "",
                  "| sites | epsilon per site | noisy steps per site | final accuracy | epsilon spent (max) |",
                  "|---|---|---|---|---|"]
        for x in r["dp-curve"]["rows"]:
            eps = "no DP" if x["epsilon"] is None else f"{x['epsilon']:g}"
            spent = "-" if x["epsilon_spent_max"] is None else f"{x['epsilon_spent_max']:.3f}"
            how = " (secure aggregation)" if x.get("secure_aggregation") else ""
            lines.append(f"| {x['sites']}{how} | {eps} | {x['noisy_steps_per_site'] or '-'} | "
                         f"{100 * x['final']:.2f}% | {spent} |")
        used = r["dp-curve"]["defaults"]  # the defaults it ran with (before 2026-11-24 secure runs used these, 120)
        sec = r["dp-curve"].get("secure_defaults") or {**used, "rounds": 120}
        lines += ["", f"delta 1e-5 per site; DP FedAvg: 10 noisy gradient steps per site and round (clip 1, step "
                  f"{used['lr']:g} in the {used['frequencies']} x {used['frequencies']} lowest image frequencies, "
                  f"momentum {used['momentum']:g} carried across rounds), 12 rounds up to epsilon 1, 30 up to 3, "
                  f"60 above; with secure aggregation one noisy step per round (step {sec['lr']:g}, momentum "
                  f"{sec['momentum']:g}), {sec['rounds']} rounds up to epsilon 1, then 300 and 600, each "
                  "site adding 1/sqrt(threshold) of the noise (threshold 2 of 2, 6 of 10). The noise "
                  "multiplier spends the epsilon exactly (dp-accounting, analytic Gaussian). The row count each site "
                  "publishes once costs epsilon ~0.03 of the total. No DP: FedAvg, 30 rounds x 20 lbfgs iterations.",
                  ""]
        plot_dp_curve(r)
    if "dp-syft" in r:
        lines += ["## Record-level DP through real datasites", "",
                  "| scenario | epsilon per site | secure aggregation | rounds | final accuracy | epsilon spent (max, "
                  "ledger) | wall (s) | round (s) |", "|---|---|---|---|---|---|---|---|"]
        for x in r["dp-syft"]:
            how = "yes" if x.get("secure_aggregation") else "no"
            lines.append(f"| {x['scenario']} | {x['epsilon']:g} | {how} | {x['rounds']} | {100 * x['final']:.2f}% | "
                         f"{x['epsilon_spent_max']:.4f} | {x['wall_seconds']:.0f} | "
                         f"{x['median_round_seconds']:.2f} |")
        lines.append("")
    if "secagg-syft" in r:
        x = r["secagg-syft"]
        lines += ["## Secure aggregation through real datasites (epsilon 1 per site, iid)", "",
                  "| sites | secure aggregation | rounds | final accuracy | epsilon spent (max) | round (s) |",
                  "|---|---|---|---|---|---|"]
        for y in x["runs"]:
            how = "yes (distributed noise)" if y["secure_aggregation"] else "no (noise at each site)"
            lines.append(f"| {y['sites']} | {how} | {y['rounds']} | {100 * y['final']:.2f}% | "
                         f"{y['epsilon_spent_max']:.4f} | {y['median_round_seconds']:.2f} |")
        s = x["split"]
        lines += ["", f"Round time at 10 datasites, one noisy step per round either way, the two runs alternating "
                  f"round by round: {x['round_seconds']['without']:.2f} s without, "
                  f"{x['round_seconds']['with']:.2f} s with secure aggregation: **{x['ratio']:.2f}x** "
                  f"(per round {min(x['round_ratios']):.2f}-"
                  f"{max(x['round_ratios']):.2f}x). Split of a secure round (medians): key agreement and Shamir "
                  f"shares {s['keys']:.2f} s; the sites' calls {s['masked_update']:.2f} s, of which masking at a "
                  f"site {s['masking']:.2f} s and the rest training and PySyft transport (a round without secure "
                  f"aggregation is those calls alone); unmasking and reconstruction {s['unmask']:.2f} s.", ""]
    if r.get("notes"):
        lines += ["## Notes on these measurements", "", *[f"- {note}" for note in r["notes"]], ""]
    sections = ", ".join(r.get("orchestrator_peak_rss_sections", ["all"]))
    lines += [f"Peak RSS of the benchmark (orchestrator) process while measuring {sections}: "
              f"{r['orchestrator_peak_rss_mb']:.0f} MiB.", ""]
    (HERE / "RESULTS.md").write_text("\n".join(lines))


def main_bench(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=SECTIONS, default=list(SECTIONS),
                        help="sections to measure (others keep their figures in results.json)")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite RESULTS.md from results.json")
    args = parser.parse_args(argv)
    if args.markdown_only:
        write_markdown(json.loads((HERE / "results.json").read_text()))
        return 0
    warnings.filterwarnings("ignore", message="lbfgs failed to converge")  # local rounds stop early on purpose
    results_path = HERE / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["machine"] = machine()
    mnist = load_mnist()
    with threadpool_limits(1), tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        steps = {"data": bench_data, "accuracy": lambda: bench_accuracy(mnist), "syft": lambda: bench_syft(mnist, work),
                 "demo": lambda: bench_demo(work), "scaling": lambda: bench_scaling(mnist, work),
                 "reference": lambda: bench_reference(mnist), "lbfgs-syft": lambda: bench_lbfgs_syft(mnist, work),
                 "dp-curve": lambda: bench_dp_curve(mnist), "dp-syft": lambda: bench_dp_syft(mnist, work),
                 "secagg-syft": lambda: bench_secagg_syft(mnist, work)}
        for name in args.only:
            results[name] = steps[name]()
            results.setdefault("measured", {})[name] = time.strftime("%Y-%m-%d %H:%M")
            # ru_maxrss covers this process only: name the sections it measured, not all of results.json
            results["orchestrator_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            results["orchestrator_peak_rss_sections"] = args.only[: args.only.index(name) + 1]
            results_path.write_text(json.dumps(results, indent=2))
            write_markdown(results)
    print(f"wrote {HERE / 'RESULTS.md'} and {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main_bench())
