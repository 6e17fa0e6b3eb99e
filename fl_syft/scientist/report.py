"""The end-of-run report: ``convergence.png``, ``confusion_matrix.png``, ``comparison.png`` and
``report.md`` embedding them (figures and markdown only; the files written every round are
``scientist.outputs``').
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fl_syft.common.accounting import COMPOSITION
from fl_syft.common.files import write_private
from fl_syft.scientist.algorithms import Algorithm
from fl_syft.scientist.algorithms.private import noise_of


def write_report(out: Path, doc: dict, algorithm: Algorithm, params: dict, X_test: np.ndarray,
                 y_test: np.ndarray, label_histogram: dict[str, list[int]] | None, histogram_of: str) -> Path:
    """All end-of-run files in ``out``; returns the path of ``report.md``.

    ``label_histogram`` maps site -> 10 row counts per digit; ``histogram_of`` says which rows.
    """
    import matplotlib

    matplotlib.use("Agg")
    from fl_syft.scientist.evaluate import confusion_matrix

    history, baselines = doc["rounds"], doc.get("baselines", {})
    _save(convergence_figure(history, baselines, algorithm.title), out / "convergence.png")
    _save(confusion_figure(confusion_matrix(params, X_test, y_test), doc["final"]["global_test_accuracy"]),
          out / "confusion_matrix.png")
    has_comparison = bool(alone_baselines(baselines)[0])
    if has_comparison:
        _save(comparison_figure(baselines, doc["final"]["global_test_accuracy"]), out / "comparison.png")
    path = out / "report.md"
    write_private(path, _markdown(doc, algorithm, len(y_test), label_histogram, histogram_of, has_comparison))
    return path


def alone_baselines(baselines: dict) -> tuple[dict, str]:
    """(site -> its alone baseline, how to name it): under DP each site alone at the run's epsilon,
    else each site alone without DP (local-only); ({}, "") when there are none."""
    if baselines.get("private_alone"):
        ran = {site: v for site, v in baselines["private_alone"].items() if "error" not in v}  # failed: said apart
        eps = next(iter(baselines["private_alone"].values()))["epsilon"]
        return ran, f"site alone at epsilon {eps:.3g} (its own noise)" if ran else ""
    if baselines.get("local_only"):
        return baselines["local_only"], "local-only (site alone)"
    return {}, ""


def _site_order(names) -> list[str]:
    """site-1, site-2, ..., site-10 (numeric, not lexical, order)."""
    return sorted(names, key=lambda s: (len(s), s))


CENTRALIZED = "centralized LR on the pooled shards (same C)"
CENTRALIZED_NOTE = ("one regularised fit of every site's rows together: a reference, not an upper bound; a "
                    "federated model can score higher on the test set (FedAvg's early-stopped local fits "
                    "regularise differently, which under quantity skew helps)")
MAX_SITE_LINES = 5  # more sites than this are drawn as a band (min..max) and their median


def _save(fig, path: Path) -> None:
    """PNG, owner-only like every output (``scientist.outputs``)."""
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_private(path, buffer.getvalue())


def convergence_figure(history: list[dict], baselines: dict, title: str):
    """Global test accuracy per round, the sites' local accuracy (lines, or a band for many
    sites), the baselines as horizontal lines; every plotted value inside the y-range."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [r["round"] for r in history]
    glob = [100 * r["global_test_accuracy"] for r in history]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    ax.plot(rounds, glob, "o-" if len(rounds) <= 40 else "-", color="black", lw=2, ms=4,
            label=f"global model ({title}), MNIST test")
    shown = list(glob)
    sites = _site_order({s for r in history for s in r["sites"]})
    local = {site: [(r["round"], 100 * r["sites"][site]["train_accuracy"]) for r in history
                    if r["sites"].get(site, {}).get("train_accuracy") is not None] for site in sites}
    if len(sites) <= MAX_SITE_LINES:
        for i, site in enumerate(sites):
            if local[site]:
                ax.plot(*zip(*local[site], strict=True), "--", lw=1, alpha=0.7, color=plt.cm.tab10(i % 10),
                        label=f"{site}: local model, own training rows")
    else:
        per_round = [(r["round"], [100 * m["train_accuracy"] for m in r["sites"].values()
                                   if m.get("train_accuracy") is not None]) for r in history]
        per_round = [(n, values) for n, values in per_round if values]
        if per_round:
            x = [n for n, _ in per_round]
            ax.fill_between(x, [min(v) for _, v in per_round], [max(v) for _, v in per_round], color="tab:blue",
                            alpha=0.15, label=f"{len(sites)} sites' local models, own training rows: min..max")
            ax.plot(x, [float(np.median(v)) for _, v in per_round], "--", color="tab:blue", lw=1,
                    label="... their median")
    shown += [acc for points in local.values() for _, acc in points]
    if baselines.get("centralized"):
        ceiling = 100 * baselines["centralized"]["test_accuracy"]
        ax.axhline(ceiling, color="tab:green", lw=1.5, label=f"{CENTRALIZED} ({ceiling:.2f}%)")
        shown.append(ceiling)
    alone, label = alone_baselines(baselines)
    if alone:
        mean = 100 * np.mean([v["test_accuracy"] for v in alone.values()])
        ax.axhline(mean, color="tab:red", lw=1.5, ls=":", label=f"{label}: mean ({mean:.2f}%)")
        shown.append(mean)
    ax.set_xlabel("round (one call to every site)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(max(0.0, min(shown) - 3), min(100.0, max(shown) + 2))  # every plotted value inside
    ax.set_title(f"Convergence: {len(sites)} sites, final global test accuracy {glob[-1]:.2f}%")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def confusion_figure(cm: np.ndarray, accuracy: float):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5.4))
    image = ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > cm.max() / 2 else "black")
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_title(f"Global model on the test set: {100 * accuracy:.2f}% correct", fontsize=10)
    fig.colorbar(image, ax=ax, label="images")
    return fig


