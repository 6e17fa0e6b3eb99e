"""Secure aggregation against an active data scientist, through five real datasites (threshold 3).

The attacker relays every message itself (``test_secagg_units.Relay``: PySyft-signed calls of the
owner's route and of the approved vetted function, as ``connect.SyftSite`` sends them), gives the
sites different views, and then computes everything it can from what they revealed: its best
unmasking of every set of masked updates, and the differences of those. Site-1's true update is
computed from its shard in this process, as ``expected_round`` does."""

from __future__ import annotations

import json
import secrets

import numpy as np
import pytest
from conftest import vetted_data
from syft_helpers import running_deployment
from test_secagg_units import Relay, split_views

from fl_syft.common import secagg
from fl_syft.common.data import load_mnist
from fl_syft.common.partition import PartitionSpec, make_shards
from fl_syft.owner.policy import owner_policy
from fl_syft.scientist.addresses import ds_password, read_connection
from fl_syft.scientist.algorithms.fedavg import FedAvg, FedAvgSettings
from fl_syft.scientist.connect import connect
from fl_syft.scientist.rounds import SiteRefused
from fl_syft.vetted.local_training import ml_experiment

pytestmark = pytest.mark.syft
NAMES = [f"site-{i}" for i in range(1, 6)]
FEDAVG = FedAvg(FedAvgSettings(local_iters=3, holdout=0.0))  # on the default features (scattering)
CONFIG = FEDAVG.configure({})[1]
FIELDS, WEIGHT = list(FEDAVG.summed.fields), FEDAVG.summed.weight  # as secure FedAvg sums them


@pytest.fixture(scope="module")
def small(small_idx):
    return load_mnist(f"idx:{small_idx}")


@pytest.fixture(scope="module")
def deployment(small_idx, tmp_path_factory):
    yield from running_deployment(f"idx:{small_idx}", tmp_path_factory.mktemp("active"), sites=5,
                                  policy=owner_policy(epsilon=None, min_rows=10))


@pytest.fixture(scope="module")
def truth(small) -> dict[str, np.ndarray]:
    """Each site's true update vector this round (cold start), from its shard."""
    shards = dict(zip(NAMES, make_shards(small.X_train, small.y_train, PartitionSpec(sites=5)), strict=True))
    return {n: secagg.summable(ml_experiment(vetted_data(shards[n], CONFIG["features"]), {}, CONFIG), list(FIELDS),
                               WEIGHT) for n in NAMES}


def relay(deployment) -> Relay:
    conn = deployment.connection_file
    sites = connect(read_connection(conn), ds_password(conn), FedAvg.functions)
    return Relay({s.name: s for s in sites}, 3, session=secrets.token_hex(16), function="ml_experiment",
                 config=CONFIG, fields=FIELDS, weight=WEIGHT)


def honest_round(attacker: Relay) -> None:
    attacker.keys()
    for name in NAMES:
        attacker.mask(name, NAMES)
    for name in NAMES:
        attacker.confirm(name, NAMES)
    for name in NAMES:
        attacker.unmask(name, NAMES)


def assert_exact_sum(attacker: Relay, names: list[str], truth: dict) -> None:
    total = attacker.unmasked(names, *attacker.secrets())
    assert np.abs(total - np.sum([truth[n] for n in names], axis=0)).max() < 1e-4


def test_the_honest_protocol_gives_the_exact_sum(deployment, truth):
    attacker = relay(deployment)
    honest_round(attacker)
    assert attacker.refused == {} and sorted(attacker.revealed) == NAMES
    assert attacker.unmaskable(truth) == [tuple(NAMES)]  # the sum of all five, and nothing else
    assert_exact_sum(attacker, NAMES, truth)


def test_split_survivor_views_and_a_short_mask_set_reveal_nothing_of_site_1(deployment, truth):
    attacker = relay(deployment)
    split_views(attacker, NAMES)
    assert attacker.revealed == {} and sorted(attacker.refused) == NAMES  # every site refused to unmask
    for name, why in attacker.refused.items():
        assert f"{name} refused secure aggregation: round 1: " in why[-1] and "did not sign the survivors" in why[-1]
        assert "\n" not in why[-1]
    assert attacker.unmaskable(truth) == []
    assert attacker.best_correlation("site-1", truth["site-1"]) < 0.85


