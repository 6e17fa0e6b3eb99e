"""Atomic, owner-only file writes: a crash never leaves half a file, and no one else can read it."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np


def write_private(path: Path, content: str | bytes) -> None:
    """Write ``path`` readable only by its owner (0600 from creation, no window), atomically."""
    _write_atomic(path, "wb" if isinstance(content, bytes) else "w", lambda f: f.write(content))


def save_private_array(path: Path, array: np.ndarray) -> None:
    """``np.save`` to ``path`` as :func:`write_private` writes (streamed: no second copy in memory)."""
    _write_atomic(path, "wb", lambda f: np.save(f, array, allow_pickle=False))


def _write_atomic(path: Path, mode: str, write: Callable[[IO], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def to_json(obj: object) -> str:
    """Strict JSON (NaN and infinity refused: they are not JSON); numpy values as plain numbers."""
    return json.dumps(obj, indent=2, default=_plain, allow_nan=False) + "\n"


def write_json(path: Path, obj: object) -> None:
    """:func:`to_json` written atomically with :func:`write_private`."""
    write_private(path, to_json(obj))


def array_sha256(array: np.ndarray) -> str:
    """SHA-256 (hex) of an array's bytes in C order: the identity of a set of rows or images."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _plain(value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
