"""What a start finds and writes in the state directory before any site process runs.

The passwords (``secrets.json``), each site's identity (``site-N/identity.json``: kept across
restarts, so the federation's peers know a site's verify key before it starts) and the rows'
privacy budgets: no two sites may hold the same rows, a kept ledger must compose at the delta
the policy asks for, and a fresh start over rows served before keeps what they spent (unless
the owner resets it). All of it is checked before anything is written (``owner.launch``).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path

import numpy as np

from fl_syft.common.errors import ConfigError, FlSyftError
from fl_syft.common.files import write_json
from fl_syft.owner.datasite import shard_sha256
from fl_syft.owner.ledger import SITE_LINK, DeltaChanged, LedgerStore, delta_changed_message, summary
from fl_syft.owner.policy import OwnerPolicy

log = logging.getLogger("fl_syft.launch")


class LaunchError(FlSyftError):
    """The datasites cannot be started; the message says why and what to do."""


def resolve_secrets(state: Path, keep: bool) -> dict[str, str]:
    """Passwords from FL_SYFT_ADMIN_PASSWORD / FL_SYFT_DS_PASSWORD, else kept (with --keep)
    or newly generated; written to ``<state>/secrets.json`` (0600)."""
    path = state / "secrets.json"
    saved = json.loads(path.read_text()) if keep and path.exists() else {}
    values = {
        "admin_password": os.environ.get("FL_SYFT_ADMIN_PASSWORD") or saved.get("admin_password")
        or secrets.token_urlsafe(18),
        "ds_password": os.environ.get("FL_SYFT_DS_PASSWORD") or saved.get("ds_password")
        or secrets.token_urlsafe(18),
    }
    write_json(path, values)
    return values


def site_identity(site_dir: Path, fresh: bool) -> dict:
    """The datasite's identity (server uid, ed25519 signing key, its verify key; hex), made on a
    fresh start and kept in ``identity.json`` (0600), so restarts keep datasets and approvals."""
    import uuid

    from nacl.signing import SigningKey

    path = site_dir / "identity.json"
    if path.exists() and not fresh:
        saved = json.loads(path.read_text())
    else:
        key = SigningKey.generate()
        saved = {"server_uid": uuid.uuid4().hex, "signing_key": bytes(key).hex()}
        write_json(path, saved)
    return {**saved, "verify_key": SigningKey(bytes.fromhex(saved["signing_key"])).verify_key.encode().hex()}


def held_rows(site_dir: Path, shard: np.ndarray | None) -> tuple[str, int] | None:
    """(SHA-256, rows) of what the site will hold: the shard to upload, or (kept) what its
    ``data.json`` says it holds; None if unknown."""
    if shard is not None:
        return shard_sha256(shard), len(shard)
    path = site_dir / "data.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return data["sha256"], int(data["rows"])


def check_ledgers(state: Path, names: list[str], held: list[tuple[str, int] | None], policy: OwnerPolicy,
                   reset: bool) -> None:
    """Before anything is written: no two sites hold the same rows (their budget is one ledger),
    and a kept ledger composes at the delta the policy asks for (else start refuses)."""
    seen: dict[str, str] = {}
    for name, rows in zip(names, held, strict=True):
        if rows and rows[0] in seen:
            raise LaunchError(f"{seen[rows[0]]} and {name} would hold the same rows (SHA-256 {rows[0][:12]}), "
                              "whose privacy budget is one ledger: give each site its own rows")
        if rows:
            seen[rows[0]] = name
    if reset or not policy.privacy.dp:
        return
    store = LedgerStore(state)
    for name, rows in zip(names, held, strict=True):
        if not rows:
            continue
        legacy = summary(state / name / SITE_LINK)  # a ledger from before the store, adopted at start
        kept = store.summary(rows[0]) or (legacy if legacy and legacy.data_sha256 == rows[0] else None)
        asked = policy.delta_for(rows[1])
        if kept and kept.delta != asked:
            raise DeltaChanged(delta_changed_message(rows[0], kept.delta, asked))


def check_rows(names: list[str], held: list[tuple[str, int] | None], policy: OwnerPolicy) -> None:
    """Before any site starts: the owner's policy can protect the rows each site will hold (its
    ``--min-rows``, its delta below 1/rows). Each site checks it again for itself; this finds it in
    a second instead of after a site process has started PySyft."""
    for name, rows in zip(names, held, strict=True):
        if rows:
            try:
                policy.for_rows(rows[1])
            except ConfigError as e:
                raise ConfigError(f"{name}: {e.template}") from None


def note_kept_budget(store: LedgerStore, name: str, data_sha256: str) -> None:
    """The budget belongs to the rows: a fresh start over rows served before keeps what they spent."""
    kept = store.summary(data_sha256)
    if kept:
        log.info("%s: rows %s keep their privacy budget: epsilon %.3g of %g spent (their ledger: %s; "
                 "--reset-privacy-budget starts it again)", name, data_sha256[:12], kept.epsilon_spent,
                 kept.epsilon_total, store.path(data_sha256))


def reset_budget(store: LedgerStore, name: str, data_sha256: str) -> dict | None:
    """The owner's --reset-privacy-budget: the rows' ledger renamed (kept, readable), a warning
    line, and the audit entry to write (None if the rows had no ledger)."""
    old, retired = store.summary(data_sha256), store.retire(data_sha256)
    if old is None:
        log.warning("%s: --reset-privacy-budget: rows %s have no privacy ledger yet; nothing to reset",
                    name, data_sha256[:12])
        return None
    message = (f"the privacy budget of rows {data_sha256[:12]} was reset by the owner: epsilon "
               f"{old.epsilon_spent:.3g} of {old.epsilon_total:g} (delta {old.delta:g}) had been spent")
    log.warning("%s: --reset-privacy-budget: %s; the old ledger is kept as %s", name, message, retired)
    return {"event": "privacy budget reset", "by": "owner", "message": message, "data_sha256": data_sha256,
            "epsilon_spent": old.epsilon_spent, "epsilon_total": old.epsilon_total, "delta": old.delta,
            "old_ledger": str(retired)}
