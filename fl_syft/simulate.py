"""In-process federation: the same rounds as a PySyft run, with each shard held in this process.

Sits beside both sides (it plays every data owner and the scientist at once): a
:class:`LocalSite` runs the same vetted functions the datasites run, found the way the
owner's approver finds them, through the same owner's guard (bounds, DP charges), with a
ledger per site in a temporary directory: a simulated run accounts exactly as the sites do.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nacl.signing import SigningKey

from fl_syft.owner.datasite import shard_sha256, site_policy_from
from fl_syft.owner.guard import Guard, Refused
from fl_syft.owner.launch import owner_policy, site_names
from fl_syft.owner.ledger import Ledger
from fl_syft.owner.secagg import SecAggSite
from fl_syft.scientist.rounds import SiteRefused


@dataclass
class LocalSite:
    """A site whose shard (n, 785) uint8 lives in this process, behind its owner's ``guard``."""

    name: str
    shard: np.ndarray
    guard: Guard

    def call(self, function: str, global_params: dict, config: dict) -> dict:
        try:
            return self.guard.call(function, self.shard, global_params, config, requester="simulate")
        except Refused as e:
            raise SiteRefused(f"{self.name} refused {function}: {e}") from None

    def privacy(self) -> dict:
        return self.guard.status()

    def secagg(self, steps: dict) -> dict:
        try:
            return self.guard.secagg_steps(steps)
        except Refused as e:
            raise SiteRefused(f"{self.name} refused: {e}") from None


def local_sites(shards: list[np.ndarray], policy: dict | None = None, ledgers: Path | None = None) -> list[LocalSite]:
    """Sites named site-1..site-N (the names launched datasites get too), each with the owner's
    ``policy`` (``owner.launch.owner_policy``; default: the launcher's default, DP epsilon 1) and
    a fresh ledger in ``ledgers`` (default: a new temporary directory)."""
    policy = owner_policy() if policy is None else policy
    ledgers = Path(ledgers or tempfile.mkdtemp(prefix="fl-syft-ledgers-"))
    names = site_names(len(shards))
    keys = {name: SigningKey.generate() for name in names}  # as each datasite's own identity
    policy = {**policy, "peers": {n: k.verify_key.encode().hex() for n, k in keys.items()}}
    sites = []
    for name, shard in zip(names, shards, strict=True):
        site_policy = site_policy_from(policy, len(shard))
        ledger = (Ledger(ledgers / f"{name}.jsonl", shard_sha256(shard), site_policy.epsilon, site_policy.delta)
                  if site_policy.dp else None)
        secure = SecAggSite(name, lambda message, key=keys[name]: key.sign(message).signature, site_policy.peers,
                            site_policy.threshold, ledgers / f"{name}-secagg.jsonl")
        guard = Guard(name, site_policy, len(shard), ledger, secagg=secure)
        if site_policy.dp:
            guard.publish_row_count()
        sites.append(LocalSite(name, shard, guard))
    return sites

