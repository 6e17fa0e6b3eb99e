"""The report's pictures say what the numbers say: bars from zero, no clipped line, sites labelled."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

from fl_syft.scientist.report import CENTRALIZED, comparison_figure, convergence_figure, describe_data  # noqa: E402


def history(n_sites: int, rounds: int = 4) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"round": r, "global_test_accuracy": 0.85 + 0.01 * r,
             "sites": {f"site-{i}": {"train_accuracy": float(rng.uniform(0.3, 1.0))} for i in range(1, n_sites + 1)}}
            for r in range(1, rounds + 1)]


def baselines(n_sites: int) -> dict:
    return {"local_only": {f"site-{i}": {"test_accuracy": 0.49 + 0.04 * i, "n_samples": 100}
                           for i in range(1, n_sites + 1)},
            "centralized": {"test_accuracy": 0.9081}}


def test_comparison_bars_start_at_zero_and_name_the_centralized_model():
    ax = comparison_figure(baselines(10), 0.9127).axes[0]
    assert ax.get_ylim()[0] == 0
    assert CENTRALIZED in [t.get_text() for t in ax.get_legend().get_texts()]


def test_convergence_with_many_sites_summarises_them_and_clips_nothing():
    hist = history(10)
    ax = convergence_figure(hist, baselines(10), "FedAvg").axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert not any(label.startswith("site-") for label in labels)  # no ten look-alike entries
    assert any("10 sites' local models" in label and "min..max" in label for label in labels)
    low, high = ax.get_ylim()
    values = [100 * m["train_accuracy"] for r in hist for m in r["sites"].values()]
    assert low <= min(values) and high >= max(values)


def test_convergence_with_few_sites_labels_each():
    ax = convergence_figure(history(3), {}, "FedAvg").axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [label.split(":")[0] for label in labels if label.startswith("site-")] == ["site-1", "site-2", "site-3"]


def test_comparison_legend_and_title_fit_inside_the_figure_at_two_sites():
    fig = comparison_figure(baselines(2), 0.9127)  # narrow: three long entries cannot share a row
    fig.tight_layout()  # as the report saves it
    fig.canvas.draw()
    legend, page = fig.axes[0].get_legend().get_window_extent(), fig.bbox
    assert page.x0 <= legend.x0 and legend.x1 <= page.x1 and page.y0 <= legend.y0 and legend.y1 <= page.y1
    titles = [t.get_window_extent() for t in [*fig.texts, fig.axes[0].title] if t.get_text()]
    assert titles and not any(legend.overlaps(title) for title in titles)


def test_the_report_says_what_a_run_trained_and_scored_on():
    """A run over served sites scored on the scientist's test set and trained on rows it never saw;
    a simulation split one data set."""
    assert describe_data({"command": "run", "data": "embedded"}) == ("test set: embedded MNIST; training rows: the "
                                                                     "sites' own")
    assert describe_data({"command": "run", "data": "idx:/data/fashion"}) == (
        "test set: the IDX files in /data/fashion; training rows: the sites' own")
    assert describe_data({"command": "simulate", "data": "openml", "partition": {"kind": "iid"}}) == (
        "OpenML mnist_784: its training set split across the sites (partition below), its test set scored")
