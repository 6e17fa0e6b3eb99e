"""A site's audit log: one JSON line per decision and per privacy charge, appended, owner-only."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path


class AuditLog:
    """``audit.jsonl`` of one site; safe to write from the approver and the request threads at once."""

    def __init__(self, path: Path, site: str, on_write: Callable[[dict], None] = lambda entry: None):
        self.path, self.site, self.on_write = Path(path), site, on_write
        self._lock = threading.Lock()

    def write(self, entry: dict) -> None:
        """Append ``entry`` (with its time and site), then hand it to ``on_write`` (e.g. to log it)."""
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "site": self.site, **entry}
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, (json.dumps(entry) + "\n").encode())
            finally:
                os.close(fd)
        self.on_write(entry)

    def read(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.exists() else []
