"""Secure aggregation, the protocol in one process (sites are the owners' real SecAggSite objects)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from nacl.signing import SigningKey

from fl_syft.common import secagg
from fl_syft.owner.secagg import SecAggRefused, SecAggSite
from fl_syft.scientist.rounds import SitesFailed
from fl_syft.scientist.secagg import SecureSum

LENGTH = 500


class Site:
    """A site of the protocol: the owner's SecAggSite, and an update it masks when called."""

    def __init__(self, name: str, key: SigningKey, peers: dict, threshold: int, folder, update: np.ndarray):
        self.name, self.update, self.fail_on_call, self.corrupt = name, update, False, None
        self.owner = SecAggSite(name, lambda m: key.sign(m).signature, peers, threshold, folder / f"{name}.jsonl")

    def secagg(self, steps: dict) -> dict:
        out = {}
        for step in ("unmask", "advertise", "share_keys"):
            if step in steps:
                out[step] = getattr(self.owner, step)(**steps[step])
        return out

    def call(self, function: str, params: dict, config: dict) -> dict:
        if self.fail_on_call:
            raise ConnectionError(f"{self.name} is down")
        s = config["secagg"]
        masked = self.owner.mask(s["session"], s["rnd"], s["peers"], s["shares"], secagg.model_hash(params),
                                 self.update)
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
    return session.round(rnd, "fn", params or {"coef": np.zeros(3)}, {}, ["x"], None), session


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


def test_different_models_to_different_sites_cannot_be_unmasked(tmp_path):
    sites = federation(tmp_path)
    session = SecureSum(sites, 3, ThreadPoolExecutor(5))
    adverts = {s.name: s.owner.advertise(session.session, 1) for s in sites}
    shares = {s.name: s.owner.share_keys(session.session, 1, adverts) for s in sites}
    names = sorted(adverts)
    masked = {}
    for i, s in enumerate(sites):  # site-1 gets another model than the rest
        model = secagg.model_hash({"coef": np.full(3, 1.0 if i == 0 else 0.0)})
        inbox = {frm: shares[frm][s.name] for frm in names if frm != s.name}
        masked[s.name] = s.owner.mask(session.session, 1, names, inbox, model, s.update)
    signatures = {n: m["model_signature"] for n, m in masked.items()}
    for s in sites:
        with pytest.raises(SecAggRefused, match="did not mask the model this site received"):
            s.owner.unmask(session.session, 1, names, signatures)


def test_a_site_lost_after_sharing_keys_is_recovered_by_the_threshold(tmp_path):
    sites = federation(tmp_path)
    sites[4].fail_on_call = True  # dies between the key step and the update step
    result, _ = secure_round(sites)
    plain = np.sum([s.update for s in sites[:4]], axis=0)
    assert result.survivors == ["site-1", "site-2", "site-3", "site-4"] and "site-5" in result.dropped
    assert np.abs(result.total - plain).max() <= 4 * 2.0 ** -24


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
    asked = []
    for site in sites:
        site.secagg = lambda steps, real=site.secagg: asked.append(set(steps)) or real(steps)
    with pytest.raises(SitesFailed, match="the sites' masked updates differ in length"):
        secure_round(sites)
    assert {"unmask"} not in asked


def test_below_the_threshold_nothing_is_unmasked(tmp_path):
    sites = federation(tmp_path)
    for s in sites[2:]:
        s.fail_on_call = True
    with pytest.raises(SitesFailed, match="2 sites left while masking updates .* needs 3; nothing is unmasked"):
        secure_round(sites)
    session = next(iter(sites[0].owner._rounds))[0]
    with pytest.raises(SecAggRefused, match="3 needed: nothing is unmasked"):
        sites[0].owner.unmask(session, 1, ["site-1", "site-2"], {})


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


def test_a_site_refuses_to_unmask_a_round_twice(tmp_path):
    sites = federation(tmp_path)
    session = SecureSum(sites, 3, ThreadPoolExecutor(5))
    adverts = {s.name: s.owner.advertise(session.session, 1) for s in sites}
    shares = {s.name: s.owner.share_keys(session.session, 1, adverts) for s in sites}
    names, model = sorted(adverts), secagg.model_hash({})
    masked = {s.name: s.owner.mask(session.session, 1, names, {f: shares[f][s.name] for f in names if f != s.name},
                                   model, s.update) for s in sites}
    signatures = {n: m["model_signature"] for n, m in masked.items()}
    sites[0].owner.unmask(session.session, 1, names, signatures)
    with pytest.raises(SecAggRefused):
        sites[0].owner.unmask(session.session, 1, names[:3], signatures)


def test_a_secure_fedavg_runs_again_in_the_same_process(tmp_path, small_idx):
    """A second run() (a notebook cell run again, a continued run) keeps working: each run has its
    own thread pool, the secure session carries on."""
    from fl_syft.common.data import load_mnist
    from fl_syft.common.partition import PartitionSpec, make_shards
    from fl_syft.owner.launch import owner_policy
    from fl_syft.scientist.algorithms.fedavg import FedAvg, FedAvgSettings
    from fl_syft.simulate import local_sites

    small = load_mnist(f"idx:{small_idx}")
    sites = local_sites(make_shards(small.X_train, small.y_train, PartitionSpec(sites=3)),
                        owner_policy(epsilon=None, min_rows=10), tmp_path)
    algo = FedAvg(FedAvgSettings(rounds=1, local_iters=2, holdout=0.0)).for_privacy([s.privacy() for s in sites],
                                                                                    secure=True)
    params, history = algo.run(sites, small.X_test, small.y_test)
    algo.settings = algo.settings.__class__(**{**algo.settings.__dict__, "rounds": 2})
    _, history = algo.run(sites, small.X_test, small.y_test, params=params, history=history)
    assert [r["round"] for r in history] == [1, 2] and history[1]["secure_aggregation"]["survivors"]
