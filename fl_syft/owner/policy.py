"""The data owner's policy for their sites, as the owner sets it: before a site knows its rows.

One builder (:func:`owner_policy`; :func:`policy_from_flags` for the owner's command-line flags)
used by ``launch``, ``serve``, ``demo`` and ``simulate``; each site then resolves it for the rows
it holds (:meth:`OwnerPolicy.for_rows`), the one place a delta left to the site is chosen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fl_syft.common.errors import ConfigError
from fl_syft.common.policy import DEFAULT_EPSILON, PrivacyPolicy, default_delta


@dataclass(frozen=True)
class OwnerPolicy:
    """``privacy``: every setting of the owner's :class:`PrivacyPolicy`; ``delta`` None means
    "below 1/rows", chosen by each site once it knows its rows (``privacy.delta`` is then only a
    placeholder). The default: the launcher's, DP with epsilon 1."""

    privacy: PrivacyPolicy = field(default_factory=PrivacyPolicy)
    delta: float | None = None

    def delta_for(self, rows: int) -> float:
        """The delta a site of ``rows`` rows composes its releases at."""
        return default_delta(rows) if self.delta is None else self.delta

    def for_rows(self, rows: int) -> PrivacyPolicy:
        """The policy of a site holding ``rows`` rows, checked against them (raises ConfigError)."""
        site = replace(self.privacy, delta=self.delta_for(rows))
        site.check(rows)
        return site

    def with_peers(self, peers: dict[str, str]) -> OwnerPolicy:
        """The same policy run with these secure-aggregation peers (site name -> verify key, hex)."""
        return replace(self, privacy=replace(self.privacy, peers=peers))

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

    Without ``peers``, ``require_secure_aggregation`` is checked later, when the peers are
    known: the launcher's own sites are each other's peers (filled in at start), ``serve``
    needs ``--peers`` (``ServeOptions.check``), and every site checks its policy again."""
    policy = PrivacyPolicy(epsilon=epsilon, **({"delta": delta} if delta is not None else {}), **settings)
    (policy if policy.peers else replace(policy, require_secure_aggregation=False)).check()
    return OwnerPolicy(policy, delta)


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
    """The other data owners' sites and their verify keys: ``{"name": "hex", ...}``."""
    problem = ConfigError(f"{{peers}} {path}: needs a JSON object of site name -> verify key (64 hex digits), as "
                          "each site prints at start")
    try:
        peers = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        raise problem from None
    if not isinstance(peers, dict) or not all(isinstance(k, str) and _is_key(v) for k, v in peers.items()):
        raise problem
    return peers


def _is_key(value: object) -> bool:
    try:
        return isinstance(value, str) and len(bytes.fromhex(value)) == 32
    except ValueError:
        return False
