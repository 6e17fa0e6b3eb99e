"""A data owner's own rows (``fl-syft serve --data``), read and validated on the owner's machine.

``idx:DIR`` (its train files), ``FILE.npz`` (``X`` uint8 (n, 784), ``y`` (n,)) or ``FILE.csv``
(a label column and 784 pixel columns, with or without a header); always one (n, 785) uint8
shard, the format a datasite stores. Only the owner reads these files: nothing here is shared.
A file may come from a third party: what it declares is bounded (``MAX_DATA_BYTES``) before
it is read and nothing beyond that is decompressed; a bad value is named by its row (and
column), with the fix, before any site starts.
"""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np

from fl_syft.common.data import IDX_FILES, MAX_DATA_BYTES, MAX_ROWS, N_CLASSES, N_FEATURES, find_idx, read_idx
from fl_syft.common.errors import DataError, one_line
from fl_syft.owner.csv_rows import read_csv_shard

NPZ_SLACK = 2**20  # the zip's and the .npy headers' bytes around the arrays
CHUNK_BYTES = 4 * 2**20  # decompressed and copied into the shard at a time
MAX_NPY_HEADER = 10_000  # numpy's own limit for a header it parses safely


def load_shard(source: str) -> np.ndarray:
    """A data owner's rows as one (n, 785) uint8 shard (784 pixels 0..255, then the label 0..9).

    ``source``: ``idx:DIR`` (the train images/labels there), ``FILE.npz`` or ``FILE.csv``. A file
    that would decompress to more than ``MAX_DATA_BYTES`` is refused before it is read."""
    if source.startswith("idx:") and len(source) > 4:
        directory = Path(source[4:])
        if not directory.is_dir():
            raise DataError(f"{directory}: not a directory (expected MNIST IDX files)")
        labels = find_idx(directory, IDX_FILES["train_labels"])
        X, y = read_idx(find_idx(directory, IDX_FILES["train_images"])), read_idx(labels)
        if X.ndim != 3 or X.shape[1:] != (28, 28) or y.shape != (X.shape[0],):
            raise DataError(f"{directory}: expected n 28x28 images and n labels, got {X.shape} and {y.shape}")
        if not len(y):
            raise DataError(f"{directory}: holds no rows")
        _check_labels(y, str(labels))
        return np.column_stack([X.reshape(len(X), N_FEATURES), y])
    path = Path(source)
    if path.suffix == ".npz":
        return _shard_from_npz(path)
    if path.suffix == ".csv":
        return read_csv_shard(path, MAX_ROWS)
    raise DataError(f"unknown data {source!r}: use idx:DIR, FILE.npz (X, y) or FILE.csv (label + 784 pixels)")


def _check_labels(y: np.ndarray, origin: str, column: str = "") -> None:
    bad = (y < 0) | (y >= N_CLASSES)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(f"{origin} row {row + 1:,}{column}: {y[row]} is not a label 0..{N_CLASSES - 1}: fix the file")


def _too_large(path: Path, declared: str) -> DataError:
    return DataError(f"{path}: {declared}, more than the {MAX_DATA_BYTES:,} a site's file may hold "
                     f"({MAX_ROWS:,} rows; fl_syft.common.data.MAX_DATA_BYTES): split it across sites")


def _shard_from_npz(path: Path) -> np.ndarray:
    """``X`` (n, 784) uint8 and ``y`` (n,) integers 0..9 of an ``np.savez`` file, read as the shard.

    Nothing is trusted before it is bounded: the zip's declared sizes and the arrays' .npy
    headers (shape, dtype) are checked first, and then exactly what the headers declare is
    decompressed, a chunk at a time, into the shard (a member that holds more is refused)."""
    try:
        if path.stat().st_size > MAX_DATA_BYTES + NPZ_SLACK:
            raise _too_large(path, f"the file is {path.stat().st_size:,} bytes")
        with zipfile.ZipFile(path) as z:
            members = {info.filename.removesuffix(".npy"): info for info in z.infolist()}
            if not {"X", "y"} <= set(members):
                raise DataError(f"{path}: needs arrays X (n, 784) uint8 and y (n,), has {sorted(members)}")
            declared = members["X"].file_size + members["y"].file_size
            if declared > MAX_DATA_BYTES + NPZ_SLACK:
                raise _too_large(path, f"its zip declares X and y {declared:,} bytes decompressed")
            with z.open(members["X"]) as fx, z.open(members["y"]) as fy:
                x_shape, fortran, x_dtype = _npy_header(fx, path, members["X"])
                y_shape, _, y_dtype = _npy_header(fy, path, members["y"])
                n = _check_arrays(path, x_shape, x_dtype, y_shape, y_dtype)
                shard = np.empty((n, N_FEATURES + 1), np.uint8)
                pixels = shard[:, :N_FEATURES]
                _read_into(fx, pixels.T if fortran else pixels, path)
                y = np.frombuffer(_read_exactly(fy, n * y_dtype.itemsize, path), y_dtype)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path}: not a readable .npz file ({one_line(e, 200)})") from None
    _check_labels(y, str(path), " (y)")
    shard[:, N_FEATURES] = y
    return shard


