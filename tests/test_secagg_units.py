"""Secure aggregation, the protocol in one process (sites are the owners' real SecAggSite objects).

``Relay`` plays a malicious data scientist that relays every message itself (reorders, drops,
gives sites different views) and then computes everything it can from what the sites revealed;
tests/test_secagg_active.py runs the same attacker against real datasites."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from nacl.signing import SigningKey

from fl_syft.common import secagg
from fl_syft.common.errors import FlSyftError
from fl_syft.owner.secagg import SecAggSite
from fl_syft.owner.secagg_args import SecAggRefused, parse_secure
from fl_syft.scientist.rounds import SitesFailed
from fl_syft.scientist.secagg import SecureSum

LENGTH = 500


def asked(function: str, config: dict, secure: dict) -> str:
    """A contribution digest, as the guard makes one (what a site was asked to add)."""
    rest = sorted((k, repr(v)) for k, v in config.items() if k != "secagg")
    return hashlib.sha256(json.dumps([function, rest, secure["fields"], secure["weight"]]).encode()).hexdigest()


class Site:
    """A site of the protocol: the owner's SecAggSite, and an update it masks when called."""

    def __init__(self, name: str, key: SigningKey, peers: dict, threshold: int, folder, update: np.ndarray):
        self.name, self.update, self.fail_on_call, self.corrupt, self.fail_confirm = name, update, False, None, False
        self.owner = SecAggSite(name, lambda m: key.sign(m).signature, peers, threshold, folder / f"{name}.jsonl")

    def secagg(self, steps: dict) -> dict:
        if self.fail_confirm and "confirm" in steps:
            raise ConnectionError(f"{self.name} is down")
        return self.owner.steps(steps)

    def call(self, function: str, params: dict, config: dict) -> dict:
        if self.fail_on_call:
            raise ConnectionError(f"{self.name} is down")
        s = parse_secure(config["secagg"])
        masked = self.owner.mask(s["session"], s["rnd"], s["peers"], s["shares"], secagg.model_hash(params),
                                 self.update, contribution=asked(function, config, s))
        answer = {**masked, "next_keys": self.owner.advertise(s["session"], s["rnd"] + 1), "mask_seconds": 0.01}
        return answer if self.corrupt is None else {**answer, **self.corrupt}