def comparison_figure(baselines: dict, federated: float):
    """Per site: alone vs the federated model (bars from 0), the centralized reference as a line."""
    import matplotlib.pyplot as plt

    local, label = alone_baselines(baselines)
    sites = _site_order(local)
    x = np.arange(len(sites))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(sites) + 3), 4.6))
    alone = ax.bar(x - 0.2, [100 * local[s]["test_accuracy"] for s in sites], 0.4, color="tab:red", alpha=0.8,
                   label=label)
    together = ax.bar(x + 0.2, [100 * federated] * len(sites), 0.4, color="tab:blue", alpha=0.8,
                      label="federated global model")
    for bars in (alone, together):
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    if baselines.get("centralized"):
        ax.axhline(100 * baselines["centralized"]["test_accuracy"], color="tab:green", lw=1.5, label=CENTRALIZED)
    about = "~" if baselines.get("private_alone") else ""  # under DP: the published noisy count
    ax.set_xticks(x, [f"{s}\n({about}{local[s]['n_samples']} rows)" for s in sites], fontsize=8)
    ax.set_ylabel("accuracy on the MNIST test set (%)")
    ax.set_ylim(0, 105)  # from zero: bar heights compare as the accuracies do
    ax.grid(axis="y", alpha=0.3)
    # Above the axes (the bars reach the top): in one row if that fits the figure's width (with a
    # margin: it is centred on the axes, not on the figure), else stacked. The title is the
    # figure's, so the layout keeps it above the legend however tall.
    style = {"fontsize": 8, "loc": "lower center", "bbox_to_anchor": (0.5, 1.0), "frameon": False}
    legend = ax.legend(**style, ncol=3)
    if legend.get_window_extent(fig.canvas.get_renderer()).width > 0.95 * fig.bbox.width:
        ax.legend(**style, ncol=1)
    fig.suptitle("Does federation help? Each site alone vs the federated model", fontsize=12)
    return fig


