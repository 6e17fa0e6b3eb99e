"""The data owner's state directory: one running deployment at a time, readable by the owner only.

It holds private rows (the site databases), secrets and the audit log, so: a lock (held by
the running launcher or ``serve``, and by each site process on its own directory, released
by the kernel when the process ends, however it ends) keeps a second start from touching it,
and everything under it is 0700/0600.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import time
from pathlib import Path

from fl_syft.common.errors import FlSyftError

log = logging.getLogger("fl_syft.state")

LOCK_NAME = ".lock"


class StateLocked(FlSyftError):
    """The state directory belongs to a running deployment."""


class StateLock:
    """An exclusive ``flock`` on ``<directory>/.lock``, which also records who holds it.

    ``flock`` locks belong to the open file: the kernel drops them when the holder exits,
    even by SIGKILL, so a lock left by a dead process is never mistaken for a live one.
    """

    def __init__(self, directory: Path, what: str):
        self.directory, self.what = Path(directory), what
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> StateLock:
        """Take the lock or raise StateLocked naming the process that holds it. Creates only
        the directory (0700) and the lock file (0600): nothing else is touched either way."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StateLocked(f"{self.directory} is in use by {holder}: stop it first, or choose another "
                              "{state_dir}") from None
        previous = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if previous:
            log.info("%s: taking over from %s, which is no longer running", self.directory, previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.what} (PID {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})".encode(), 0)
        self._fd = fd
        return self

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the lock up (the file stays; an empty one means: free)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(directory: Path) -> str | None:
    """Who holds the lock on ``directory`` right now, or None if no one does."""
    path = Path(directory) / LOCK_NAME
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)


def make_private(directory: Path) -> int:
    """chmod ``directory`` and everything under it to owner-only (dirs 0700, files 0600,
    keeping the owner's execute bit); return how many entries were group- or world-accessible."""
    tightened = 0
    for path in [Path(directory), *Path(directory).rglob("*")]:
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:  # removed meanwhile
            continue
        if stat.S_ISLNK(mode):
            continue
        if mode & 0o077:
            tightened += 1
            os.chmod(path, stat.S_IMODE(mode) & 0o700)
    return tightened
