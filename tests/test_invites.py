"""Cards and invites (``common.cards``), the federation's counts (``OwnerPolicy.for_federation``)
and when a site serves TLS: the pure parts of running a federation across machines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fl_syft.common.cards import Card, Invite, card_from, read_cards, read_invite
from fl_syft.common.errors import ConfigError
from fl_syft.owner.launch import LaunchOptions
from fl_syft.owner.network import check_tls, serves_tls
from fl_syft.owner.policy import owner_policy, policy_from_flags
from fl_syft.owner.serve import ServeOptions
from fl_syft.owner.tls import check_pair, fingerprint_of, site_certificate

KEY_A, KEY_B, KEY_C = "aa" * 32, "bb" * 32, "cc" * 32


def card(name: str, key: str, fingerprint: str = "12" * 32) -> Card:
    return Card(name, f"https://{name}.example.org:8443", fingerprint, key)


def write(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_an_invite_round_trips_and_a_card_is_not_an_invite(tmp_path):
    invite = Invite(card("north", KEY_A), "ds@example.org", "pw-1")
    assert read_invite(write(tmp_path / "i.json", invite.to_dict())) == invite
    with pytest.raises(ConfigError, match="is a site card, not an invite"):
        read_invite(write(tmp_path / "c.json", invite.card.to_dict()))


@pytest.mark.parametrize("change, message", [
    ({"fingerprint": "zz"}, "is not a SHA-256 fingerprint"),
    ({"url": "https://north.example.org"}, "must look like https://HOST:PORT"),
    ({"url": "http://north.example.org:80"}, "a certificate fingerprint for the plain-HTTP URL"),
    ({"verify_key": "00"}, "verify_key must be 64 hex digits"),
    ({"kind": "something"}, "is not an fl-syft site card or invite"),
])
def test_a_damaged_invite_is_refused_in_one_line(tmp_path, change, message):
    doc = {**Invite(card("north", KEY_A), "ds@example.org", "pw").to_dict(), **change}
    with pytest.raises(ConfigError, match=message):
        read_invite(write(tmp_path / "i.json", doc))


def test_fingerprints_are_read_in_the_forms_people_paste_them():
    colons = ":".join(["AB"] * 32)
    doc = {**card("north", KEY_A).to_dict(), "fingerprint": f"sha256:{colons}"}
    assert card_from(doc, "x").fingerprint == "ab" * 32


def test_peers_are_cards_from_a_file_a_list_or_a_folder(tmp_path):
    folder = tmp_path / "cards"
    folder.mkdir()
    write(folder / "south.json", card("south", KEY_B).to_dict())
    write(folder / "east.json", card("east", KEY_C).to_dict())
    assert {c.name for c in read_cards(folder)} == {"south", "east"}
    listed = write(tmp_path / "list.json", [card("south", KEY_B).to_dict(), card("east", KEY_C).to_dict()])
    assert set(read_cards(listed)) == set(read_cards(folder))
    write(folder / "stale.json", card("east", KEY_A).to_dict())
    with pytest.raises(ConfigError, match="two different cards for east"):
        read_cards(folder)


def test_the_federation_counts_this_site_and_its_peers_once(tmp_path):
    """The other owner's card alone is a federation of two: a majority threshold of 2, not a
    refusal ("more than half of the 2 peers" for a file naming one)."""
    other = write(tmp_path / "south.json", card("south", KEY_B).to_dict())
    policy = policy_from_flags(peers_file=other)
    site = policy.for_federation({"north": KEY_A}).privacy
    assert site.peers == {"north": KEY_A, "south": KEY_B} and site.threshold == 2
    assert "secure aggregation among 2 sites (this one among them), threshold 2" in site.describe()
    with pytest.raises(ConfigError, match="more than half of the federation's 2 sites"):
        policy_from_flags(peers_file=other, secagg_threshold=1).for_federation({"north": KEY_A})
    # Its own card among the peers' (a folder of everyone's): its own key wins, counted once.
    both = write(tmp_path / "both.json", [card("north", KEY_C).to_dict(), card("south", KEY_B).to_dict()])
    assert policy_from_flags(peers_file=both).for_federation({"north": KEY_A}).privacy.peers["north"] == KEY_A


def test_a_site_without_peers_has_no_secure_aggregation():
    site = owner_policy().for_federation({"north": KEY_A}).privacy
    assert site.peers == {} and site.describe().endswith("; no secure aggregation (no peers)")
    with pytest.raises(ConfigError, match="needs the federation's peers"):
        ServeOptions(data="x.npz", name="north", policy=owner_policy(require_secure_aggregation=True)).check()


def test_serve_speaks_tls_unless_told_otherwise_the_launcher_off_loopback():
    assert serves_tls(ServeOptions(data="x.npz", name="a"))
    assert not serves_tls(ServeOptions(data="x.npz", name="a", insecure_http=True))
    assert not serves_tls(LaunchOptions())  # loopback: only this machine sees the traffic
    assert serves_tls(LaunchOptions(host="0.0.0.0"))
    assert not serves_tls(LaunchOptions(host="0.0.0.0", insecure_http=True))
    with pytest.raises(ConfigError, match="go together"):
        check_tls(ServeOptions(data="x.npz", name="a", tls_cert=Path("c.pem")))
    with pytest.raises(ConfigError, match="serves no TLS"):
        check_tls(ServeOptions(data="x.npz", name="a", tls_cert=Path("c"), tls_key=Path("k"), insecure_http=True))


def test_a_generated_certificate_is_kept_and_an_owners_own_is_checked(tmp_path):
    made = site_certificate(tmp_path / "site", "north", ["10.0.0.5", "north.example.org"], fresh=True)
    assert made.fingerprint == fingerprint_of(made.cert) and made.key.stat().st_mode & 0o777 == 0o600
    kept = site_certificate(tmp_path / "site", "north", ["10.0.0.5"], fresh=False)
    assert kept.fingerprint == made.fingerprint  # --keep: the invites stay valid
    assert site_certificate(tmp_path / "site", "north", ["10.0.0.5"], fresh=True).fingerprint != made.fingerprint
    other = site_certificate(tmp_path / "other", "south", ["10.0.0.6"], fresh=True)
    with pytest.raises(ConfigError, match="are not a PEM certificate and its unencrypted private key"):
        check_pair(made.cert, other.key)
    own = site_certificate(tmp_path / "x", "north", [], fresh=True, own=(other.cert, other.key))
    assert own.fingerprint == other.fingerprint


def test_a_kept_start_says_when_its_flags_change_the_policy(tmp_path, caplog):
    """``--keep`` keeps the state, not the flags: a restart without ``--peers`` or with another
    budget says what changed (the dead-site message says to give the same flags again)."""
    from fl_syft.owner.datasite import SiteSpec
    from fl_syft.owner.launch import _note_policy_change

    before = SiteSpec("north", "127.0.0.1", 1, str(tmp_path), "a@x", "p", "s@x", "q",
                      policy=owner_policy(epsilon=3.0).for_federation({"north": KEY_A, "south": KEY_B}))
    before.save(tmp_path / "spec.json")
    _note_policy_change(tmp_path / "spec.json", before)
    assert caplog.records == []
    _note_policy_change(tmp_path / "spec.json", SiteSpec(**{**before.__dict__, "policy": owner_policy()}))
    line = caplog.records[-1].getMessage()
    assert line.startswith("north: its policy is this start's flags, not the last start's: was record-level ")
    assert "epsilon 3" in line and "secure aggregation among 2 sites" in line and "no secure aggregation" in line


def test_a_site_that_requires_secure_aggregation_says_so_when_it_turns_it_on(caplog):
    from types import SimpleNamespace

    from fl_syft.scientist.algorithms.fedavg import FedAvg, FedAvgSettings
    from fl_syft.scientist.algorithms.lbfgs import Lbfgs, LbfgsSettings
    from fl_syft.scientist.algorithms.secure import Secure

    caplog.set_level("INFO", logger="fl_syft")
    peers = {"north": KEY_A, "south": KEY_B}
    statuses = [{"site": "north", "policy": {"require_secure_aggregation": True, "peers": peers, "threshold": 2}},
                {"site": "south", "policy": {"peers": peers, "threshold": 2}}]
    assert Secure.plan(FedAvg(FedAvgSettings()), statuses, SimpleNamespace(secure=False), {}) == {"threshold": 2}
    assert caplog.records[-1].getMessage() == ("secure aggregation although not asked for: north requires it (its "
                                               "owner's --require-secure-aggregation)")
    with pytest.raises(ConfigError) as refused:
        Secure.plan(Lbfgs(LbfgsSettings()), statuses, SimpleNamespace(secure=False), {})
    assert refused.value.for_cli() == ("lbfgs has no secure-aggregation form (fedavg has): north requires it (its "
                                       "owner's --require-secure-aggregation): use --algorithm fedavg")


def test_an_invite_cannot_take_over_another_sites_address(tmp_path):
    """A hostile co-owner's invite naming site A's address with its own certificate (its pin would
    replace A's): refused before any login, whichever order the invites come in."""
    from fl_syft.scientist.addresses import invite_addresses

    real = Invite(card("north", KEY_A, "12" * 32), "ds@x", "pw-north")
    hostile = Invite(Card("south", real.card.url, "34" * 32, KEY_B), "ds@x", "pw-south")
    files = [write(tmp_path / "a.json", real.to_dict()), write(tmp_path / "b.json", hostile.to_dict())]
    for order in (files, files[::-1]):
        with pytest.raises(ConfigError, match="both invite to https://north.example.org:8443: give each site once"):
            invite_addresses(order)
