"""A new algorithm is one class and one registry line: the runner, the secure-aggregation wrapper,
the outputs and resume work for it unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import plain_policy

from fl_syft.common.data import load_mnist
from fl_syft.common.partition import PartitionSpec, make_shards
from fl_syft.owner.policy import owner_policy
from fl_syft.scientist import runs
from fl_syft.scientist.algorithms import REGISTRY, FedAvg
from fl_syft.simulate import local_sites


class ServerMomentum(FedAvg):
    """FedAvgM (Hsu et al. 2019): the averaged update applied with server-side momentum 0.5."""

    name, title = "fedavgm", "FedAvg with server momentum"

    def aggregate(self, params: dict, sums: dict) -> dict:
        average = super().aggregate(params, sums)
        if not params:
            return {**average, "server_velocity": np.zeros_like(average["coef"])}
        velocity = 0.5 * params["server_velocity"] + (average["coef"] - params["coef"])
        return {"coef": params["coef"] + velocity, "intercept": average["intercept"], "server_velocity": velocity}


@pytest.fixture(scope="module")
def small(small_idx):
    return load_mnist(f"idx:{small_idx}")


def test_a_registered_algorithm_runs_plain_secure_and_resumed(small, tmp_path, monkeypatch):
    monkeypatch.setitem(REGISTRY, ServerMomentum.name, ServerMomentum)
    shards = make_shards(small.X_train, small.y_train, PartitionSpec(sites=3))
    policy = owner_policy(epsilon=None, min_rows=10)
    ask = {"algorithm": "fedavgm", "settings": {"local_iters": 3}, "rounds": 3}
    plain = runs.run(local_sites(shards, plain_policy()), runs.RunRequest(**ask), small.X_test, small.y_test)
    secure = runs.run(local_sites(shards, policy), runs.RunRequest(**ask, secure=True, out=tmp_path / "out"),
                      small.X_test, small.y_test)
    assert secure.history[-1]["secure_aggregation"]["survivors"] == ["site-1", "site-2", "site-3"]
    for key in ("coef", "intercept", "server_velocity"):  # the secure sum is the plain one, to fixed point
        np.testing.assert_allclose(secure.params[key], plain.params[key], atol=1e-6)
    saved = runs.Resume.read(tmp_path / "out")
    assert type(saved.algorithm.inner) is ServerMomentum and set(saved.params) == set(plain.params)
    more = runs.resume(local_sites(shards, policy), saved, small.X_test, small.y_test, rounds=4)
    assert [r["round"] for r in more.history] == [1, 2, 3, 4]


def test_a_subclass_is_not_silently_run_as_dp_fedavg(small, tmp_path, monkeypatch):
    """The DP form replaces the local training and the averaging: an algorithm that changes them must
    declare a private form of its own, else the sites' DP refuses it before anything is charged."""
    from fl_syft.common.errors import ConfigError

    monkeypatch.setitem(REGISTRY, ServerMomentum.name, ServerMomentum)
    shards = make_shards(small.X_train, small.y_train, PartitionSpec(sites=2))
    sites = local_sites(shards, owner_policy(epsilon=1.0, min_rows=10), tmp_path)
    with pytest.raises(ConfigError, match="which fedavgm cannot run under: it has no private form of its own"):
        runs.run(sites, runs.RunRequest(algorithm="fedavgm", rounds=2), small.X_test, small.y_test)
    assert all(s.privacy()["noise_multipliers"].keys() == {"100.0"} for s in sites)  # only the row count
