"""The fixed feature maps: what they compute, where a site keeps them, and how a saved model names them."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from conftest import PLAIN, synthetic_shard

from fl_syft.common.errors import ConfigError
from fl_syft.common.features import MAPS, cached, feature_map, from_spec
from fl_syft.owner.features import site_features
from fl_syft.owner.guard import Guard, Refused
from fl_syft.owner.ledger import Ledger
from fl_syft.owner.policy import owner_policy
from fl_syft.scientist.outputs import load_model, write_model


def test_scattering_is_kymatios_transform_normalised_per_image_in_27_groups(mnist):
    """An independent rebuild from the published spec (kymatio in float64, then the group norm)
    gives the site's features to float32 precision."""
    from kymatio.numpy import Scattering2D

    fmap = MAPS["scattering"]
    spec = json.loads(fmap.to_json())
    images = mnist.X_test[:40]
    coeffs = Scattering2D(J=spec["J"], shape=tuple(spec["shape"]), L=spec["L"])(images.reshape(-1, 28, 28) / 255.0)
    groups = coeffs.reshape(len(images), spec["groups"], -1)
    expected = ((groups - groups.mean(axis=2, keepdims=True))
                / np.sqrt(groups.var(axis=2, keepdims=True) + spec["eps"])).reshape(len(images), -1)
    expected[np.abs(expected) < spec["floor"]] = 0.0
    got = fmap.transform(images)
    assert got.shape == (40, 3969) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-5)
    nonzero = np.abs(got[got != 0])
    assert nonzero.min() >= 0.999 * spec["floor"]  # no tiny entries: their products would be subnormal in a DP step


def test_every_feature_is_bounded_whatever_the_image():
    """The guard's totality argument: every feature within +-sqrt(147) (scattering) or [0, 1] (pixels),
    for blank, saturated, checkered and random images."""
    rng = np.random.default_rng(0)
    checker = (np.indices((28, 28)).sum(axis=0) % 2 * 255).reshape(1, 784)
    images = np.vstack([np.zeros((1, 784)), np.full((1, 784), 255), checker,
                        rng.integers(0, 256, (5, 784))]).astype(np.uint8)
    scattering = MAPS["scattering"].transform(images)
    assert np.isfinite(scattering).all() and np.abs(scattering).max() <= np.sqrt(147) + 1e-4
    assert np.all(scattering[0] == 0)  # a blank image: every group constant, so 0
    pixels = MAPS["pixels"].transform(images)
    assert pixels.min() >= 0 and pixels.max() == 1


def test_the_cache_is_owner_only_read_back_and_keyed_by_the_rows_and_the_spec(tmp_path, caplog):
    shard = synthetic_shard(600)
    directory = tmp_path / "features"
    with caplog.at_level(logging.INFO, logger="fl_syft.common.features"):
        first = cached(MAPS["scattering"], shard[:, :-1], directory, "site-1's rows")
    assert "computed" in caplog.text
    (path,) = directory.iterdir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert path.name.endswith(f"-{MAPS['scattering'].digest}.npy")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fl_syft.common.features"):
        again = cached(MAPS["scattering"], shard[:, :-1], directory, "site-1's rows")
    assert "computed" not in caplog.text  # read back, not recomputed
    np.testing.assert_array_equal(first, again)
    other = synthetic_shard(600, seed=1)
    cached(MAPS["scattering"], other[:, :-1], directory, "site-2's rows")
    assert len(list(directory.iterdir())) == 2  # other rows, another file
    path.write_bytes(b"not an array")
    with caplog.at_level(logging.WARNING, logger="fl_syft.common.features"):
        repaired = cached(MAPS["scattering"], shard[:, :-1], directory, "site-1's rows")
    assert "unreadable" in caplog.text
    np.testing.assert_array_equal(repaired, first)


def test_site_features_hold_every_map_with_the_labels():
    shard = synthetic_shard(300)
    data = site_features(shard, None, "t")
    assert set(data) == set(MAPS)
    for name, fmap in MAPS.items():
        assert data[name]["X"].shape == (300, fmap.width)
        np.testing.assert_array_equal(data[name]["y"], shard[:, -1])


