"""Shared fixtures: the real embedded MNIST, and a small IDX copy of it for fast end-to-end runs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from fl_syft.common.data import Mnist, cache_dir, load_mnist, write_idx
from fl_syft.common.features import MAPS, cached
from fl_syft.owner.policy import OwnerPolicy, owner_policy

warnings.filterwarnings("ignore", message="lbfgs failed to converge")


@pytest.fixture(scope="session")
def mnist() -> Mnist:
    return load_mnist("embedded")


@pytest.fixture(scope="session")
def small_idx(tmp_path_factory: pytest.TempPathFactory, mnist: Mnist) -> Path:
    """First 3000 train / 1000 test images of real MNIST, written as gzipped IDX files."""
    root = tmp_path_factory.mktemp("idx")
    parts = {"train": (mnist.X_train[:3000], mnist.y_train[:3000]),
             "t10k": (mnist.X_test[:1000], mnist.y_test[:1000])}
    for prefix, (X, y) in parts.items():
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", X.reshape(-1, 28, 28))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", y)
    return root


# Sites as the tests before differential privacy knew them: no DP, and a row minimum the
# small test shards (1500 rows, 75 held out) satisfy. DP is tested on its own.
PLAIN = ["--no-dp", "--min-rows", "50"]


def plain_policy() -> OwnerPolicy:
    return owner_policy(epsilon=None, min_rows=50)


def synthetic_shard(n: int, seed: int = 0, classes: int = 10) -> np.ndarray:
    """(n, 785) uint8 shard with class-dependent pixel patterns, so it is learnable."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    X = rng.integers(0, 60, (n, 784))
    for c in range(classes):
        X[y == c, c * 70:(c + 1) * 70] += 150
    return np.column_stack([X, y]).astype(np.uint8)


def error_line(stderr: str) -> str:
    """The single 'fl-syft: ...error...' line a failing command printed (and no traceback)."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("fl-syft:") and "error" in line]
    assert len(errors) == 1, stderr
    return errors[0]


def vetted_data(shard: np.ndarray, features: str = "pixels") -> dict:
    """A (n, 785) uint8 shard as a site's guard hands it to a vetted function on the feature map
    ``features``: {"X": (n, width) float32, "y": (n,) int64} (``owner.features.site_features``'s
    entry for that map, computed alone; kept in the data cache, as a simulation keeps its shards')."""
    return {"X": cached(MAPS[features], shard[:, :-1], cache_dir() / "features", "test shard"),
            "y": shard[:, -1].astype(np.int64)}


def width(features: str = "pixels") -> int:
    """Features per image on the map ``features`` (coef is (10, width))."""
    return MAPS[features].width