def _npy_header(f: IO[bytes], path: Path, member: zipfile.ZipInfo) -> tuple[tuple, bool, np.dtype]:
    """(shape, fortran order, dtype) of the .npy array ``f`` starts with; its header's length is
    bounded before it is read, and the member must hold exactly the bytes the header declares."""
    magic = _read_exactly(f, 8, path)
    if magic[:6] != b"\x93NUMPY" or magic[6] not in (1, 2):
        raise DataError(f"{path}: {member.filename} is not an .npy array numpy writes (bad magic)")
    size = 2 if magic[6] == 1 else 4
    raw_length = _read_exactly(f, size, path)
    length = int.from_bytes(raw_length, "little")
    if length > MAX_NPY_HEADER:
        raise DataError(f"{path}: {member.filename} has a {length:,}-byte header: not an array numpy writes")
    header = io.BytesIO(raw_length + _read_exactly(f, length, path))
    read = np.lib.format.read_array_header_1_0 if magic[6] == 1 else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(header)
    if dtype.hasobject:
        raise DataError(f"{path}: {member.filename} holds Python objects, which are never unpickled: save numbers")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > MAX_DATA_BYTES:
        raise _too_large(path, f"its {member.filename} declares {shape} {dtype} = {nbytes:,} bytes")
    if member.file_size != 8 + size + length + nbytes:
        raise DataError(f"{path}: {member.filename} holds {member.file_size:,} bytes but its header {shape} {dtype} "
                        f"declares {8 + size + length + nbytes:,}: not a file np.savez wrote")
    return shape, fortran, dtype


def _check_arrays(path: Path, x_shape: tuple, x_dtype: np.dtype, y_shape: tuple, y_dtype: np.dtype) -> int:
    """The rows X and y hold, or DataError naming what is wrong and how to fix it."""
    if x_dtype != np.uint8:
        raise DataError(f"{path}: X is {x_dtype}; it must be uint8 pixels 0..255: save X.astype(np.uint8) once "
                        "its values are 0..255")
    if len(x_shape) != 2 or x_shape[1] != N_FEATURES:
        raise DataError(f"{path}: X is {x_shape}; it must be (n, {N_FEATURES}), one row of 28x28 pixels per image: "
                        f"save X.reshape(len(X), {N_FEATURES})")
    n = x_shape[0]
    if y_dtype.kind not in "iu":
        raise DataError(f"{path}: y is {y_dtype}; labels must be integers 0..{N_CLASSES - 1}: fix the file")
    if y_shape != (n,):
        raise DataError(f"{path}: y is {y_shape}; it must be ({n},), one label per row of X: fix the file")
    if n == 0:
        raise DataError(f"{path}: holds no rows")
    return n


def _read_into(f: IO[bytes], out: np.ndarray, path: Path) -> None:
    """Fill ``out`` (2-D uint8, rows in file order) from ``f``, CHUNK_BYTES at a time."""
    step = max(1, CHUNK_BYTES // out.shape[1])
    for start in range(0, len(out), step):
        part = out[start:start + step]
        part[...] = np.frombuffer(_read_exactly(f, part.size, path), np.uint8).reshape(part.shape)


def _read_exactly(f: IO[bytes], size: int, path: Path) -> bytes:
    raw = f.read(size)
    if len(raw) != size:
        raise DataError(f"{path}: truncated (an array ends early): not a file np.savez wrote")
    return raw