def test_site_1_masking_with_fewer_peers_then_declared_dropped_stays_hidden(deployment, truth):
    attacker = relay(deployment)
    attacker.keys()
    attacker.mask("site-1", NAMES[:3])  # told that site-4 and site-5 never shared their keys
    for name in NAMES[1:]:
        attacker.mask(name, NAMES)
    survivors = NAMES[1:]
    for name in survivors:
        attacker.confirm(name, survivors)
    for name in survivors:
        attacker.unmask(name, survivors)
    assert sorted(attacker.revealed) == survivors
    assert all(set(answer["site-1"]) == {"index", "key"} for answer in attacker.revealed.values())
    assert attacker.unmaskable(truth) == [tuple(survivors)]  # the four others' sum only
    assert_exact_sum(attacker, survivors, truth)
    assert attacker.best_correlation("site-1", truth["site-1"]) < 0.85


def test_sites_asked_to_contribute_different_things_never_unmask(deployment, truth):
    attacker = relay(deployment)
    attacker.keys()
    for name in NAMES:  # site-2 is asked for a vanishing update (strongest regularisation)
        attacker.mask(name, NAMES, config={**CONFIG, "C": 1e-4} if name == "site-2" else None)
    assert sorted(attacker.masked) == NAMES
    for name in NAMES:
        attacker.confirm(name, NAMES)
    for name in NAMES:
        attacker.unmask(name, NAMES)
    assert attacker.revealed == {}
    assert all("did not sign the survivors, mask set, model and contribution" in why[-1]
               for why in attacker.refused.values())
    assert attacker.best_correlation("site-1", truth["site-1"]) < 0.85


MALFORMED = [
    ({"advertise": {"session": "ab", "rnd": "x"}}, "rnd must be an int"),
    ({"advertise": {"session": "ab", "rnd": 1.5}}, "rnd must be an int"),
    ({"advertise": {"session": "ab", "rnd": True}}, "rnd must be an int"),
    ({"advertise": {"session": ["ab", "cd"], "rnd": 1}}, "session must be 1 to 64 lowercase hex"),
    ({"advertise": {"session": "ab"}}, "step advertise takes exactly session, rnd"),
    ({"advertise": {"session": "ab", "rnd": 1, "more": 2}}, "step advertise takes exactly session, rnd"),
    ({"unveil": {"session": "ab", "rnd": 1}}, "unknown step 'unveil'"),
    ({"share_keys": {"session": "ab", "rnd": 1, "adverts": {"site-1": "keys"}}}, "must be a dict of exactly"),
    ({"confirm": {"session": "ab", "rnd": 1, "survivors": ["site-1", "site-1", "site-2"]}}, "names a site twice"),
    ({"unmask": {"session": "ab", "rnd": 1, "survivors": ["nobody"], "signatures": {}}}, "'nobody' is not a peer"),
    ("advertise", "steps must be a dict of exactly one step"),
]


def test_malformed_endpoint_arguments_are_one_line_refusals_and_the_round_completes(deployment, truth):
    attacker = relay(deployment)
    site = attacker.sites["site-1"]
    used = deployment.specs["site-1"].dir / "secagg.jsonl"
    before = used.read_text() if used.exists() else ""
    for steps, why in MALFORMED:
        with pytest.raises(SiteRefused, match=why) as refused:
            site.secagg(steps)
        message = str(refused.value)
        assert message.startswith("site-1 refused secure aggregation: ") and "\n" not in message and len(message) < 300
    assert (used.read_text() if used.exists() else "") == before  # nothing stored, no round burned
    audit = [json.loads(line) for line in (deployment.specs["site-1"].dir / "audit.jsonl").read_text().splitlines()]
    refusals = [e for e in audit if e.get("function") == "secure aggregation" and e.get("outcome") == "refused"]
    assert len(refusals) >= len(MALFORMED) and all(e["requester"] == "scientist@fl-syft.example.com"
                                                    for e in refusals)  # the owner sees them (status, site.log)
    # A record an older version stored (a list as session) must not stop the site from restarting.
    with used.open("a") as f:
        f.write(json.dumps([["ab"], 1, "keys"]) + "\n")
    deployment.restart("site-1")
    assert "is malformed" in (deployment.specs["site-1"].dir / "site.log").read_text()
    attacker = relay(deployment)  # the site kept serving: an honest round completes
    honest_round(attacker)
    assert attacker.refused == {} and attacker.unmaskable(truth) == [tuple(NAMES)]
    assert_exact_sum(attacker, NAMES, truth)
