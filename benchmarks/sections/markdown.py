"""benchmarks/RESULTS.md (and accuracy_vs_epsilon.png) from results.json: every figure, with what it measured."""

from __future__ import annotations

from sections.markdown_budget import budget_markdown
from sections.markdown_features import features_markdown
from sections.shared import FEDAVG_ROUNDS, HERE


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
        if "cold_seconds" in d:
            spent = ", ".join(f"{k} {v:.3f} of {d['epsilon_total'][k]:.3g}" for k, v in d["epsilon_spent"].items())
            alone = ", ".join(f"{k} {100 * v:.2f}%" for k, v in d["alone"].items())
            lines += ["## `fl-syft demo` end to end", "",
                      f"Cold (no features computed yet: a fresh cache and state directory) {d['cold_seconds']:.1f} s; "
                      f"warm (the same state directory, the owner resetting the rows' budget) median "
                      f"{d['warm_seconds_median']:.1f} s ({', '.join(f'{t:.1f}' for t in d['seconds'][1:])} s): launch "
                      "2 datasites, approval, training with secure aggregation, each site alone at the same epsilon, "
                      f"report, shutdown. Final accuracy {', '.join(f'{100 * a:.2f}%' for a in d['finals'])}; each "
                      f"site alone {alone}; epsilon spent per site (both runs composed) {spent}.", ""]
        else:  # measured before feature maps
            lines += ["## `fl-syft demo` end to end", "",
                      f"Median {d['seconds_median']:.1f} s over {d['repeats']} runs "
                      f"({', '.join(f'{t:.1f}' for t in d['seconds'])} s).", ""]
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
    lines += features_markdown(r)
    lines += budget_markdown(r)
    if r.get("notes"):
        lines += ["## Notes on these measurements", "", *[f"- {note}" for note in r["notes"]], ""]
    sections = ", ".join(r.get("orchestrator_peak_rss_sections", ["all"]))
    lines += [f"Peak RSS of the benchmark (orchestrator) process while measuring {sections}: "
              f"{r['orchestrator_peak_rss_mb']:.0f} MiB.", ""]
    (HERE / "RESULTS.md").write_text("\n".join(lines))


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