def federation(tmp_path, n: int = 5, threshold: int | None = None) -> list[Site]:
    keys = {f"site-{i}": SigningKey.generate() for i in range(1, n + 1)}
    peers = {name: k.verify_key.encode().hex() for name, k in keys.items()}
    rng = np.random.default_rng(0)
    return [Site(name, key, peers, threshold or n // 2 + 1, tmp_path, rng.normal(0, 100, LENGTH))
            for name, key in keys.items()]


def secure_round(sites, rnd: int = 1, params=None, session: SecureSum | None = None, pool=None):
    pool = pool or ThreadPoolExecutor(len(sites))
    session = session or SecureSum(sites, sites[0].owner.threshold, pool)
    return session.round(rnd, "fn", params or {"coef": np.zeros(3)}, {}, ["coef"], None), session


# --- a malicious scientist that relays every message itself ----------------------------------------


class Relay:
    """One round as an active attacker runs it: each step is sent to whichever sites it likes, with
    whatever view it likes; refusals are kept (``refused``), revealed shares too (``revealed``)."""

    def __init__(self, sites: dict, threshold: int, session: str = "ab" * 8, rnd: int = 1, params=None,
                 function: str = "fn", config: dict | None = None, fields=("coef",), weight=None):
        self.sites, self.threshold, self.session, self.rnd = sites, threshold, session, rnd
        self.params = {} if params is None else params
        self.function, self.config, self.fields, self.weight = function, config or {}, list(fields), weight
        self.refused: dict[str, list[str]] = {}
        self.revealed: dict[str, dict] = {}  # site -> its unmask answer
        self.masked: dict[str, np.ndarray] = {}
        self.mask_sets: dict[str, list[str]] = {}
        self.signatures: dict[str, bytes] = {}

    def _ask(self, name: str, step: str, **kwargs):
        try:
            return self.sites[name].secagg({step: {"session": self.session, "rnd": self.rnd, **kwargs}})[step]
        except (FlSyftError, ConnectionError) as e:
            self.refused.setdefault(name, []).append(str(e))
            return None

    def keys(self) -> None:
        self.adverts = {n: self._ask(n, "advertise") for n in self.sites}
        self.shares = {n: self._ask(n, "share_keys", adverts=self.adverts) for n in self.sites}

    def mask(self, name: str, peers: list[str], config: dict | None = None) -> None:
        inbox = {frm: self.shares[frm][name] for frm in peers if frm != name}
        secure = {"session": self.session, "rnd": self.rnd, "peers": sorted(peers), "shares": inbox,
                  "fields": self.fields, "weight": self.weight}
        try:
            answer = self.sites[name].call(self.function, self.params,
                                           {**(self.config if config is None else config), "secagg": secure})
        except FlSyftError as e:
            self.refused.setdefault(name, []).append(str(e))
            return
        self.masked[name], self.mask_sets[name] = np.asarray(answer["masked"], np.uint64), sorted(peers)

    def honest_until_unmask(self, names: list[str], survivors: list[str]) -> None:
        """Keys, every site in ``names`` masking with all of them, then ``survivors`` confirming themselves."""
        self.keys()
        for name in names:
            self.mask(name, names)
        for name in survivors:
            self.confirm(name, survivors)

    def confirm(self, name: str, survivors: list[str]) -> None:
        signature = self._ask(name, "confirm", survivors=sorted(survivors))
        if signature is not None:
            self.signatures[name] = signature

    def unmask(self, name: str, survivors: list[str]) -> None:
        """Ask ``name`` to unmask for ``survivors``, with every signature the attacker holds for them."""
        signatures = {n: self.signatures[n] for n in survivors if n in self.signatures}
        answer = self._ask(name, "unmask", survivors=sorted(survivors), signatures=signatures)
        if answer is not None:
            self.revealed[name] = answer

    def secrets(self, extra_seeds: dict | None = None) -> tuple[dict, dict]:
        """Every seed and mask key the revealed shares rebuild (t of one kind); a mask key is checked
        against the site's advertised public key. ``extra_seeds``: an oracle, for the control test."""
        seeds, keys = dict(extra_seeds or {}), {}
        for name in self.sites:
            for kind, out in (("seed", seeds), ("key", keys)):
                parts = [(a[name]["index"], bytes.fromhex(a[name][kind])) for a in self.revealed.values()
                         if kind in a.get(name, {})]
                if len(parts) >= self.threshold:
                    secret = secagg.combine(parts)
                    if kind == "seed" or _public(secret) == self.adverts[name]["s_pk"]:
                        out[name] = secret
        return seeds, keys

    def unmasked(self, subset, seeds: dict, keys: dict) -> np.ndarray:
        """The attacker's best unmasking of the sum of ``subset``'s masked updates: every self-mask and
        pairwise mask it can rebuild removed (the rest stay)."""
        length = len(next(iter(self.masked.values())))
        model = secagg.model_hash(self.params)
        total = np.zeros(length, np.uint64)
        for v in subset:
            total = total + self.masked[v]
            if v in seeds:
                total = total - secagg.prg(seeds[v], length)
            for w in self.mask_sets[v]:
                if w == v or (w in subset and v in self.mask_sets.get(w, [])):
                    continue  # cancels within the subset
                secret, public, a, b = ((keys[v], self.adverts[w]["s_pk"], v, w) if v in keys else
                                        (keys[w], self.adverts[v]["s_pk"], w, v) if w in keys else (None,) * 4)
                if secret is not None:
                    mask = secagg.pair_mask(secret, public, self.session, self.rnd, model, a, b, length)
                    total = total - secagg.signed_mask(v, w, mask)
        return secagg.dequantize(total)

    def unmaskable(self, truth: dict[str, np.ndarray], extra_seeds: dict | None = None) -> list[tuple[str, ...]]:
        """Every set of sites whose sum the attacker can compute (its best unmasking is that sum)."""
        seeds, keys = self.secrets(extra_seeds)
        out = []
        for k in range(1, len(self.masked) + 1):
            for subset in itertools.combinations(sorted(self.masked), k):
                plain = np.sum([truth[v] for v in subset], axis=0)
                if np.abs(self.unmasked(subset, seeds, keys) - plain).max() <= 1e-3 * max(1.0, np.abs(plain).max()):
                    out.append(subset)
        return out

    def best_correlation(self, target: str, truth: np.ndarray, extra_seeds: dict | None = None) -> float:
        """The largest |correlation| with ``truth`` (``target``'s true update) of any vector the attacker
        can compute that involves ``target``'s masked update: its best unmasking of every set holding
        ``target``, and the difference of each with the best unmasking of every set without it."""
        if target not in self.masked:
            return 0.0
        seeds, keys = self.secrets(extra_seeds)
        names = sorted(self.masked)
        others = [s for k in range(len(names)) for s in itertools.combinations([n for n in names if n != target], k)]
        with_target = [self.unmasked((target, *s), seeds, keys) for s in others]
        without = [self.unmasked(s, seeds, keys) for s in others if s]
        vectors = with_target + [a - b for a in with_target for b in without]
        return max(abs(_corr(v, truth)) for v in vectors)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    scale = np.linalg.norm(a) * np.linalg.norm(b)
    return 0.0 if scale == 0 else float(a @ b / scale)


def _public(secret: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    raw = serialization.Encoding.Raw
    return X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes(raw, serialization.PublicFormat.Raw)


def split_views(relay: Relay, names: list[str]) -> None:
    """The attack measured on the code before the consistency check: site-1 masks with only
    site-2 and site-3, and each site is told another survivor set, so that (before) site-1's seed
    and site-2's and site-3's mask keys were all revealed: site-1's update alone."""
    first, second, third, *rest = names
    relay.keys()
    relay.mask(first, [first, second, third])
    for name in names[1:]:
        relay.mask(name, names)
    views = {first: [first, second, third], second: [first, second, rest[0]], third: [first, third, rest[0]],
             **{n: [first, *rest] for n in rest}}
    for name, view in views.items():
        relay.confirm(name, view)
    for name, view in views.items():
        relay.unmask(name, view)


def relay_of(sites: list[Site], **kwargs) -> Relay:
    return Relay({s.name: s for s in sites}, sites[0].owner.threshold, **kwargs)


# --- the honest protocol ---------------------------------------------------------------------------


def test_the_unmasked_sum_is_the_plain_sum(tmp_path):
    sites = federation(tmp_path)
    result, _ = secure_round(sites)
    plain = np.sum([s.update for s in sites], axis=0)
    assert np.abs(result.total - plain).max() <= len(sites) * 2.0 ** -24
    assert result.survivors == [s.name for s in sites] and result.dropped == {}


def test_a_masked_update_says_nothing_about_the_update(tmp_path):
    sites = federation(tmp_path)
    sites[0].update = np.linspace(-1e3, 1e3, LENGTH)  # strongly structured
    captured = {}
    real = sites[0].call
    sites[0].call = lambda *a: captured.setdefault("y", real(*a))
    secure_round(sites)
    y = np.asarray(captured["y"]["masked"], np.uint64)
    top = (y >> np.uint64(56)).astype(int)  # the top byte of a uniform uint64 is uniform on 0..255
    counts = np.bincount(top, minlength=256)
    chi2 = float(((counts - LENGTH / 256) ** 2 / (LENGTH / 256)).sum())
    assert chi2 < 330  # 255 degrees of freedom: p ~ 0.001
    as_float = y.view(np.int64).astype(np.float64)
    assert abs(np.corrcoef(as_float, sites[0].update)[0, 1]) < 0.2


def test_a_substituted_key_is_detected_and_the_round_refused(tmp_path):
    sites = federation(tmp_path)
    session = SecureSum(sites, 3, ThreadPoolExecutor(5))
    adverts = {s.name: s.owner.advertise(session.session, 1) for s in sites}
    _, forged = secagg.keypair()
    adverts["site-2"] = {**adverts["site-2"], "s_pk": forged}  # the scientist swaps in its own key
    with pytest.raises(SecAggRefused, match="the keys given for site-2 are not signed by site-2"):
        sites[0].owner.share_keys(session.session, 1, adverts)


def test_a_site_lost_after_sharing_keys_is_recovered_by_the_threshold(tmp_path):
    sites = federation(tmp_path)
    sites[4].fail_on_call = True  # dies between the key step and the update step
    result, _ = secure_round(sites)
    plain = np.sum([s.update for s in sites[:4]], axis=0)
    assert result.survivors == ["site-1", "site-2", "site-3", "site-4"] and "site-5" in result.dropped
    assert np.abs(result.total - plain).max() <= 4 * 2.0 ** -24


def test_a_site_lost_after_confirming_is_recovered_by_the_threshold(tmp_path):
    sites = federation(tmp_path)
    real = sites[4].secagg
    sites[4].secagg = lambda steps: (_ for _ in ()).throw(ConnectionError("down")) if "unmask" in steps \
        else real(steps)
    result, _ = secure_round(sites)
    plain = np.sum([s.update for s in sites], axis=0)  # site-5's update is in the sum: it confirmed
    assert result.survivors == [s.name for s in sites]
    assert np.abs(result.total - plain).max() <= 5 * 2.0 ** -24


def test_a_site_that_masked_but_does_not_confirm_fails_the_round_and_nothing_is_unmasked(tmp_path):
    sites = federation(tmp_path)
    sites[4].fail_confirm = True
    asked_steps = []
    for site in sites:
        site.secagg = lambda steps, real=site.secagg: asked_steps.append(set(steps)) or real(steps)
    with pytest.raises(SitesFailed, match="site-5 masked but did not confirm the survivors .* nothing is unmasked"):
        secure_round(sites)
    assert {"unmask"} not in asked_steps


@pytest.mark.parametrize("corrupt, why", [
    ({"masked": np.zeros(LENGTH, np.float64)}, "site-2 returned a masked update of shape (500,) float64"),
    ({"masked": np.zeros((2, LENGTH), np.uint64)}, "site-2 returned a masked update of shape (2, 500) uint64"),
    ({"mask_seconds": float("nan")}, "site-2 returned mask_seconds nan"),
])
def test_a_malformed_masked_update_is_dropped_and_the_others_summed(tmp_path, corrupt, why):
    sites = federation(tmp_path)
    sites[1].corrupt = corrupt
    result, _ = secure_round(sites)
    plain = np.sum([s.update for s in sites if s.name != "site-2"], axis=0)
    assert np.abs(result.total - plain).max() <= len(sites) * 2.0 ** -24
    assert why in result.dropped["site-2"]


def test_masked_updates_of_different_lengths_are_refused_before_any_unmasking(tmp_path):
    sites = federation(tmp_path)
    sites[1].corrupt = {"masked": np.zeros(LENGTH - 1, np.uint64)}
    asked_steps = []
    for site in sites:
        site.secagg = lambda steps, real=site.secagg: asked_steps.append(set(steps)) or real(steps)
    with pytest.raises(SitesFailed, match="the sites' masked updates differ in length"):
        secure_round(sites)
    assert {"unmask"} not in asked_steps and {"confirm"} not in asked_steps


def test_below_the_threshold_nothing_is_unmasked(tmp_path):
    sites = federation(tmp_path)
    for s in sites[2:]:
        s.fail_on_call = True
    with pytest.raises(SitesFailed, match="2 sites left while masking updates .* needs 3; nothing is unmasked"):
        secure_round(sites)
    session = next(iter(sites[0].owner._rounds))[0]
    for step in ("confirm", "unmask"):
        kwargs = {"session": session, "rnd": 1, "survivors": ["site-1", "site-2"]}
        with pytest.raises(SecAggRefused, match="2 survivors, 3 needed.*nothing is unmasked"):
            sites[0].owner.steps({step: {**kwargs, **({"signatures": {}} if step == "unmask" else {})}})


def test_masks_are_never_reused(tmp_path):
    sites = federation(tmp_path)
    pool = ThreadPoolExecutor(5)
    captured = []
    real = sites[0].call
    sites[0].call = lambda *a: captured.append(real(*a)) or captured[-1]
    first, session = secure_round(sites, 1, pool=pool)
    second, _ = secure_round(sites, 2, session=session, pool=pool)
    assert not np.array_equal(captured[0]["masked"], captured[1]["masked"])  # same update, fresh masks
    assert np.abs(first.total - second.total).max() <= 5 * 2.0 ** -24
    # A finished round cannot be keyed again, not even by a restarted site (its record is on disk).
    restarted = SecAggSite("site-1", lambda m: b"", sites[0].owner.peers, 3, tmp_path / "site-1.jsonl")
    for owner in (sites[0].owner, restarted):
        with pytest.raises(SecAggRefused, match="step 'keys' was already taken"):
            owner.advertise(session.session, 2)


def test_a_secure_fedavg_runs_again_in_the_same_process(tmp_path, small_idx):
    """A second run() (a notebook cell run again, a continued run) keeps working: each run has its
    own thread pool, the secure session carries on."""
    from fl_syft.common.data import load_mnist
    from fl_syft.common.partition import PartitionSpec, make_shards
    from fl_syft.owner.policy import owner_policy
    from fl_syft.scientist.algorithms import State, build
    from fl_syft.scientist.evaluate import features_of_test_set
    from fl_syft.scientist.runs import RunRequest
    from fl_syft.simulate import local_sites

    small = load_mnist(f"idx:{small_idx}")
    sites = local_sites(make_shards(small.X_train, small.y_train, PartitionSpec(sites=3)),
                        owner_policy(epsilon=None, min_rows=10), tmp_path)
    request = RunRequest(settings={"local_iters": 2, "holdout": 0.0}, secure=True)
    algo = build("fedavg", request.settings, [s.privacy() for s in sites], request)
    X_test = features_of_test_set(algo.features, small.X_test)  # the run's features (default scattering)
    params, history = algo.run(sites, X_test, small.y_test, rounds=1)
    _, history = algo.run(sites, X_test, small.y_test, rounds=2, state=State(params, history))
    assert [r["round"] for r in history] == [1, 2] and history[1]["secure_aggregation"]["survivors"]


# --- the consistency check: an active scientist --------------------------------------------------


def test_split_survivor_views_and_a_short_mask_set_unmask_nothing(tmp_path):
    sites = federation(tmp_path)
    relay = relay_of(sites)
    split_views(relay, [s.name for s in sites])
    assert relay.revealed == {}  # every site refused: the survivors' signatures disagree with its view
    assert all("did not sign the survivors, mask set, model and contribution" in r[-1]
               for r in relay.refused.values()) and len(relay.refused) == 5
    truth = {s.name: s.update for s in sites}
    assert relay.unmaskable(truth) == []
    assert relay.best_correlation("site-1", truth["site-1"]) < 0.85


def test_the_attack_measure_finds_a_leak_when_there_is_one(tmp_path):
    """Control: the same attacker, given site-1's self-mask seed by an oracle, rebuilds site-1's
    update alone from what the sites revealed when site-1 was declared dropped."""
    sites = federation(tmp_path)
    relay = relay_of(sites)
    names = [s.name for s in sites]
    relay.keys()
    seed = sites[0].owner._rounds[(relay.session, 1)].self_seed
    for name in names:
        relay.mask(name, names)
    survivors = names[1:]  # site-1 masked, but is declared dropped
    for name in survivors:
        relay.confirm(name, survivors)
    for name in survivors:
        relay.unmask(name, survivors)
    truth = {s.name: s.update for s in sites}
    assert relay.best_correlation("site-1", truth["site-1"]) < 0.85  # its key is out, its seed is not
    assert relay.best_correlation("site-1", truth["site-1"], extra_seeds={"site-1": seed}) > 0.99
    assert relay.unmaskable(truth) == [tuple(survivors)]


def test_a_site_told_to_mask_with_fewer_peers_makes_the_round_unmask_nothing(tmp_path):
    sites = federation(tmp_path)
    relay = relay_of(sites)
    names = [s.name for s in sites]
    relay.keys()
    relay.mask("site-1", names[:3])  # told that site-4 and site-5 never shared their keys
    for name in names[1:]:
        relay.mask(name, names)
    relay.confirm("site-1", names)  # site-1 then confirms all five; the others see a mismatch
    for name in names[1:]:
        relay.confirm(name, names)
    for name in names:
        relay.unmask(name, names)
    assert relay.revealed == {}
    assert relay.unmaskable({s.name: s.update for s in sites}) == []
    assert relay.best_correlation("site-1", sites[0].update) < 0.85


def test_sites_asked_to_contribute_different_things_never_unmask(tmp_path):
    sites = federation(tmp_path)
    relay = relay_of(sites, config={"lr": 1.0})
    names = [s.name for s in sites]
    relay.keys()
    for name in names:
        relay.mask(name, names, config={"lr": 1e-4} if name == "site-2" else None)
    for name in names:
        relay.confirm(name, names)
    for name in names:
        relay.unmask(name, names)
    assert relay.revealed == {} and len(relay.refused) == 5


def test_different_models_to_different_sites_cannot_be_unmasked(tmp_path):
    sites = federation(tmp_path)
    relay = relay_of(sites)
    names = [s.name for s in sites]
    relay.keys()
    for name in names:
        relay.params = {"coef": np.full(3, 1.0 if name == "site-1" else 0.0)}  # site-1 gets another model
        relay.mask(name, names)
    for name in names:
        relay.confirm(name, names)
    for name in names:
        relay.unmask(name, names)
    assert relay.revealed == {}
    assert all("did not sign the survivors, mask set, model" in r[-1] for r in relay.refused.values())


def test_a_site_reveals_once_and_for_the_survivors_it_confirmed_only(tmp_path):
    sites = federation(tmp_path)
    relay = relay_of(sites)
    names = [s.name for s in sites]
    relay.honest_until_unmask(names, names)
    owner = sites[0].owner
    with pytest.raises(SecAggRefused, match="already confirmed other survivors"):
        owner.confirm(relay.session, 1, names[:4])
    assert owner.confirm(relay.session, 1, names) == relay.signatures["site-1"]  # the same answer again
    with pytest.raises(SecAggRefused, match="this site confirmed .* not"):
        owner.unmask(relay.session, 1, names[:4], {n: relay.signatures[n] for n in names[:4]})
    with pytest.raises(SecAggRefused, match="signatures from"):
        owner.unmask(relay.session, 1, names, {n: relay.signatures[n] for n in names[:4]})
    forged = {**relay.signatures, "site-3": relay.signatures["site-2"]}
    with pytest.raises(SecAggRefused, match="site-3 did not sign"):
        owner.unmask(relay.session, 1, names, forged)
    answer = owner.unmask(relay.session, 1, names, relay.signatures)
    assert all(set(share) == {"index", "seed"} for share in answer.values()) and sorted(answer) == names
    for survivors in (names, names[:3]):
        with pytest.raises(SecAggRefused):
            owner.unmask(relay.session, 1, survivors, {n: relay.signatures[n] for n in survivors})


def test_a_dropped_sites_key_is_revealed_never_its_seed(tmp_path):
    sites = federation(tmp_path)
    relay = relay_of(sites)
    names = [s.name for s in sites]
    survivors = names[:4]
    relay.honest_until_unmask(names, survivors)
    for name in survivors:
        relay.unmask(name, survivors)
    for answer in relay.revealed.values():
        assert set(answer["site-5"]) == {"index", "key"}
        assert all(set(answer[n]) == {"index", "seed"} for n in survivors)
    truth = {s.name: s.update for s in sites}
    assert relay.unmaskable(truth) == [tuple(survivors)]
    assert np.abs(relay.unmasked(survivors, *relay.secrets()) - sum(truth[n] for n in survivors)).max() < 1e-5


def test_a_share_the_scientist_made_itself_is_refused_before_masking(tmp_path):
    sites = federation(tmp_path)
    relay = relay_of(sites)
    names = [s.name for s in sites]
    relay.keys()
    relay.shares["site-2"]["site-1"] = relay.shares["site-3"]["site-1"]  # site-3's share, as from site-2
    relay.mask("site-1", names)
    assert "the share given from site-2 was not sealed by site-2" in relay.refused["site-1"][-1]
    relay.shares["site-2"]["site-1"] = bytes(100)
    relay.mask("site-1", names)
    assert "the share given from site-2 was not sealed by site-2" in relay.refused["site-1"][-1]
    assert not (tmp_path / "site-1.jsonl").read_text().count('"mask"')  # no round was burned


# --- strict arguments -----------------------------------------------------------------------------


def _advertised(tmp_path):
    sites = federation(tmp_path)
    owner = sites[0].owner
    owner.steps({"advertise": {"session": "ab", "rnd": 1}})
    return sites, owner


@pytest.mark.parametrize("steps, why", [
    ("advertise", "steps must be a dict of exactly one step"),
    ({}, "steps must be a dict of exactly one step"),
    ({"advertise": {"session": "ab", "rnd": 2}, "confirm": {}}, "steps must be a dict of exactly one step"),
    ({"reveal_all": {"session": "ab", "rnd": 2}}, "unknown step 'reveal_all'"),
    ({"advertise": {"session": "ab"}}, "step advertise takes exactly session, rnd"),
    ({"advertise": {"session": "ab", "rnd": 2, "extra": 1}}, "step advertise takes exactly session, rnd"),
    ({"advertise": ["ab", 2]}, "step advertise takes exactly session, rnd"),
    ({"advertise": {"session": "ab", "rnd": "x"}}, "rnd must be an int"),
    ({"advertise": {"session": "ab", "rnd": 1.5}}, "rnd must be an int"),
    ({"advertise": {"session": "ab", "rnd": 2.0}}, "rnd must be an int"),
    ({"advertise": {"session": "ab", "rnd": True}}, "rnd must be an int"),
    ({"advertise": {"session": "ab", "rnd": -1}}, "rnd must be an int in"),
    ({"advertise": {"session": "ab", "rnd": 2 ** 31}}, "rnd must be an int in"),
    ({"advertise": {"session": ["ab"], "rnd": 2}}, "session must be 1 to 64 lowercase hex"),
    ({"advertise": {"session": "forged", "rnd": 2}}, "session must be 1 to 64 lowercase hex"),
    ({"advertise": {"session": "", "rnd": 2}}, "session must be 1 to 64 lowercase hex"),
    ({"advertise": {"session": "a" * 65, "rnd": 2}}, "session must be 1 to 64 lowercase hex"),
    ({"share_keys": {"session": "ab", "rnd": 1, "adverts": []}}, "adverts must be a dict"),
    ({"share_keys": {"session": "ab", "rnd": 1, "adverts": {"site-9": {}}}}, "'site-9' is not a peer"),
    ({"share_keys": {"session": "ab", "rnd": 1, "adverts": {"site-1": {"site": "site-1"}}}},
     "adverts\\[site-1\\] must be a dict of exactly"),
    ({"share_keys": {"session": "ab", "rnd": 1, "adverts": {"site-1": {
        "site": "site-1", "c_pk": "00" * 32, "s_pk": bytes(32), "signature": bytes(64)}}}}, "c_pk must be 32 bytes"),
    ({"share_keys": {"session": "ab", "rnd": 1, "adverts": {"site-1": {
        "site": "site-1", "c_pk": bytes(32), "s_pk": bytes(32), "signature": bytes(65)}}}},
     "signature must be 64 bytes"),
    ({"confirm": {"session": "ab", "rnd": 1, "survivors": "site-1"}}, "survivors must be a list"),
    ({"confirm": {"session": "ab", "rnd": 1, "survivors": ["site-1", "site-1", "site-2"]}}, "names a site twice"),
    ({"confirm": {"session": "ab", "rnd": 1, "survivors": ["site-1", 2, "site-3"]}}, "must name sites"),
    ({"unmask": {"session": "ab", "rnd": 1, "survivors": ["site-1"], "signatures": {"site-1": "sig"}}},
     "signatures\\[site-1\\] must be 64 bytes"),
    ({"unmask": {"session": "ab", "rnd": 1, "survivors": ["site-1"], "signatures": [b""]}},
     "signatures must be a dict"),
])
def test_malformed_steps_are_one_line_refusals_before_any_state_changes(tmp_path, steps, why):
    sites, owner = _advertised(tmp_path)
    before, rounds = owner.used_path.read_text(), dict(owner._rounds)
    with pytest.raises(SecAggRefused, match=why) as refused:
        owner.steps(steps)
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 300
    assert owner.used_path.read_text() == before and owner._rounds == rounds  # nothing burned or written
    # ... and the round still completes afterwards.
    relay = relay_of(sites, session="ab")
    relay.adverts = {s.name: s.owner.advertise("ab", 1) for s in sites}
    relay.shares = {s.name: s.owner.share_keys("ab", 1, relay.adverts) for s in sites}
    names = [s.name for s in sites]
    for name in names:
        relay.mask(name, names)
        relay.confirm(name, names)
    for name in names:
        relay.unmask(name, names)
    assert relay.unmaskable({s.name: s.update for s in sites}) == [tuple(names)]


def test_mask_takes_strict_arguments_and_never_refuses_on_values(tmp_path):
    sites = federation(tmp_path)
    relay = relay_of(sites)
    names = [s.name for s in sites]
    relay.keys()
    owner, inbox = sites[0].owner, {frm: relay.shares[frm]["site-1"] for frm in names[1:]}
    good = dict(session=relay.session, rnd=1, peers=names, shares_in=inbox, model="0" * 64,
                update=np.zeros(LENGTH), contribution="1" * 64)
    for bad, why in [({"rnd": 1.0}, "rnd must be an int"), ({"peers": tuple(names)}, "peers must be a list"),
                     ({"peers": [*names, "site-9"]}, "not a peer"), ({"model": "xyz"}, "model must be"),
                     ({"contribution": None}, "contribution must be"), ({"update": [1.0]}, "update to mask"),
                     ({"update": np.zeros((2, 3))}, "update to mask"),
                     ({"shares_in": {**inbox, "site-2": "text"}}, "shares\\[site-2\\] must be"),
                     ({"peers": names[:2], "shares_in": {"site-2": inbox["site-2"]}},
                      "2 sites to mask with, 3 needed")]:
        with pytest.raises(SecAggRefused, match=why):
            owner.mask(**{**good, **bad})
    assert not owner.used_path.read_text().count('"mask"')
    wild = np.array([np.nan, np.inf, -np.inf, 1e300, -1e300, 1.5] + [0.0] * (LENGTH - 6))
    assert set(owner.mask(**{**good, "update": wild})) == {"masked"}  # masked, not refused


def test_quantize_is_total_and_a_sum_of_clamped_values_never_wraps():
    q = secagg.quantize(np.array([np.nan, np.inf, -np.inf, 1e300, -1e300, 1.5, -2.25]), 5)
    assert list(secagg.dequantize(q)[[0, 1, 2, 5, 6]]) == [0.0, 0.0, 0.0, 1.5, -2.25]
    assert secagg.dequantize(q)[3] == 2.0 ** 38 / 5 and secagg.dequantize(q)[4] == -(2.0 ** 38) / 5
    for value in (1e300, -1e300):
        total = np.zeros(1, np.uint64)
        for _ in range(5):
            total = total + secagg.quantize(np.array([value]), 5)
        assert secagg.dequantize(total)[0] == pytest.approx(np.sign(value) * 2.0 ** 38)  # no wrap-around
    assert np.array_equal(secagg.quantize(np.array([3.0, 1e20]), 7), secagg.quantize(np.array([3.0, 1e20]), 7))


def test_a_malformed_record_never_stops_a_restart(tmp_path, caplog):
    sites = federation(tmp_path)
    path = tmp_path / "site-1.jsonl"
    path.write_text('[["a", "b"], 1, "keys"]\n["ab", 1.5, "keys"]\nnot json\n["ab", 1, "reveal"]\n'
                    '{"a": 1}\n["cd", 3, "keys"]\n\n')
    with caplog.at_level(logging.WARNING, logger="fl_syft.secagg"):
        restarted = SecAggSite("site-1", lambda m: b"", sites[0].owner.peers, 3, path)
    assert restarted._used == {("cd", 3, "keys")}
    assert len([r for r in caplog.records if "is malformed" in r.getMessage()]) == 5
    with pytest.raises(SecAggRefused, match="step 'keys' was already taken"):
        restarted.advertise("cd", 3)
    assert "site" in restarted.advertise("ab", 1)


def test_parse_secure_takes_exactly_a_secure_call(tmp_path):
    good = {"session": "ab", "rnd": 3, "peers": ["site-2", "site-1"], "shares": {"site-2": bytes(40)},
            "fields": ["coef", "intercept"], "weight": "held_rows"}
    assert parse_secure(good) == {**good, "peers": ["site-1", "site-2"]}
    assert parse_secure({**good, "weight": None})["weight"] is None
    for bad, why in [({"extra": 1}, "must hold exactly"), ({"rnd": "3"}, "rnd must be an int"),
                     ({"rnd": 1.5}, "rnd must be an int"), ({"session": ["ab"]}, "session must be"),
                     ({"fields": ["coef", "coef"]}, "distinct fields"), ({"fields": ["train_accuracy"]}, "fields"),
                     ({"fields": []}, "non-empty"), ({"fields": "coef"}, "fields"),
                     ({"weight": "rows"}, "weight must be None or one of"),
                     ({"peers": "site-1"}, "peers must be a list"), ({"shares": {"site-2": "x"}}, "must be 29 to")]:
        with pytest.raises(SecAggRefused, match=why):
            parse_secure({**good, **bad})
    with pytest.raises(SecAggRefused, match="must hold exactly"):
        parse_secure([good])
    missing = dict(good)
    missing.pop("weight")
    with pytest.raises(SecAggRefused, match="must hold exactly"):
        parse_secure(missing)
