"""A site's privacy budget ledger: every private release charged before its result exists.

Append-only JSON lines: a header naming the data (SHA-256 of the shard) and the budget, then
one line per charge. A charge is written and fsync'ed before the release is computed, so a
crash can waste budget but never under-count it; it is per site, whichever account calls;
check-and-charge is one step under a lock, so concurrent calls cannot both pass when only
one fits.

The budget belongs to the rows, for good: a site's ledger lives in the owner's ledger store
(:class:`LedgerStore`, ``<state root>/ledgers/<sha256>.jsonl``, 0700/0600), outside the site's
own directory, which a fresh start wipes. So it survives ``--keep`` restarts and fresh starts
over the same rows alike (``site-N/privacy-ledger.jsonl`` is a symlink to it); only the
owner's ``--reset-privacy-budget`` starts it again, and that renames the old ledger
(:meth:`LedgerStore.retire`), never deletes it. A later start may change the total (the
owner's current policy is the total; the spends stay), not the delta: the accountant
composes every release at one delta.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from fl_syft.common.accounting import epsilon
from fl_syft.common.errors import ConfigError, FlSyftError

LEDGERS = "ledgers"  # the store's directory under the owner's state root
SITE_LINK = "privacy-ledger.jsonl"  # in a site's directory: a symlink to its ledger in the store
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BudgetExceeded(FlSyftError):
    """A release would spend more than the site's budget; nothing was released."""


@dataclass(frozen=True)
class Summary:
    """What a ledger file says, without opening it for charges."""

    data_sha256: str
    epsilon_spent: float
    epsilon_total: float
    delta: float


class Ledger:
    """The ledger at ``path`` for the rows with SHA-256 ``data_sha256`` and budget (``total``, ``delta``)."""

    def __init__(self, path: Path, data_sha256: str, total: float, delta: float):
        self.path, self.data_sha256, self.total, self.delta = Path(path), data_sha256, total, delta
        self._lock = threading.Lock()  # uvicorn serves calls from several threads
        self._noise: list[float] = []  # every release so far, as noise multipliers
        self.row_count: int | None = None  # the noisy row count, once published
        if self.path.exists():
            self._load()
        else:
            self._append({"kind": "header", "data_sha256": data_sha256, "epsilon_total": total, "delta": delta,
                          "created": _now()})

    def _load(self) -> None:
        lines = _read(self.path)
        header = lines[0]
        if header.get("data_sha256") != self.data_sha256:
            raise FlSyftError(f"{self.path} belongs to other data (SHA-256 {header.get('data_sha256', '?')[:12]}...): "
                              "start without --keep")
        if header["delta"] != self.delta:
            raise DeltaChanged(delta_changed_message(self.data_sha256, header["delta"], self.delta))
        for entry in lines[1:]:
            if entry["kind"] == "policy":
                continue
            self._noise += [entry["noise_multiplier"]] * entry["releases"]
            if entry["kind"] == "row count":
                self.row_count = entry["value"]
        if _total(lines) != self.total:  # the owner's current policy is the total; the spends stay
            self._append({"kind": "policy", "epsilon_total": self.total, "delta": self.delta, "time": _now()})

    @property
    def spent(self) -> float:
        return epsilon(self._noise, self.delta)

    def releases(self) -> dict[str, int]:
        """noise multiplier (repr) -> how many releases had it: enough to compose them exactly."""
        return dict(Counter(map(repr, self._noise)))

    def charge(self, noise_multiplier: float, releases: int, kind: str, **details: object) -> float:
        """:meth:`spend`, returning the epsilon spent with these releases."""
        return self.spend(noise_multiplier, releases, kind, **details)[1]

    def spend(self, noise_multiplier: float, releases: int, kind: str, **details: object) -> tuple[float, float]:
        """Record ``releases`` Gaussian releases with ``noise_multiplier`` before they happen;
        return the epsilon spent (before, with them): what this charge cost, exactly, whatever
        other calls charge meanwhile. Raises BudgetExceeded (nothing recorded) if they would take
        the site past its budget."""
        with self._lock:
            spent = self.spent
            after = epsilon([*self._noise, *[noise_multiplier] * releases], self.delta)
            if after > self.total * (1 + 1e-9):
                raise BudgetExceeded(f"privacy budget exhausted: epsilon {spent:.3g} of {self.total:g} is spent and "
                                     f"this call needs {after - spent:.3g} more")
            self._append({"kind": kind, "noise_multiplier": noise_multiplier, "releases": releases,
                          "epsilon_after": after, "time": _now(), **details})
            self._noise += [noise_multiplier] * releases
            if kind == "row count":
                self.row_count = int(details["value"])
            return spent, after

    def _append(self, entry: dict) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
            os.fsync(fd)  # on disk before the release is computed
        finally:
            os.close(fd)