def _guard(tmp_path, epsilon):
    policy = owner_policy(epsilon=epsilon, min_rows=50).for_rows(300)
    ledger = Ledger(tmp_path / "l.jsonl", "0" * 64, epsilon, policy.delta) if epsilon else None
    guard = Guard("site-1", policy, 300, ledger)
    if epsilon:
        guard.publish_row_count()
    return guard


def test_the_guard_fits_the_model_to_the_named_feature_map_and_refuses_pixel_only_keys(tmp_path):
    guard = _guard(tmp_path, 8.0)
    data = site_features(synthetic_shard(300), None, "t")
    pixel_model = {"coef": np.zeros((10, 784)), "intercept": np.zeros(10)}
    with pytest.raises(Refused, match=r"shape \(10, 3969\)"):  # the default map is scattering
        guard.call("ml_experiment", data, pixel_model, {"local_steps": 1, "noise_multiplier": 5.0})
    with pytest.raises(Refused, match="frequencies applies to features 'pixels' only"):
        guard.call("ml_experiment", data, {}, {"local_steps": 1, "noise_multiplier": 5.0, "frequencies": 14})
    with pytest.raises(Refused, match="must be one of scattering, pixels"):
        guard.call("ml_experiment", data, {}, {"local_steps": 1, "noise_multiplier": 5.0, "features": "raw"})
    spent = guard.ledger.spent
    answer = guard.call("ml_experiment", data, pixel_model, {"local_steps": 1, "noise_multiplier": 5.0,
                                                             "features": "pixels", "frequencies": 14})
    assert answer["coef"].shape == (10, 784) and guard.ledger.spent > spent  # refusals charged nothing
    answer = guard.call("ml_experiment", data, {}, {"local_steps": 1, "noise_multiplier": 5.0})
    assert answer["coef"].shape == (10, 3969)


def test_a_model_file_names_its_feature_map_and_is_refused_when_they_disagree(tmp_path):
    params = {"coef": np.ones((10, 3969)), "intercept": np.zeros(10)}
    write_model(tmp_path / "model.npz", params, MAPS["scattering"])
    with np.load(tmp_path / "model.npz") as z:
        assert json.loads(str(z["features"])) == MAPS["scattering"].spec
    loaded, fmap = load_model(tmp_path / "model.npz")
    assert fmap is MAPS["scattering"] and np.array_equal(loaded["coef"], params["coef"])
    write_model(tmp_path / "bad.npz", {"coef": np.ones((10, 784)), "intercept": np.zeros(10)}, MAPS["scattering"])
    with pytest.raises(ConfigError, match="does not fit its features"):
        load_model(tmp_path / "bad.npz")
    with pytest.raises(ConfigError, match="differs from this fl-syft's"):
        from_spec(json.dumps({**MAPS["scattering"].spec, "J": 3}))
    with pytest.raises(ConfigError, match="--features must be one of scattering, pixels"):
        feature_map("wavelets")


def test_fl_syft_score_rescores_a_saved_model_as_the_run_did(small_idx, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "FL_SYFT_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "fl_syft", "simulate", "--data", f"idx:{small_idx}", *PLAIN,
                           "--rounds", "2", "--out", str(out)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    final = json.loads((out / "metrics.json").read_text())["final"]["global_test_accuracy"]
    assert "scattering" in (out / "report.md").read_text()
    scored = subprocess.run([sys.executable, "-m", "fl_syft", "score", str(out / "model.npz"), "--data",
                             f"idx:{small_idx}"], capture_output=True, text=True, env=env)
    assert scored.returncode == 0, scored.stderr
    assert f"accuracy {100 * final:.2f}%" in scored.stdout and '"name": "scattering"' in scored.stdout
    missing = subprocess.run([sys.executable, "-m", "fl_syft", "score", str(tmp_path / "none.npz")],
                             capture_output=True, text=True, env=env)
    assert missing.returncode != 0 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
