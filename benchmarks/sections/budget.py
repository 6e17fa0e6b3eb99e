"""Sections on a finite budget: the DP defaults on small and unequal sites (in-process), and how
long a run on spent sites takes to be refused (through real datasites)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fl_syft.common.partition import PartitionSpec, make_shards
from fl_syft.owner.policy import owner_policy
from fl_syft.scientist.runs import RunRequest, run
from fl_syft.simulate import local_sites
from sections.shared import deployed

# (label, rows per site, epsilon per site, secure aggregation): the small sites and quantity skew.
SMALL_SITES = (("2 x 3000 rows", (3000, 3000), 0.5, True), ("2 x 3000 rows", (3000, 3000), 0.5, False),
               ("quantity-skew-4", (1000, 3000, 2000, 4000), 1.0, True),
               ("quantity-skew-4", (1000, 3000, 2000, 4000), 1.0, False),
               ("2 x 30000 rows", (30000, 30000), 0.25, True))
OLD_LR = 4.0  # the fixed default step before it followed the noise per row


def bench_small_sites(mnist) -> dict:
    """Scattering FedAvg under DP on each of ``SMALL_SITES``: the planner's defaults (the step scaled
    to the noise per row) beside the old fixed step 4; final accuracy and the test loss's path."""
    rows = []
    for label, sizes, epsilon, secure in SMALL_SITES:
        shards = make_shards(mnist.X_train, mnist.y_train, PartitionSpec(kind="sizes", sizes=sizes))
        for lr in (None, OLD_LR):
            sites = local_sites(shards, owner_policy(epsilon=epsilon * 1.001 + 0.01),
                                ledgers=Path(tempfile.mkdtemp(prefix="bench-small-")))
            settings = {} if lr is None else {"lr": lr}
            t = time.perf_counter()
            outcome = run(sites, RunRequest(epsilon=epsilon, secure=secure, settings=settings,
                                            config={"command": "benchmark"}), mnist.X_test, mnist.y_test)
            history, plan = outcome.history, outcome.config["privacy"]
            rows.append({"label": label, "sizes": list(sizes), "epsilon": epsilon, "secure_aggregation": secure,
                         "lr": plan["settings"]["lr"], "default": lr is None,
                         "final": history[-1]["global_test_accuracy"],
                         "loss_first": history[0]["global_test_loss"], "loss_last": history[-1]["global_test_loss"],
                         "noise_multiplier": plan["noise_multiplier"], "noisy_steps": plan["noisy_steps_per_site"],
                         "wall_seconds": time.perf_counter() - t})
            print(f"small-sites: {label} eps {epsilon:g} secure {secure} lr {rows[-1]['lr']:.3g}: "
                  f"{100 * rows[-1]['final']:.2f}%", flush=True)
    return {"rows": rows}


def bench_refusal(work: Path) -> dict:
    """Two datasites whose budget a first run spent; ``fl-syft run`` again (a process of its own, as a
    user starts it): the seconds until it exits refused, and its one line."""
    spec = PartitionSpec(sites=2)
    with deployed(spec, work / "refusal", policy=owner_policy(epsilon=1.0)) as (d, sites, _):
        import numpy as np

        from fl_syft.common.data import load_mnist

        mnist = load_mnist()
        X, y = mnist.X_test[:1000], mnist.y_test[:1000]
        run(sites, RunRequest(features="pixels", rounds=2, config={"command": "benchmark"}), np.asarray(X), y)
        times, line = [], ""
        for _ in range(3):
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "fl_syft", "run", "--connection", str(d.connection_file),
                                   "--out", str(work / "refused")], capture_output=True, text=True)
            times.append(time.perf_counter() - t)
            line = proc.stderr.strip().splitlines()[-1]
            assert proc.returncode == 2, proc.stderr[-2000:]
    print(f"refusal: {min(times):.1f} s", flush=True)
    return {"seconds": times, "line": line}
