import json

import numpy as np
import pytest
from conftest import PLAIN, plain_policy, width

from fl_syft.cli import build_parser, main, partition_spec
from fl_syft.common.data import load_mnist
from fl_syft.common.partition import SCENARIOS, PartitionSpec, label_histogram, make_shards
from fl_syft.scientist.aggregate import SiteResultError, sum_gradients
from fl_syft.scientist.algorithms.lbfgs import Lbfgs, LbfgsSettings
from fl_syft.scientist.evaluate import features_of_test_set as features_of
from fl_syft.scientist.evaluate import score
from fl_syft.simulate import centralized, local_sites


@pytest.fixture(scope="module")
def small(small_idx):
    return load_mnist(f"idx:{small_idx}")


@pytest.mark.parametrize("features", ["pixels"])  # on the default map too in test_lbfgs_through_the_cli (cheaper)
def test_federated_lbfgs_reaches_the_pooled_optimum_under_label_skew(small, features):
    shards = make_shards(small.X_train, small.y_train, PartitionSpec(kind="dirichlet", sites=5, alpha=0.1))
    assert min(len(np.unique(s[:, -1])) for s in shards) < 10  # some sites lack classes
    sites = local_sites(shards, plain_policy())
    algorithm = Lbfgs(LbfgsSettings(C=0.1), features=features)
    X_test = features_of(algorithm.features, small.X_test)
    params, history = algorithm.run(sites, X_test, small.y_test, rounds=500)
    pooled = centralized(sites, features, 0.1)
    assert params["coef"].shape == pooled["params"]["coef"].shape == (10, width(features))
    assert np.abs(params["coef"] - pooled["params"]["coef"]).max() < 0.05 * np.abs(pooled["params"]["coef"]).max()
    pooled_accuracy = score(pooled["params"], X_test, small.y_test)["accuracy"]
    assert abs(history[-1]["global_test_accuracy"] - pooled_accuracy) <= 0.005
    assert len(history) < 500 and history[-1]["objective"] < history[0]["objective"]


@pytest.mark.parametrize("features", ["scattering", "pixels"])
def test_sum_gradients_adds_and_validates(features):
    n = width(features)
    r = {"loss": 2.0, "grad_coef": np.ones((10, n)), "grad_intercept": np.ones(10), "n_samples": 3}
    total = sum_gradients({"a": r, "b": {**r, "loss": 1.0}}, n)
    assert total["loss"] == 3.0 and total["n_samples"] == 6 and np.all(total["grad_coef"] == 2)
    with pytest.raises(SiteResultError, match="site 'b' returned an invalid result: grad_intercept contains NaN"):
        sum_gradients({"a": r, "b": {**r, "grad_intercept": np.full(10, np.nan)}}, n)
    other = width("pixels" if features == "scattering" else "scattering")
    wrong = rf"site 'b' returned an invalid result: grad_coef has shape \(10, {other}\)"
    with pytest.raises(SiteResultError, match=wrong):
        sum_gradients({"a": r, "b": {**r, "grad_coef": np.ones((10, other))}}, n)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenarios_are_presets_of_flags(name):
    args = build_parser(name).parse_args(["simulate", "--scenario", name])
    spec = partition_spec(args)
    preset = SCENARIOS[name]
    assert spec.kind == preset["partition"]
    assert spec.n_sites == preset.get("sites", len(preset.get("sizes", ())))


def test_explicit_flag_beats_the_scenario():
    argv = ["simulate", "--scenario", "dirichlet-0.1-10", "--sites", "4"]
    assert main(["scenarios"]) == 0
    spec = partition_spec(build_parser("dirichlet-0.1-10").parse_args(argv))
    assert spec.sites == 4 and spec.alpha == 0.1


def test_simulate_writes_the_full_report(small, small_idx, tmp_path):
    out = tmp_path / "run"
    assert main(["simulate", *PLAIN, "--data", f"idx:{small_idx}", "--sites", "3", "--rounds", "3",
                 "--local-iters", "5", "--baselines", "--out", str(out)]) == 0
    for name in ("metrics.json", "metrics.csv", "model.npz", "checkpoint.npz", "convergence.png",
                 "confusion_matrix.png", "comparison.png", "report.md"):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["baselines"]["local_only"]) == {"site-1", "site-2", "site-3"}
    assert metrics["baselines"]["centralized"]["test_accuracy"] > 0.8
    csv_rows = (out / "metrics.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 3 * 3  # header + one row per round and site
    report = (out / "report.md").read_text()
    assert "![convergence](convergence.png)" in report and "centralized LR on the pooled shards (same C)" in report
    assert "every row of each site's shard" in report  # the partition's label histogram
    assert "| features | scattering: kymatio Scattering2D J=2, L=8" in report  # the default map, named
    shards = make_shards(small.X_train, small.y_train, PartitionSpec(sites=3))
    for site, counts in zip(("site-1", "site-2", "site-3"), label_histogram(shards), strict=True):
        assert f"| {site} | " + " | ".join(map(str, counts)) + f" | {counts.sum()} |" in report


def test_lbfgs_through_the_cli(small_idx, tmp_path):
    out = tmp_path / "lbfgs"
    assert main(["simulate", *PLAIN, "--data", f"idx:{small_idx}", "--algorithm", "lbfgs", "--rounds", "30",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["algorithm"] == "lbfgs" and 1 < len(metrics["rounds"]) <= 31
    assert "objective" in metrics["rounds"][-1] and metrics["final"]["global_test_accuracy"] > 0.8
    settings = (out / "report.md").read_text()  # L-BFGS has no local training to list
    assert "| algorithm | federated L-BFGS |" in settings and "local lbfgs iterations" not in settings