def _privacy_section(plan: dict, final: dict, threshold: int | None) -> list[str]:
    """What each site's owner enforces, what this run spent, and what that protects (with secure
    aggregation at ``threshold``: distributed noise, and what holds if sites collude)."""
    lines = ["## Privacy", "", "Each data owner enforces record-level differential privacy at their site: the unit "
             "protected is one row of that site's data (add/remove-one-row neighbouring), against the data scientist "
             "whatever code parameters and models they send. Every call on private rows is charged to the site's "
             "ledger before it runs (accounting: dp-accounting, analytic Gaussian).", "",
             f"This run: each row's gradient clipped to {next(iter(plan['sites'].values()))['policy']['clip']:g}, "
             f"Gaussian {noise_of(plan)}: epsilon {plan['epsilon_per_site']:.3g} per site at delta "
             f"{plan['delta']:g}.", "",
             *([f"Secure aggregation with distributed noise: each round the scientist saw only the sum of at least "
                f"{threshold} sites' updates, each site adding 1/sqrt({threshold}) of the noise variance, so the sum "
                f"carries the noise of one central mechanism and the epsilon above holds for each site's rows as "
                f"long as fewer than {threshold} sites collude with the scientist (a round with fewer than "
                f"{threshold} survivors is refused, never unmasked).", ""] if threshold else
               ["Each site's update reached the scientist on its own, protected by that site's own noise.", ""]),
             f"Per site below: what it had spent before this run, what this run spends on its own, and what its "
             f"ledger holds after it (with each site alone, if it ran, included). The last is not the sum of "
             f"the two before it: {COMPOSITION}.", "",
             "| site | budget (epsilon, delta) | spent before | this run alone | spent after | "
             "rows (published, noisy) |", "|---|---|---|---|---|---|"]
    spent = final.get("epsilon_spent", {})
    for site, info in plan["sites"].items():
        policy = info["policy"]
        after = spent.get(site, {}).get("epsilon")
        lines.append(f"| {site} | {policy['epsilon']:g}, {policy['delta']:g} | {info['spent_before']:.4g} | "
                     f"{plan['epsilon_per_site']:.4g} | {'?' if after is None else f'{after:.4g}'} | {info['rows']} |")
    for r in plan.get("replans", []):
        lines += ["", f"Resumed at round {r['at_round']} ({r['why']}): the remaining rounds were replanned from "
                  f"the sites' ledgers with noise multiplier {r['noise_multiplier']:.4g} (was "
                  f"{r['noise_multiplier_before']:.4g}), to end within what the run was to spend."]
    return lines


def _features(fmap) -> str:
    """How the report names a feature map (its full spec is in model.npz and metrics.json)."""
    if fmap.name == "pixels":
        return "pixels/255 (784)"
    spec = fmap.spec
    return (f"scattering: kymatio Scattering2D J={spec['J']}, L={spec['L']} on pixels/255, {spec['norm']} norm "
            f"({spec['groups']} groups) per image ({fmap.width})")


def describe_data(cfg: dict) -> str:
    """What a run trained and scored on: one data set split across the sites (a simulation, a
    demo's fresh sites), or the scientist's test set beside the sites' own rows, which the
    scientist never sees (a run over served or launched sites)."""
    source = cfg.get("data") or "embedded"
    named = {"embedded": "embedded MNIST", "openml": "OpenML mnist_784"}.get(
        source, f"the IDX files in {source[4:]}" if source.startswith("idx:") else source)
    if "partition" in cfg:
        return f"{named}: its training set split across the sites (partition below), its test set scored"
    return f"test set: {named}; training rows: the sites' own"


