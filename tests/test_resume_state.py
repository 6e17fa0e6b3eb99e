"""A run stopped after round k continues from exactly what its checkpoint holds.

Under DP the model's momentum, the round and the privacy plan (its noise) are part of that
state; with secure aggregation the momentum is the scientist's own. Sites are in-process,
through the owners' guards and ledgers (``fl_syft.simulate``); the resume path is the one
``fl-syft run --resume`` takes (``scientist.runs.resume``).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import plain_policy

from fl_syft.cli import main
from fl_syft.common.accounting import epsilon
from fl_syft.common.data import load_mnist
from fl_syft.common.partition import PartitionSpec, make_shards
from fl_syft.owner.policy import owner_policy
from fl_syft.scientist import runs
from fl_syft.scientist.algorithms.private import Private
from fl_syft.scientist.outputs import read_checkpoint
from fl_syft.scientist.rounds import Resilience, SitesFailed
from fl_syft.simulate import local_sites


@pytest.fixture(scope="module")
def small(small_idx):
    return load_mnist(f"idx:{small_idx}")


def stop_after(sites, rounds: int):
    """The scientist stops after round ``rounds`` (as if killed): from then on every call fails
    before it reaches a site's guard, so nothing is charged for the round it never ran. Returns
    what undoes that."""
    real = {site.name: site.call for site in sites}
    calls = {site.name: 0 for site in sites}

    def stopping(site):
        def call(*args):
            calls[site.name] += 1
            if calls[site.name] > rounds:
                raise ConnectionError("the scientist's process is gone")
            return real[site.name](*args)
        return call

    for site in sites:
        site.call = stopping(site)
    return lambda: [setattr(site, "call", real[site.name]) for site in sites]


def record_first_aggregate(monkeypatch) -> dict:
    """What the first round after the resume starts from: the params ``Private.aggregate`` is given."""
    seen: dict = {}
    real = Private.aggregate

    def aggregate(self, params, sums):
        seen.setdefault("params", {k: np.array(v) for k, v in params.items()})
        seen.setdefault("configured", self.configure(params))
        return real(self, params, sums)

    monkeypatch.setattr(Private, "aggregate", aggregate)
    return seen


@pytest.mark.parametrize("secure", [False, True], ids=["dp", "dp+secure"])
def test_a_private_run_stopped_after_round_k_resumes_from_its_checkpoint(small, tmp_path, monkeypatch, secure):
    shards = make_shards(small.X_train, small.y_train, PartitionSpec(sites=2))
    sites = local_sites(shards, owner_policy(epsilon=2.0, min_rows=10), tmp_path / "ledgers")
    settings = {} if secure else {"local_steps": 2}
    request = runs.RunRequest(settings=settings, rounds=5, epsilon=1.0, secure=secure, out=tmp_path / "out",
                              config={"command": "test"}, resilience=Resilience(retries=0))
    back = stop_after(sites, 2)
    with pytest.raises(SitesFailed):
        runs.run(sites, request, small.X_test, small.y_test)
    back()

    config, history, params = read_checkpoint(tmp_path / "out")
    assert [r["round"] for r in history] == [1, 2]
    assert set(params) == {"coef", "intercept", "velocity_coef", "velocity_intercept"}  # the momentum too
    assert np.abs(params["velocity_coef"]).max() > 0
    plan = config["privacy"]
    assert config["rounds"] == plan["rounds"] == 5 and ("secure_aggregation" in config) is secure

    seen = record_first_aggregate(monkeypatch)
    resumed = runs.resume(sites, runs.Resume.read(tmp_path / "out"), small.X_test, small.y_test)
    for key, value in params.items():  # the first resumed round starts from exactly the saved arrays
        np.testing.assert_array_equal(seen["params"][key], value)
    sent, site_config = seen["configured"]
    assert site_config["noise_multiplier"] == plan["noise_multiplier"]  # the plan's noise, not a new plan
    assert set(sent) == ({"coef", "intercept"} if secure else set(params))  # secure: the momentum stays here
    assert [r["round"] for r in resumed.history] == [1, 2, 3, 4, 5]
    steps = 5 * (1 if secure else 2)
    for site in sites:  # every site's ledger: its row count, then exactly the planned steps
        status = site.privacy()
        count = [float(s) for s, n in plan["sites"][site.name]["released"].items() for _ in range(n)]
        planned = epsilon([*count, *[plan["noise_multiplier"]] * steps], status["policy"]["delta"])
        assert status["epsilon_spent"] == pytest.approx(planned, rel=1e-9)
        assert resumed.history[-1]["epsilon_spent"][site.name] == pytest.approx(planned, rel=1e-9)


@pytest.mark.parametrize("features", [None, "pixels"], ids=["default-features", "pixels"])
def test_a_plain_run_stopped_after_round_k_resumes_to_the_uninterrupted_model(small, tmp_path, features):
    shards = make_shards(small.X_train, small.y_train, PartitionSpec(sites=2))
    on = {"features": features} if features else {}
    request = runs.RunRequest(settings={"local_iters": 3}, rounds=4, config={"command": "test"}, **on)
    reference = runs.run(local_sites(shards, plain_policy()), request, small.X_test, small.y_test)
    sites = local_sites(shards, plain_policy())
    stop_after(sites, 1)
    out = tmp_path / "out"
    with pytest.raises(SitesFailed):
        runs.run(sites, runs.RunRequest(settings={"local_iters": 3}, rounds=4, out=out, resilience=Resilience(0), **on),
                 small.X_test, small.y_test)
    saved = runs.Resume.read(out)
    assert saved.algorithm.features.name == (features or "scattering")  # the run's map, from its checkpoint
    resumed = runs.resume(local_sites(shards, plain_policy()), saved, small.X_test, small.y_test)
    assert resumed.params["coef"].shape == (10, saved.algorithm.features.width)
    for key in ("coef", "intercept"):
        np.testing.assert_array_equal(resumed.params[key], reference.params[key])


def test_a_checkpoint_of_an_older_fl_syft_is_refused_in_one_line(small, tmp_path, capsys):
    from fl_syft.scientist.outputs import write_checkpoint

    old = {"command": "run", "algorithm": "fedavg", "training": {"rounds": 5, "local_iters": 20}}  # no mode, no rounds
    write_checkpoint(tmp_path / "checkpoint.npz", old, [], {"coef": np.zeros((10, 784)), "intercept": np.zeros(10)})
    assert main(["run", "--resume", str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "written by an older fl-syft" in err[0] and "start a new run" in err[0], err


def test_a_private_resume_may_change_its_rounds_and_still_spends_only_what_was_planned(small, tmp_path):
    shards = make_shards(small.X_train, small.y_train, PartitionSpec(sites=2))
    sites = local_sites(shards, owner_policy(epsilon=1.0, min_rows=10), tmp_path / "ledgers")
    undo = stop_after(sites, 1)
    with pytest.raises(SitesFailed):
        runs.run(sites, runs.RunRequest(rounds=3, out=tmp_path / "out", resilience=Resilience(0), epsilon=0.5),
                 small.X_test, small.y_test)
    undo()
    saved = runs.Resume.read(tmp_path / "out")
    target = saved.config["privacy"]
    after = {site: epsilon([*(float(s) for s, n in info["released"].items() for _ in range(n)),
                            *[target["noise_multiplier"]] * target["noisy_steps_per_site"]], info["policy"]["delta"])
             for site, info in target["sites"].items()}
    resumed = runs.resume(sites, saved, small.X_test, small.y_test, rounds=9)  # as fl-syft run --resume DIR --rounds 9
    assert [r["round"] for r in resumed.history] == list(range(1, 10))
    plan = resumed.config["privacy"]
    assert plan["rounds"] == 9 and plan["first_round"] == 2
    # The precision of the 2 rounds not run, spread over 8: twice the noise per step.
    assert plan["noise_multiplier"] == pytest.approx(2 * target["noise_multiplier"], rel=1e-6)
    for site in sites:  # 8 more rounds in what 2 left: each site ends where the first plan would have left it
        assert site.guard.ledger.spent == pytest.approx(after[site.name], rel=1e-6)
