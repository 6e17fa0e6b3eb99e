import numpy as np
import pytest
from conftest import synthetic_shard, vetted_data, width

from fl_syft.common.protocol import ML_EXPERIMENT
from fl_syft.vetted.local_training import ml_experiment

ALLOWED_KEYS = {"coef", "intercept", "n_samples", "class_counts", "train_accuracy", "holdout_accuracy",
                "global_accuracy", "seconds"}


PIXELS = {"features": "pixels"}


def local_round(shard, params: dict, config: dict) -> dict:
    """ml_experiment as a site runs it: with the config its guard completes from the schema, on the
    shard's features of the map that config names (default scattering)."""
    config = ML_EXPERIMENT.complete(config)
    return ml_experiment(vetted_data(shard, config["features"]), params, config)


@pytest.mark.parametrize("config", [{}, PIXELS], ids=["default-scattering", "pixels"])
def test_returns_only_aggregates(config):
    shard = synthetic_shard(300)
    result = local_round(shard, {}, config)
    n_features = width(ML_EXPERIMENT.complete(config)["features"])
    assert n_features == (3969 if not config else 784)
    assert set(result) == ALLOWED_KEYS
    assert result["coef"].shape == (10, n_features) and result["coef"].dtype == np.float64
    assert result["intercept"].shape == (10,)
    assert result["n_samples"] == 285  # 5% held out by default
    assert result["global_accuracy"] is None  # cold start: no received model to score
    for key, value in result.items():
        assert np.size(value) <= 10 * n_features and not (np.ndim(value) == 2 and value.shape[1] == 785), key
        assert not (np.ndim(value) == 2 and len(value) >= 285), key  # nothing per row


def test_warm_start_starts_from_the_given_coefficients():
    shard = synthetic_shard(400)
    converged = local_round(shard, {}, {**PIXELS, "local_iters": 300, "holdout": 0})
    params = {"coef": converged["coef"], "intercept": converged["intercept"]}
    warm = local_round(shard, params, {**PIXELS, "local_iters": 1, "holdout": 0})
    cold = local_round(shard, {}, {**PIXELS, "local_iters": 1, "holdout": 0})
    assert np.abs(warm["coef"] - params["coef"]).max() < 0.05 * np.abs(params["coef"]).max()
    assert np.abs(cold["coef"] - params["coef"]).max() > 0.5 * np.abs(params["coef"]).max()
    assert not np.allclose(warm["coef"], cold["coef"])


def test_scores_received_model_on_holdout():
    shard = synthetic_shard(400)
    first = local_round(shard, {}, {**PIXELS, "local_iters": 50})
    second = local_round(shard, {"coef": first["coef"], "intercept": first["intercept"]}, PIXELS)
    assert second["global_accuracy"] == pytest.approx(first["holdout_accuracy"])


def test_settings_come_from_config():
    shard = synthetic_shard(300)
    strong = local_round(shard, {}, {**PIXELS, "C": 0.001, "local_iters": 50})
    weak = local_round(shard, {}, {**PIXELS, "C": 100.0, "local_iters": 50})
    assert np.linalg.norm(strong["coef"]) < np.linalg.norm(weak["coef"])


def test_missing_classes_keep_the_received_rows():
    shard = synthetic_shard(300, classes=6)  # labels 0..5 only
    received = {"coef": np.full((10, width("pixels")), 0.01), "intercept": np.arange(10.0)}
    result = local_round(shard, received, PIXELS)
    assert np.array_equal(result["coef"][6:], received["coef"][6:])
    assert np.array_equal(result["intercept"][6:], received["intercept"][6:])
    assert not np.allclose(result["coef"][:6], received["coef"][:6])
    assert list(result["class_counts"][6:]) == [0, 0, 0, 0]


def test_two_classes_map_back_to_their_rows():
    shard = synthetic_shard(200, classes=2)
    result = local_round(shard, {}, {**PIXELS, "local_iters": 50})
    X, y = shard[:, :784] / 255.0, shard[:, 784]
    pred = np.argmax(X @ result["coef"].T + result["intercept"], axis=1)
    assert np.mean(pred == y) > 0.95


def test_logit_adjustment_returns_the_model_without_the_site_prior():
    """Same fit either way; only the intercepts differ, by the log of the site's label prior."""
    shard = synthetic_shard(400, classes=6)
    y = shard[:, 784]
    shard = shard[(y != 5) | (np.arange(len(y)) // 6 % 4 == 0)]  # class 5 rare: a skewed prior
    cfg = {**PIXELS, "local_iters": 500, "holdout": 0}
    plain = local_round(shard, {}, {**cfg, "logit_adjust": False})
    adjusted = local_round(shard, {}, {**cfg, "logit_adjust": True})
    counts = plain["class_counts"][:6]
    assert np.allclose(adjusted["coef"], plain["coef"], atol=1e-3)
    removed = plain["intercept"][:6] - adjusted["intercept"][:6]
    expected = np.log(counts * 10 / counts.sum())
    assert np.allclose(removed - removed.mean(), expected - expected.mean(), atol=1e-3)
    assert np.array_equal(adjusted["intercept"][6:], plain["intercept"][6:])


def test_the_tests_hand_the_vetted_function_what_a_site_computes():
    """``conftest.vetted_data`` (one map of a shard) is the site's own ``site_features`` entry for it."""
    from fl_syft.owner.features import site_features

    shard = synthetic_shard(300, seed=3)
    site = site_features(shard, None, "t")
    for name, data in site.items():
        ours = vetted_data(shard, name)
        assert ours["X"].dtype == data["X"].dtype == np.float32 and ours["y"].dtype == data["y"].dtype == np.int64
        assert np.array_equal(ours["X"], data["X"]) and np.array_equal(ours["y"], data["y"])
    np.testing.assert_allclose(site["pixels"]["X"], shard[:, :784] / 255.0, rtol=1e-6)  # pixels/255 in float32