def _markdown(doc: dict, algorithm: Algorithm, n_test: int, label_histogram: dict | None, histogram_of: str,
              has_comparison: bool) -> str:
    cfg, history, baselines = doc["config"], doc["rounds"], doc.get("baselines", {})
    final = doc["final"]
    lines = [f"# fl-syft report: {cfg.get('command', 'run')}", "",
             f"**Final global test accuracy: {100 * final['global_test_accuracy']:.2f}%** ({algorithm.title}, "
             f"the model of round {final['round']}; {final['stopped']}), MNIST test set "
             f"({n_test:,} images).", "",
             "## Settings", "", "| setting | value |", "|---|---|",
             f"| algorithm | {algorithm.title} |", f"| features | {_features(algorithm.features)} |",
             f"| data | {describe_data(cfg)} |"]
    if "partition" in cfg:
        p = cfg["partition"]
        lines.append(f"| partition | {p['kind']}, {len(label_histogram or {}) or p['sites']} sites"
                     + (f", alpha {p['alpha']}" if p["kind"] == "dirichlet" else "")
                     + (f", noisy sites {p['noisy_sites']} (std {p['noise_std']})" if p["noisy_sites"] else "")
                     + f", seed {p['seed']} |")
    if "scenario" in cfg:
        lines.append(f"| scenario | {cfg['scenario']} |")
    lines += [f"| {algorithm.rounds_label} | {cfg['rounds']} |",
              *(f"| {label} | {value} |" for label, value in algorithm.describe())]
    lines += [f"| rounds run | {final['rounds_run']} ({final['stopped']}) |", ""]
    lines += ["## Results", "", "| model | test accuracy |", "|---|---|",
              f"| federated global model ({algorithm.title}) | {100 * final['global_test_accuracy']:.2f}% |"]
    if baselines.get("centralized"):
        c = baselines["centralized"]["test_accuracy"]
        lines.append(f"| {CENTRALIZED}, simulation only (pooled rows) | {100 * c:.2f}% "
                     f"(federated {100 * (final['global_test_accuracy'] - c):+.2f} pp) |")
    local, label = alone_baselines(baselines)
    for site in _site_order(local):
        v = local[site]
        lines.append(f"| {site}: {label}, {v['n_samples']} rows | {100 * v['test_accuracy']:.2f}% "
                     f"(federated {100 * (final['global_test_accuracy'] - v['test_accuracy']):+.2f} pp) |")
    if baselines.get("private_alone"):
        failed = {site: v["error"] for site, v in baselines["private_alone"].items() if "error" in v}
        lines += [*(f"| {site}: alone | failed: {why} |" for site, why in sorted(failed.items())), "",
                  "Each site alone is a second private run at every site, at the same epsilon as the federated "
                  "run with its DP settings (without secure aggregation: the site's own noise), charged to the same "
                  "budget (planned and checked before the federated run started); the epsilon spent below is both "
                  "runs composed."]
    if baselines.get("dropped"):
        lines += ["", f"Baselines: not run ({baselines['dropped']})."]
    if baselines.get("centralized"):
        lines += ["", f"The {CENTRALIZED} is {CENTRALIZED_NOTE}."]
    if cfg.get("privacy"):
        lines += ["", *_privacy_section(cfg["privacy"], final, cfg.get("secure_aggregation", {}).get("threshold"))]
    lines += ["", "![convergence](convergence.png)", ""]
    if has_comparison:
        lines += ["![comparison](comparison.png)", ""]
    lines += ["![confusion matrix](confusion_matrix.png)", ""]
    if cfg.get("privacy"):
        lines += ["## Label histogram per site", "", "Not released: under differential privacy the sites return "
                  "no class counts (they are data too).", ""]
    elif label_histogram:
        lines += ["## Label histogram per site", "", f"Rows per digit: {histogram_of}.", "",
                  "| site | " + " | ".join(str(d) for d in range(10)) + " | total |",
                  "|---|" + "---|" * 11]
        for site, counts in label_histogram.items():
            lines.append(f"| {site} | " + " | ".join(str(c) for c in counts) + f" | {sum(counts)} |")
        lines.append("")
    rounds_s = [r["seconds"] for r in history]
    # A site's own call time (none under secure aggregation, where the sites are timed together).
    site_rows = [m for r in history for m in r["sites"].values() if "call_seconds" in m]
    lines += ["## Timings", "", f"- rounds: {len(history)}, total {sum(rounds_s):.1f} s, median "
              f"{np.median(rounds_s):.2f} s per round"]
    if site_rows and all("compute_seconds" in m for m in site_rows):
        lines.append(f"- per site call (median): compute {np.median([m['compute_seconds'] for m in site_rows]):.2f} "
                     f"s, transport/overhead {np.median([m['transport_seconds'] for m in site_rows]):.2f} s")
    elif site_rows:  # under DP a site reports no compute time: it would time its rows
        lines.append(f"- per site call (median): {np.median([m['call_seconds'] for m in site_rows]):.2f} s")
    secure = [r["secure_aggregation"]["seconds"] for r in history if "secure_aggregation" in r]
    if secure:
        keys, calls, masking, unmask = (np.median([t[k] for t in secure]) for k in ("keys", "masked_update",
                                                                                   "masking", "unmask"))
        lines.append(f"- secure aggregation, per round (median): key agreement and Shamir shares {keys:.2f} s; "
                     f"the sites' calls {calls:.2f} s (masking at a site {masking:.2f} s, the rest training and "
                     f"PySyft transport); unmasking and reconstructing the sum {unmask:.2f} s")
    # The baselines' time (metrics.json of older runs has none): each site alone can take longer
    # than the federated rounds.
    alone_s = [v["seconds"] for kind in ("local_only", "private_alone") for v in baselines.get(kind, {}).values()
               if "seconds" in v]
    ceiling_s = baselines.get("centralized", {}).get("seconds")
    timed = []
    if alone_s:
        timed.append(f"each site alone {np.median(alone_s):.1f} s per site (median; {sum(alone_s):.1f} s summed "
                     "over the sites, which ran at once)")
    if ceiling_s is not None:
        timed.append(f"the centralized ceiling {ceiling_s:.1f} s")
    if timed:
        lines.append(f"- baselines: {'; '.join(timed)}")
    dropped = [(r["round"], s) for r in history for s in r.get("dropped", {})]
    if dropped:
        lines.append(f"- dropouts: {', '.join(f'{s} in round {n}' for n, s in dropped)}")
    lines += ["", f"Files: `metrics.json`, `metrics.csv`, `model.npz` (coef (10, {algorithm.features.width}), "
              "intercept (10,), and `features`: the feature map's spec as JSON; `fl-syft score model.npz` "
              "scores it), `checkpoint.npz`.", ""]
    return "\n".join(lines)