class DeltaChanged(ConfigError):
    """A start asks for another delta than the rows' ledger composes its spends at."""


def delta_changed_message(data_sha256: str, kept: float, asked: float) -> str:
    return (f"{{dp_delta}} {asked:g}: the privacy ledger of rows {data_sha256[:12]} composes their spends at "
            f"delta {kept:g}: start with {{dp_delta}} {kept:g} to keep their budget, or with "
            "{reset_privacy_budget} to start it again")


def summary(path: Path) -> Summary | None:
    """The ledger at ``path`` in brief (None if there is none)."""
    return summarize(_read(Path(path))) if Path(path).exists() else None


def summarize(lines: list[dict]) -> Summary:
    """A ledger's entries (its file's lines, parsed) in brief."""
    header = lines[0]
    noise = [e["noise_multiplier"] for e in lines[1:] if e["kind"] != "policy" for _ in range(e["releases"])]
    return Summary(header["data_sha256"], epsilon(noise, header["delta"]), _total(lines), header["delta"])


class LedgerStore:
    """The owner's ledgers, one per set of rows: ``<state root>/ledgers/<sha256>.jsonl``.

    A site's directory is ``<state root>/<site name>`` (the launcher's layout), so a site finds
    the store from its own directory. Nothing here is deleted: a fresh start leaves the store
    alone, and a reset renames the rows' ledger to ``<sha256>.reset-<time>.jsonl``."""

    def __init__(self, state_root: Path):
        self.root = Path(state_root) / LEDGERS

    def path(self, data_sha256: str) -> Path:
        if not _SHA256.match(data_sha256):
            raise FlSyftError(f"{data_sha256[:80]!r} is not a SHA-256 (64 lowercase hex digits)")
        return self.root / f"{data_sha256}.jsonl"

    def summary(self, data_sha256: str) -> Summary | None:
        return summary(self.path(data_sha256))

    def open(self, data_sha256: str, total: float, delta: float) -> Ledger:
        """The rows' ledger (made on first use), with the owner's current ``total``."""
        self._ensure()
        return Ledger(self.path(data_sha256), data_sha256, total, delta)

    def adopt(self, legacy: Path) -> Path | None:
        """Move a ledger kept in a site's own directory (the layout before the store) into the
        store, so that wiping the site's directory keeps it; return where it went (None if
        ``legacy`` is no such file). Were the store to hold one for the same rows already, both
        are kept: the site's goes beside it, renamed."""
        legacy = Path(legacy)
        if legacy.is_symlink() or not legacy.is_file():
            return None
        self._ensure()
        data_sha256 = _read(legacy)[0]["data_sha256"]
        target = self.path(data_sha256)
        if target.exists():
            target = self.root / f"{data_sha256}.from-{legacy.parent.name}-{_stamp()}.jsonl"
        os.replace(legacy, target)
        os.chmod(target, 0o600)
        return target

    def retire(self, data_sha256: str) -> Path | None:
        """Rename the rows' ledger out of the way (the owner resets their budget); return its
        new name, None if there was none. The history stays readable there."""
        path = self.path(data_sha256)
        if not path.exists():
            return None
        target = self.root / f"{data_sha256}.reset-{_stamp()}.jsonl"
        n = 1
        while target.exists():
            n += 1
            target = self.root / f"{data_sha256}.reset-{_stamp()}-{n}.jsonl"
        os.replace(path, target)
        return target

    def _ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)


def open_site_ledger(site_dir: Path, data_sha256: str, total: float, delta: float) -> Ledger:
    """The ledger of the rows a site holds, from the store under the site's state root, with
    ``site_dir/privacy-ledger.jsonl`` made a symlink to it (where the owner looks)."""
    site_dir = Path(site_dir)
    store, link = LedgerStore(site_dir.parent), site_dir / SITE_LINK
    store.adopt(link)  # a ledger from before the store (the launcher has usually moved it already)
    ledger = store.open(data_sha256, total, delta)
    link.unlink(missing_ok=True)
    link.symlink_to(os.path.relpath(ledger.path, site_dir))
    return ledger


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _total(lines: list[dict]) -> float:
    """The budget the owner set last: the header's, or the latest policy entry's."""
    return next(e["epsilon_total"] for e in reversed(lines) if e["kind"] in ("policy", "header"))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%S")
