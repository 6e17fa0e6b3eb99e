"""Sections under the sites' differential privacy: accuracy against epsilon (in-process, and its plot),
through real datasites, and secure aggregation's cost and worth."""

from __future__ import annotations

import statistics
from pathlib import Path

from fl_syft.common.partition import PartitionSpec, make_shards, scenario
from fl_syft.owner.policy import owner_policy
from fl_syft.scientist.algorithms import State, build
from fl_syft.scientist.algorithms.private import DEFAULTS, SECURE_DEFAULTS
from fl_syft.scientist.runs import RunRequest
from fl_syft.simulate import local_sites
from sections.shared import DP_EPSILONS, deployed, median_round, pixel_features, private_run


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
    X_test = pixel_features(mnist.X_test)
    with deployed(PartitionSpec(sites=10), work / "sa-time", policy=owner_policy()) as (_, sites, _):
        statuses = [s.privacy() for s in sites]  # each plans half the budget over 120 steps, and runs a few
        asked = {secure: RunRequest(settings={"local_steps": 1}, rounds=120, epsilon=0.45, secure=secure,
                                    features="pixels") for secure in (False, True)}
        runs = {secure: build("fedavg", r.settings, statuses, r) for secure, r in asked.items()}
        state = {secure: State() for secure in runs}
        for rnd in range(1, compare_rounds + 1):
            for secure, algo in runs.items():
                state[secure] = algo.run(sites, X_test, mnist.y_test, rounds=rnd, state=state[secure])
    plain, masked = (state[s][1] for s in (False, True))
    out["round_seconds"] = {"without": median_round(plain), "with": median_round(masked)}
    out["ratio"] = out["round_seconds"]["with"] / out["round_seconds"]["without"]
    out["split"] = {k: statistics.median(r["secure_aggregation"]["seconds"][k] for r in masked[1:])
                    for k in masked[-1]["secure_aggregation"]["seconds"]}
    out["round_ratios"] = [a["seconds"] / b["seconds"] for a, b in zip(masked[1:], plain[1:], strict=True)]
    print(f"secagg round at 10 sites: {out['ratio']:.2f}x", flush=True)
    return out
