"""A datasite computes its rows' features once and keeps them on the owner's disk; the scientist
trains on either map through real datasites and the saved model names it."""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest
from conftest import plain_policy

from fl_syft.cli import main
from fl_syft.common.features import MAPS
from fl_syft.common.partition import PartitionSpec
from fl_syft.owner.launch import Deployment, LaunchOptions
from fl_syft.owner.network import free_base_port

pytestmark = pytest.mark.syft


def _options(small_idx, state, **more) -> LaunchOptions:
    return LaunchOptions(partition=PartitionSpec(sites=2), data=f"idx:{small_idx}", base_port=free_base_port(2),
                         state_dir=state, policy=plain_policy(), **more)


def _run(state, small_idx, out, *flags) -> int:
    return main(["run", "--connection", str(state / "datasites.json"), "--data", f"idx:{small_idx}",
                 "--rounds", "1", "--local-iters", "2", "--out", str(out), *flags])


def test_features_are_computed_once_per_shard_kept_owner_only_and_read_back_on_the_next_start(small_idx, tmp_path):
    state = tmp_path / "state"
    with Deployment(_options(small_idx, state)) as d:
        d.start()
        cache = state / "features"
        files = sorted(cache.iterdir())
        # One file per site's rows for the scattering map (pixels are computed, not kept).
        assert len(files) == 2 and all(f.name.endswith(f"-{MAPS['scattering'].digest}.npy") for f in files)
        assert stat.S_IMODE(cache.stat().st_mode) == 0o700
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
        assert all(np.load(f).shape[1] == 3969 for f in files)
        logs = [(state / f"site-{i}" / "site.log").read_text() for i in (1, 2)]
        assert all("scattering features of" in log and "computed in" in log for log in logs)
        stamps = {f: f.stat().st_mtime_ns for f in files}
        assert _run(state, small_idx, tmp_path / "scattering") == 0
        assert _run(state, small_idx, tmp_path / "pixels", "--features", "pixels") == 0
    for name, width in (("scattering", 3969), ("pixels", 784)):
        with np.load(tmp_path / name / "model.npz") as z:
            assert json.loads(str(z["features"]))["name"] == name and z["coef"].shape == (10, width)
        assert json.loads((tmp_path / name / "metrics.json").read_text())["config"]["features"] == MAPS[name].spec
    # A fresh start over the same rows reads them back: nothing computed, the files untouched.
    with Deployment(_options(small_idx, state)) as d:
        d.start()
        logs = [(state / f"site-{i}" / "site.log").read_text() for i in (1, 2)]
        assert not [line for log in logs for line in log.splitlines() if "features of" in line]
        assert {f: f.stat().st_mtime_ns for f in stamps} == stamps
