"""RESULTS.md's sections on the scattering feature map (and features_vs_epsilon.png)."""

from __future__ import annotations

from sections.shared import HERE


def _eps(x: dict) -> str:
    return f"{x['epsilon']:g}" if x.get("epsilon") else "no DP"


def features_markdown(r: dict) -> list[str]:
    lines: list[str] = []
    if "features" in r:
        x = r["features"]
        lines += ["## Scattering features: cost per site", "",
                  f"One site's {x['rows']:,} rows (`python benchmarks/run.py --only features`, a process of its own): "
                  f"computed in {x['compute_seconds']:.1f} s ({x['ms_per_image']:.2f} ms per image, one core), "
                  f"{x['cache_file_mb']:.0f} MiB of float32 on the owner's disk, read back in "
                  f"{x['cache_read_seconds']:.2f} s; peak memory of that process {x['peak_rss_mb']:.0f} MiB "
                  f"({x['rss_before_mb']:.0f} MiB before: MNIST loaded).", ""]
    if "features-curve" in r:
        rows = r["features-curve"]["rows"]
        epsilons = sorted({x["epsilon"] for x in rows if x["epsilon"]})
        pixels = {(x["sites"], x.get("secure_aggregation", False), x["epsilon"]): x["final"]
                  for x in r.get("dp-curve", {}).get("rows", [])}
        lines += ["## Accuracy against epsilon: scattering features vs pixels (in-process)", "",
                  "`python benchmarks/run.py --only features-curve` (scattering; the pixels rows are the dp-curve "
                  "section's). Each cell: scattering / pixels.", "",
                  "| sites | " + " | ".join(f"epsilon {e:g}" for e in epsilons) + " | no DP |",
                  "|---|" + "---|" * (len(epsilons) + 1)]
        for key, label in (((2, False), "2, noise at each site"), ((2, True), "2, secure aggregation"),
                           ((10, False), "10, noise at each site"), ((10, True), "10, secure aggregation")):
            cells = []
            for e in [*epsilons, None]:
                got = [x for x in rows
                       if (x["sites"], x.get("secure_aggregation", False)) == key and x["epsilon"] == e]
                if e is None and not got:
                    got = [x for x in rows if x["sites"] == key[0] and not x["epsilon"]]
                pix = pixels.get((*key, e)) or (pixels.get((key[0], False, None)) if e is None else None)
                cells.append((f"{100 * got[0]['final']:.2f}%" if got else "-")
                             + (f" / {100 * pix:.2f}%" if pix else ""))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        steps = ", ".join(f"{x['noisy_steps_per_site']} at {x['epsilon']:g}" for x in rows
                          if x["sites"] == 2 and x.get("secure_aggregation") and x["epsilon"])
        lines += ["", "Scattering: FedAvg at the DP defaults for the features (clip 1, step 4, momentum 0.9; with "
                  "secure aggregation one noisy step per round, else 10), the number of noisy steps chosen by the "
                  f"planner from the epsilon ({steps}); no DP: 30 rounds x 20 lbfgs iterations. One run each "
                  "(seed noise is +-0.3 points at epsilon 1).", ""]
        plot_features_curve(r)
    if "features-syft" in r:
        lines += ["## Scattering features through real datasites", "",
                  "`python benchmarks/run.py --only features-syft`.", "",
                  "| sites | epsilon per site | secure aggregation | noisy steps | final accuracy | "
                  "epsilon spent (max) | wall (s) | round (s) | datasite peak memory (MiB) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for x in r["features-syft"]:
            spent = f"{x['epsilon_spent_max']:.4f}" if x.get("epsilon_spent_max") else "-"
            lines.append(f"| {x['sites']} | {_eps(x)} | {'yes' if x['secure_aggregation'] else 'no'} | "
                         f"{x['noisy_steps_per_site'] or '-'} | {100 * x['final']:.2f}% | {spent} | "
                         f"{x['wall_seconds']:.0f} | {x['median_round_seconds']:.2f} | "
                         f"{max(x['datasite_peak_rss_mb']):.0f} |")
        lines.append("")
    if "fashion" in r:
        x = r["fashion"]
        lines += ["## Fashion-MNIST (in-process, 2 sites)", "", f"`python benchmarks/run.py --only fashion` "
                  f"(`--data {x['data']}`).", "",
                  "| features | epsilon per site | secure aggregation | final accuracy |", "|---|---|---|---|"]
        for y in x["rows"]:
            lines.append(f"| {y['features']} | {_eps(y)} | {'yes' if y['secure_aggregation'] else 'no'} | "
                         f"{100 * y['final']:.2f}% |")
        lines.append("")
    return lines


def plot_features_curve(results: dict) -> None:
    """benchmarks/features_vs_epsilon.png: scattering (solid) against pixels (dotted), per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    styles = {(2, False): "tab:blue", (2, True): "tab:orange", (10, False): "tab:green", (10, True): "tab:red"}
    names = {(2, False): "2 sites, own noise", (2, True): "2 sites, secure", (10, False): "10 sites, own noise",
             (10, True): "10 sites, secure"}
    for source, style, label in (("features-curve", "o-", "scattering"), ("dp-curve", "s:", "pixels")):
        rows = results.get(source, {}).get("rows", [])
        for key, color in styles.items():
            points = sorted((x["epsilon"], 100 * x["final"]) for x in rows
                            if (x["sites"], x.get("secure_aggregation", False)) == key and x["epsilon"])
            if points:
                ax.plot(*zip(*points, strict=True), style, color=color, label=f"{label}, {names[key]}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("epsilon per site (delta 1e-5)")
    ax.set_ylabel("MNIST test accuracy (%)")
    ax.set_title("Logistic regression under record-level DP: scattering features vs pixels")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(HERE / "features_vs_epsilon.png", dpi=110)
    plt.close(fig)
