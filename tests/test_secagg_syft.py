"""Secure aggregation through five real datasites (and, with DP, two): the scientist gets the sum."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import vetted_data, width
from syft_helpers import run_notebook, running_deployment

from fl_syft.common import secagg
from fl_syft.common.data import load_mnist
from fl_syft.common.features import MAPS
from fl_syft.common.partition import PartitionSpec, make_shards
from fl_syft.owner.policy import owner_policy
from fl_syft.scientist.addresses import ds_password, read_connection
from fl_syft.scientist.algorithms.fedavg import FedAvg, FedAvgSettings
from fl_syft.scientist.connect import connect
from fl_syft.scientist.evaluate import features_of_test_set as features_of
from fl_syft.scientist.rounds import SiteRefused, SitesFailed
from fl_syft.scientist.runs import RunRequest, run
from fl_syft.vetted.local_training import ml_experiment

pytestmark = pytest.mark.syft
SETTINGS = {"local_iters": 3, "holdout": 0.0}
REQUEST = RunRequest(settings=SETTINGS, rounds=2, secure=True, config={"command": "test"})


@pytest.fixture(scope="module")
def small(small_idx):
    return load_mnist(f"idx:{small_idx}")


@pytest.fixture(scope="module")
def deployment(small_idx, tmp_path_factory):
    yield from running_deployment(f"idx:{small_idx}", tmp_path_factory.mktemp("secagg"), sites=5,
                                  policy=owner_policy(epsilon=None, min_rows=10))


def sites_of(deployment):
    conn = deployment.connection_file
    return connect(read_connection(conn), ds_password(conn), FedAvg.functions)


def expected_round(small, names: list[str], params: dict) -> dict:
    """What plain FedAvg over these sites' shards gives from ``params`` (computed from the rows)."""
    shards = dict(zip([f"site-{i}" for i in range(1, 6)],
                      make_shards(small.X_train, small.y_train, PartitionSpec(sites=5)), strict=True))
    algorithm = FedAvg(FedAvgSettings(**SETTINGS), features=REQUEST.features)  # the runs' map: the default
    config = algorithm.configure(params)[1]
    return algorithm.aggregate(params, algorithm.summed.of([ml_experiment(vetted_data(shards[n], config["features"]),
                                                                          params, config) for n in names]))


def test_the_secure_sum_is_the_plain_sum_and_masks_hide_each_update(deployment, small, capsys):
    sites = sites_of(deployment)
    seen = []
    real = sites[0].call
    sites[0].call = lambda *a: seen.append(real(*a)) or seen[-1]  # what the scientist receives from site-1
    outcome = run(sites, REQUEST, small.X_test, small.y_test)
    record = outcome.history[0]
    assert record["secure_aggregation"]["survivors"] == [f"site-{i}" for i in range(1, 6)]
    assert set(record["secure_aggregation"]["seconds"]) == {"keys", "masked_update", "masking", "unmask", "round"}
    assert "train_accuracy" not in json.dumps(record["sites"])  # no site's own result reaches the scientist
    assert {"masked", "next_keys", "mask_seconds"} <= set(seen[0])  # and nothing of the result
    assert not {"coef", "intercept", "train_accuracy"} & set(seen[0])
    plain = expected_round(small, [f"site-{i}" for i in range(1, 6)], {})
    round_1 = outcome.history[0]["global_test_accuracy"]
    from fl_syft.scientist.evaluate import score

    assert plain["coef"].shape == (10, width(REQUEST.features))
    X_test = features_of(MAPS[REQUEST.features], small.X_test)
    assert score(plain, X_test, small.y_test)["accuracy"] == pytest.approx(round_1, abs=1e-12)
    y = np.asarray(seen[0]["masked"], np.uint64)
    counts = np.bincount((y >> np.uint64(56)).astype(int), minlength=256)
    assert ((counts - len(y) / 256) ** 2 / (len(y) / 256)).sum() < 330  # uniform top bytes


def test_a_site_killed_between_keys_and_update_is_recovered(deployment, small):
    sites = sites_of(deployment)
    doomed = sites[4]
    real = doomed.call

    def die_then_call(*args):
        deployment.procs["site-5"].kill()
        deployment.procs["site-5"].wait()
        return real(*args)

    doomed.call = die_then_call
    try:
        outcome = run(sites, RunRequest(settings=SETTINGS, rounds=1, secure=True), small.X_test, small.y_test)
    finally:
        deployment.restart("site-5")
    record = outcome.history[0]
    assert record["secure_aggregation"]["survivors"] == ["site-1", "site-2", "site-3", "site-4"]
    assert "site-5" in record["dropped"]
    expected = expected_round(small, ["site-1", "site-2", "site-3", "site-4"], {})
    assert np.abs(outcome.params["coef"] - expected["coef"]).max() < 1e-6
    assert np.abs(outcome.params["intercept"] - expected["intercept"]).max() < 1e-6


