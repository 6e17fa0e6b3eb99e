"""A site's privacy budget ledger: every private release charged before its result exists.

Append-only JSON lines in the site's state directory: a header naming the data (SHA-256 of
the shard) and the budget, then one line per charge. A charge is written and fsync'ed
before the release is computed, so a crash can waste budget but never under-count it; it
survives ``--keep`` restarts; it is per site, whichever account calls; check-and-charge
is one step under a lock, so concurrent calls cannot both pass when only one fits.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from fl_syft.common.accounting import epsilon
from fl_syft.common.errors import FlSyftError


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
        lines = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        header = lines[0]
        if header.get("data_sha256") != self.data_sha256:
            raise FlSyftError(f"{self.path} belongs to other data (SHA-256 {header.get('data_sha256', '?')[:12]}...): "
                              "start without --keep")
        for entry in lines[1:]:
            self._noise += [entry["noise_multiplier"]] * entry["releases"]
            if entry["kind"] == "row count":
                self.row_count = entry["value"]

    @property
    def spent(self) -> float:
        return epsilon(self._noise, self.delta)

    def releases(self) -> dict[str, int]:
        """noise multiplier (repr) -> how many releases had it: enough to compose them exactly."""
        return dict(Counter(map(repr, self._noise)))

    def charge(self, noise_multiplier: float, releases: int, kind: str, **details: object) -> float:
        """Record ``releases`` Gaussian releases with ``noise_multiplier`` before they happen;
        return the epsilon spent with them. Raises BudgetExceeded (nothing recorded) if they
        would take the site past its budget."""
        with self._lock:
            after = epsilon([*self._noise, *[noise_multiplier] * releases], self.delta)
            if after > self.total * (1 + 1e-9):
                spent = self.spent
                raise BudgetExceeded(f"privacy budget exhausted: epsilon {spent:.3g} of {self.total:g} is spent and "
                                     f"this call needs {after - spent:.3g} more")
            self._append({"kind": kind, "noise_multiplier": noise_multiplier, "releases": releases,
                          "epsilon_after": after, "time": _now(), **details})
            self._noise += [noise_multiplier] * releases
            if kind == "row count":
                self.row_count = int(details["value"])
            return after

    def _append(self, entry: dict) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
            os.fsync(fd)  # on disk before the release is computed
        finally:
            os.close(fd)


def summary(path: Path) -> Summary | None:
    """The ledger at ``path`` in brief (None if there is none)."""
    if not Path(path).exists():
        return None
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    header, noise = lines[0], [e["noise_multiplier"] for e in lines[1:] for _ in range(e["releases"])]
    return Summary(header["data_sha256"], epsilon(noise, header["delta"]), header["epsilon_total"], header["delta"])


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
