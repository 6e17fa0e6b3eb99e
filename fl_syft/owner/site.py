"""One site assembled: the owner's guard over its rows, their ledger and its side of secure aggregation.

The datasite process (``owner.datasite``) and the in-process simulation (``fl_syft.simulate``)
both build their sites here, so a simulated site checks, charges and masks exactly as a
deployed one; they differ only in where the ledger and the journal live and whose key signs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fl_syft.owner.guard import Guard
from fl_syft.owner.ledger import Ledger
from fl_syft.owner.policy import OwnerPolicy
from fl_syft.owner.secagg import SecAggSite

if TYPE_CHECKING:
    from nacl.signing import SigningKey


def assemble(name: str, policy: OwnerPolicy, rows: int, *, open_ledger: Callable[[float, float], Ledger],
             signing_key: SigningKey, secagg_journal: Path,
             audit: Callable[[dict], None] = lambda entry: None) -> Guard:
    """The guard of site ``name`` holding ``rows`` rows under the owner's ``policy`` (resolved and
    checked for them; raises ConfigError). Under DP ``open_ledger(epsilon, delta)`` opens the rows'
    ledger and the noisy row count is published (charged once per ledger); with peers,
    ``signing_key`` (the site's identity) signs its round keys and ``secagg_journal`` records the
    secure-aggregation steps it took; ``audit`` receives the guard's entries."""
    site = policy.for_rows(rows)
    ledger = open_ledger(site.epsilon, site.delta) if site.dp else None
    secure = None
    if site.peers:
        secure = SecAggSite(name, lambda message: signing_key.sign(message).signature, site.peers, site.threshold,
                            secagg_journal)
    guard = Guard(name, site, rows, ledger, audit, secure)
    if site.dp:
        guard.publish_row_count()
    return guard