def test_a_substituted_key_is_detected(deployment):
    """A scientist who relays its own key in place of site-3's is caught by site-3's signature."""
    sites = sites_of(deployment)
    adverts = {s.name: s.secagg({"advertise": {"session": "f0f0", "rnd": 1}})["advertise"] for s in sites}
    _, mine = secagg.keypair()
    adverts["site-3"] = {**adverts["site-3"], "s_pk": mine}
    with pytest.raises(SiteRefused, match="site-1 refused secure aggregation: round 1: the keys given for site-3 "
                                          "are not signed by"):
        sites[0].secagg({"share_keys": {"session": "f0f0", "rnd": 1, "adverts": adverts}})


def test_a_request_signed_by_no_account_of_the_site_is_refused(deployment):
    import time

    import requests
    import syft as sy
    from syft.client.api import SyftAPICall
    from syft.server.credentials import SyftSigningKey

    site = sites_of(deployment)[0]
    steps = {"advertise": {"session": "5a5a", "rnd": 1}}
    call = SyftAPICall(server_uid=site.client.id, path="fl_syft.secagg", args=[],
                       kwargs={"steps": steps, "sent": time.time()})
    body = sy.serialize(call.sign(SyftSigningKey.generate()), to_bytes=True)  # a valid signature, no account
    reply = requests.post(f"{site.address.url}:{site.address.port}/api/v2/fl-syft/secagg", data=body, timeout=60)
    assert sy.deserialize(reply.content, from_bytes=True) == {"error": "unknown account or malformed request"}
    assert "advertise" in site.secagg(steps)  # the same request from the site's scientist is answered


def test_different_models_to_different_sites_leave_nothing_to_unmask(deployment, small):
    sites = sites_of(deployment)
    real = sites[0].call
    sites[0].call = lambda function, params, config: real(
        function, {"coef": np.full((10, width(REQUEST.features)), 0.01), "intercept": np.zeros(10)},
        config)  # site-1 gets another model (a valid one)
    with pytest.raises(SitesFailed, match="only 0 sites answered the unmasking"):
        run(sites, REQUEST, small.X_test, small.y_test)


def test_distributed_noise_under_dp_charges_the_central_noise(small_idx, small, tmp_path):
    fresh = running_deployment(f"idx:{small_idx}", tmp_path / "state", sites=2, policy=owner_policy(epsilon=2.0))
    deployment = next(fresh)
    try:
        sites = sites_of(deployment)
        outcome = run(sites, RunRequest(rounds=3, epsilon=1.0, secure=True, out=tmp_path / "out",
                                        config={"command": "test"}), small.X_test, small.y_test)
        record = outcome.history[-1]
        assert record["secure_aggregation"]["threshold"] == 2
        spent = [s.privacy()["epsilon_spent"] for s in sites]
        assert max(spent) <= 2.0 and record["epsilon_spent"]["site-1"] == pytest.approx(spent[0], rel=1e-9)
        report = (tmp_path / "out" / "report.md").read_text()
        assert "the scientist saw only the sum of at least 2 sites' updates" in report
        assert "masking at a site" in report and "| site-1 | 2, 1e-05 |" in report
        # The notebook, as a user runs it with secure aggregation: it spends its epsilon (default 1) on the
        # federated run and, with its default baselines, again on each site alone; both charged, within the budget.
        nb = run_notebook({"FL_SYFT_CONNECTION": str(deployment.connection_file), "FL_SYFT_ROUNDS": "3",
                           "FL_SYFT_DATA": f"idx:{small_idx}", "FL_SYFT_SECURE": "1"})
        printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
        assert "secure aggregation: each round only the sum of the surviving sites was unmasked (threshold 2" \
            in printed
        for site, before in zip(sites, spent, strict=True):
            status = site.privacy()
            assert before < status["epsilon_spent"] <= 2.0
            assert f"{site.name}: epsilon spent {status['epsilon_spent']:.3f} of 2 (delta 1e-05); left " \
                   f"{status['epsilon_remaining']:.3f}" in printed
            assert re.search(rf"{site.name} alone at epsilon 1: \d+\.\d\d%; federated: \d+\.\d\d%", printed), printed
    finally:
        fresh.close()
