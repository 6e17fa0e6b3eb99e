"""In-process federation: the same rounds as a PySyft run, with each shard held in this process.

Sits beside both sides (it plays every data owner and the scientist at once): a
:class:`LocalSite` runs the same vetted functions the datasites run, found the way the
owner's approver finds them, through a guard assembled as a datasite's is
(``owner.site.assemble``: bounds, DP charges, secure aggregation), with a ledger per site in a
temporary directory: a simulated run accounts exactly as the sites do. Also what only a
simulation can compute, holding every site's rows: the pooled ceiling and the partition's labels.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nacl.signing import SigningKey

from fl_syft.common.data import cache_dir
from fl_syft.common.partition import label_histogram
from fl_syft.common.protocol import Refusal
from fl_syft.owner.datasite import shard_sha256
from fl_syft.owner.features import FEATURES, site_features
from fl_syft.owner.guard import Guard, Refused
from fl_syft.owner.launch import site_names
from fl_syft.owner.ledger import Ledger
from fl_syft.owner.policy import OwnerPolicy
from fl_syft.owner.site import assemble
from fl_syft.scientist.baselines import CONVERGE_ITERS
from fl_syft.scientist.rounds import SiteRefused


@dataclass
class LocalSite:
    """A site whose shard lives in this process (``features``: its rows as the vetted functions
    see them, ``owner.features.site_features``), behind its owner's ``guard``."""

    name: str
    features: dict[str, dict]
    guard: Guard

    def call(self, function: str, global_params: dict, config: dict) -> dict:
        try:
            return self.guard.call(function, self.features, global_params, config, requester="simulate")
        except Refused as e:
            raise SiteRefused(Refusal(self.name, function, str(e)).line) from None

    def privacy(self) -> dict:
        return self.guard.status()

    def secagg(self, steps: dict) -> dict:
        try:
            return self.guard.secagg_steps(steps)
        except Refused as e:
            raise SiteRefused(Refusal(self.name, "secure aggregation", str(e)).line) from None


def local_sites(shards: list[np.ndarray], policy: OwnerPolicy | None = None,
                ledgers: Path | None = None) -> list[LocalSite]:
    """Sites named site-1..site-N (the names launched datasites get too), each with the owner's
    ``policy`` (``owner.policy.owner_policy``; default: the launcher's default, DP epsilon 1),
    a fresh ledger in ``ledgers`` (default: a new temporary directory) and a signing key of its
    own (as each datasite's identity), the sites being each other's secure-aggregation peers.
    The shards' features are kept in the public data's cache (``common.data.cache_dir()``): in a
    simulation every shard is a piece of a public set."""
    ledgers = Path(ledgers or tempfile.mkdtemp(prefix="fl-syft-ledgers-"))
    ledgers.mkdir(parents=True, exist_ok=True)
    names = site_names(len(shards))
    keys = {name: SigningKey.generate() for name in names}
    policy = (OwnerPolicy() if policy is None else policy).with_peers(
        {n: k.verify_key.encode().hex() for n, k in keys.items()})
    return [_local_site(name, shard, policy, keys[name], ledgers) for name, shard in zip(names, shards, strict=True)]


def _local_site(name: str, shard: np.ndarray, policy: OwnerPolicy, key: SigningKey, ledgers: Path) -> LocalSite:
    def open_ledger(total: float, delta: float) -> Ledger:
        return Ledger(ledgers / f"{name}.jsonl", shard_sha256(shard), total, delta)

    guard = assemble(name, policy, len(shard), open_ledger=open_ledger, signing_key=key,
                     secagg_journal=ledgers / f"{name}-secagg.jsonl")
    return LocalSite(name, site_features(shard, cache_dir() / FEATURES, name), guard)


def centralized(sites: Sequence[LocalSite], features: str, C: float) -> dict:
    """The ceiling a federated run is measured against: ``LogisticRegression(C)`` to convergence on
    every site's rows pooled (on the feature map ``features``), which only a simulation (or a
    benchmark) may do.

    Returns {"params", "n_iter"}.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    X = np.concatenate([site.features[features]["X"] for site in sites])
    y = np.concatenate([site.features[features]["y"] for site in sites])
    clf = LogisticRegression(C=C, max_iter=CONVERGE_ITERS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # a ceiling that did not converge is no ceiling
        clf.fit(X, y)
    classes = clf.classes_.astype(int)
    coef, intercept = np.zeros((10, X.shape[1])), np.full(10, -1e9)
    coef[classes], intercept[classes] = clf.coef_, clf.intercept_  # absent classes never predicted
    return {"params": {"coef": coef, "intercept": intercept}, "n_iter": int(np.max(clf.n_iter_))}


def label_histograms(names: Sequence[str], shards: Sequence[np.ndarray]) -> dict[str, list[int]]:
    """{site: rows per digit 0..9} over every row of each shard: the partition itself, which a
    real deployment never shows the scientist (its report uses the counts the sites return)."""
    return dict(zip(names, label_histogram(list(shards)).tolist(), strict=True))
