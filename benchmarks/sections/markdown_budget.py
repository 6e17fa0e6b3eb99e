"""RESULTS.md's sections on a finite budget: small sites under DP, and refusing a spent budget."""

from __future__ import annotations


def budget_markdown(r: dict) -> list[str]:
    lines: list[str] = []
    if "small-sites" in r:
        lines += ["## DP on small and unequal sites (in-process, scattering)", "",
                  "`python benchmarks/run.py --only small-sites`: the planner's defaults (the step scaled down with "
                  "the noise per row, `scientist.algorithms.private.noise_scaled_lr`) beside the fixed step 4 "
                  "the defaults had before. One run each.", "",
                  "| sites | epsilon per site | secure aggregation | step | final accuracy | test loss first -> last "
                  "| noise multiplier x steps |", "|---|---|---|---|---|---|---|"]
        for x in r["small-sites"]["rows"]:
            step = f"{x['lr']:.3g}" + (" (default)" if x["default"] else " (old default)")
            lines.append(f"| {x['label']} | {x['epsilon']:g} | {'yes' if x['secure_aggregation'] else 'no'} | {step} "
                         f"| {100 * x['final']:.2f}% | {x['loss_first']:.2f} -> {x['loss_last']:.2f} | "
                         f"{x['noise_multiplier']:.3g} x {x['noisy_steps']} |")
        lines.append("")
    if "refusal" in r:
        x = r["refusal"]
        lines += ["## A run on spent sites is refused", "",
                  "`python benchmarks/run.py --only refusal`: two datasites (30k rows each) whose budget a first "
                  "run spent; `fl-syft run` again, a process of its own: refused with exit code 2 before anything "
                  f"is submitted, trained or charged in {min(x['seconds']):.1f} s (of {len(x['seconds'])}: "
                  + ", ".join(f"{s:.1f}" for s in x["seconds"]) + " s; Python and PySyft imports, login, the "
                  "sites' statuses). Before, the same run trained 12 rounds on noise for 77 s and exited 0. Its "
                  "line:", "", f"    {x['line']}", ""]
    return lines
