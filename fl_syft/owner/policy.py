"""The data owner's policy for their sites, as the owner sets it: before a site knows its rows.

One builder (:func:`owner_policy`; :func:`policy_from_flags` for the owner's command-line flags)
used by ``launch``, ``serve``, ``demo`` and ``simulate``; each site then resolves it for the rows
it holds (:meth:`OwnerPolicy.for_rows`), the one place a delta left to the site is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fl_syft.common.cards import read_cards
from fl_syft.common.errors import ConfigError
from fl_syft.common.policy import DEFAULT_EPSILON, PrivacyPolicy, default_delta


@dataclass(frozen=True)
class OwnerPolicy:
    """``privacy``: every setting of the owner's :class:`PrivacyPolicy`; ``delta`` None means
    "below 1/rows", chosen by each site once it knows its rows (``privacy.delta`` is then only a
    placeholder). The default: the launcher's, DP with epsilon 1.

    ``peers``: the other owners' sites (name -> verify key, hex, from their cards) and
    ``threshold`` the owner's ``--secagg-threshold`` (None: a majority); both take effect in
    :meth:`for_federation`, once the owner's own sites' keys are known."""

    privacy: PrivacyPolicy = field(default_factory=PrivacyPolicy)
    delta: float | None = None
    peers: dict = field(default_factory=dict)
    threshold: int | None = None

    def delta_for(self, rows: int) -> float:
        """The delta a site of ``rows`` rows composes its releases at."""
        return default_delta(rows) if self.delta is None else self.delta

    def for_rows(self, rows: int) -> PrivacyPolicy:
        """The policy of a site holding ``rows`` rows, checked against them (raises ConfigError)."""
        site = replace(self.privacy, delta=self.delta_for(rows))
        site.check(rows)
        return site

    def with_peers(self, peers: dict[str, str]) -> OwnerPolicy:
        """The same policy run with these secure-aggregation sites (name -> verify key, hex; the
        whole federation, this site among them; none: no secure aggregation), checked."""
        threshold = self.threshold or (len(peers) // 2 + 1 if peers else None)
        policy = replace(self, privacy=replace(self.privacy, peers=dict(peers), threshold=threshold))
        policy.privacy.check()
        return policy

    def for_federation(self, own: dict[str, str]) -> OwnerPolicy:
        """The policy of the owner's sites ``own`` (name -> verify key): secure aggregation among
        them and the peers' sites, if there are two or more in all. (A peer card naming one of
        ``own`` is this owner's own card, perhaps from an earlier start: the site's key wins.)"""
        federation = {**self.peers, **own}
        return self.with_peers(federation if len(federation) > 1 else {})

    def for_sites(self, names: list[str]) -> OwnerPolicy:
        """:meth:`for_federation` for the owner's sites ``names`` before their keys are known (a
        start's checks: the federation's counts, the threshold, ``require_secure_aggregation``)."""
        return self.for_federation({name: self.peers.get(name, "0" * 64) for name in names})

    def to_dict(self) -> dict:
        """As JSON (the site's ``spec.json``): ``PrivacyPolicy.to_dict()`` with ``delta`` null if the site chooses."""
        return {**self.privacy.to_dict(), "delta": self.delta}

    @classmethod
    def from_dict(cls, doc: dict) -> OwnerPolicy:
        delta = doc.get("delta")
        return cls(PrivacyPolicy.from_dict({k: v for k, v in doc.items() if k != "delta" or v is not None}), delta)


def owner_policy(epsilon: float | None = DEFAULT_EPSILON, delta: float | None = None, **settings: Any) -> OwnerPolicy:
    """The owner's policy from their settings (``PrivacyPolicy``'s fields), checked as far as it
    can be before the rows are known. ``epsilon`` None: no DP; ``delta`` None: below 1/rows.

    ``peers`` and ``threshold`` are the owner's (:class:`OwnerPolicy`); secure aggregation and
    ``require_secure_aggregation`` are checked in :meth:`OwnerPolicy.for_federation`, when the
    federation is known: the launcher's own sites and the peers' (``serve --peers``)."""
    peers, threshold = settings.pop("peers", {}), settings.pop("threshold", None)
    policy = PrivacyPolicy(epsilon=epsilon, **({"delta": delta} if delta is not None else {}), **settings)
    replace(policy, require_secure_aggregation=False).check()
    return OwnerPolicy(policy, delta, peers, threshold)


def policy_from_flags(*, no_dp: bool = False, dp_epsilon: float | None = None, dp_delta: float | None = None,
                      dp_clip: float | None = None, min_rows: int | None = None, secagg_threshold: int | None = None,
                      peers_file: Path | None = None, require_secure_aggregation: bool = False) -> OwnerPolicy:
    """The owner's policy their command-line flags ask for (None: the flag is not given)."""
    if no_dp and (dp_epsilon is not None or dp_delta is not None or dp_clip is not None):
        raise ConfigError("{no_dp} turns differential privacy off: drop {dp_epsilon}, {dp_delta} and {dp_clip}")
    settings = {k: v for k, v in {"clip": dp_clip, "min_rows": min_rows, "threshold": secagg_threshold,
                                  "peers": _read_peers(peers_file) if peers_file else None}.items() if v is not None}
    epsilon = None if no_dp else (DEFAULT_EPSILON if dp_epsilon is None else dp_epsilon)
    return owner_policy(epsilon, dp_delta, require_secure_aggregation=require_secure_aggregation, **settings)


def _read_peers(path: Path) -> dict[str, str]:
    """The other data owners' sites and their verify keys, from their cards (``common.cards``)."""
    return {card.name: card.verify_key for card in read_cards(path)}
