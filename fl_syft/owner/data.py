"""A data owner's own rows (``fl-syft serve --data``), read and validated on the owner's machine.

``idx:DIR`` (its train files), ``FILE.npz`` (``X`` uint8 (n, 784), ``y`` (n,)) or ``FILE.csv``
(a label column and 784 pixel columns, with or without a header); always one (n, 785) uint8
shard, the format a datasite stores. Only the owner reads these files: nothing here is shared.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fl_syft.common.data import IDX_FILES, N_CLASSES, N_FEATURES, find_idx, read_idx
from fl_syft.common.errors import DataError


def load_shard(source: str) -> np.ndarray:
    """A data owner's rows as one (n, 785) uint8 shard (784 pixels 0..255, then the label 0..9).

    ``source``: ``idx:DIR`` (the train images/labels there), ``FILE.npz`` or ``FILE.csv``.
    """
    if source.startswith("idx:") and len(source) > 4:
        directory = Path(source[4:])
        if not directory.is_dir():
            raise DataError(f"{directory}: not a directory (expected MNIST IDX files)")
        X = read_idx(find_idx(directory, IDX_FILES["train_images"]))
        y = read_idx(find_idx(directory, IDX_FILES["train_labels"]))
        if X.ndim != 3 or X.shape[1:] != (28, 28) or y.shape != (X.shape[0],):
            raise DataError(f"{directory}: expected n 28x28 images and n labels, got {X.shape} and {y.shape}")
        return _shard(X.reshape(len(X), N_FEATURES), y, source)
    path = Path(source)
    if path.suffix == ".npz":
        return _shard_from_npz(path)
    if path.suffix == ".csv":
        return _shard_from_csv(path)
    raise DataError(f"unknown data {source!r}: use idx:DIR, FILE.npz (X, y) or FILE.csv (label + 784 pixels)")


def _shard_from_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            if not {"X", "y"} <= set(z.files):
                raise DataError(f"{path}: needs arrays X (n, 784) uint8 and y (n,), has {sorted(z.files)}")
            X, y = z["X"], z["y"]
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    if X.dtype != np.uint8:
        raise DataError(f"{path}: X must be uint8 pixels 0..255, got {X.dtype}")
    return _shard(X, y, str(path))


def _shard_from_csv(path: Path) -> np.ndarray:
    import pandas as pd

    try:
        first = path.open().readline().split(",")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    header = not all(_is_number(cell) for cell in first)
    try:
        frame = pd.read_csv(path, header=0 if header else None)
    except (ValueError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: not a CSV of numbers ({' '.join(str(e).split())[:200]})") from None
    if frame.shape[1] != N_FEATURES + 1:
        raise DataError(f"{path}: needs a label column and {N_FEATURES} pixel columns, has {frame.shape[1]} columns")
    if frame.empty:
        raise DataError(f"{path}: holds no rows")
    names = [str(c).strip().lower() for c in frame.columns]
    label = names.index("label") if header and "label" in names else 0
    values = frame.to_numpy()
    if not np.issubdtype(values.dtype, np.integer):
        raise DataError(f"{path}: every value must be an integer (pixels 0..255, labels 0..9)")
    pixels = np.delete(values, label, axis=1)
    if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
        raise DataError(f"{path}: pixels must be 0..255")
    return _shard(pixels.astype(np.uint8), values[:, label], str(path))


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _shard(X: np.ndarray, y: np.ndarray, origin: str) -> np.ndarray:
    """Validated (n, 785) uint8 shard; refuses empty data and labels outside 0..9."""
    if X.ndim != 2 or X.shape[1] != N_FEATURES or y.shape != (X.shape[0],):
        raise DataError(f"{origin}: expected X (n, {N_FEATURES}) and y (n,), got {X.shape} and {y.shape}")
    if len(y) == 0:
        raise DataError(f"{origin}: holds no rows")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= N_CLASSES:
        raise DataError(f"{origin}: labels must be integers 0..{N_CLASSES - 1}")
    return np.column_stack([X, y.astype(np.uint8)]).astype(np.uint8)
