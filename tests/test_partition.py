import numpy as np
import pytest

from fl_syft.common.errors import ConfigError
from fl_syft.common.partition import PartitionSpec, add_noise, label_histogram, make_shards, split_indices

Y = np.repeat(np.arange(10), 100)  # 1000 labels, 100 per class


def _assert_disjoint(parts, covered):
    together = np.concatenate(parts)
    assert len(np.unique(together)) == len(together) == covered


def test_iid_is_near_equal_disjoint_and_covers_all():
    parts = split_indices(Y, PartitionSpec(kind="iid", sites=3))
    assert sorted(len(p) for p in parts) == [333, 333, 334]
    _assert_disjoint(parts, 1000)


def test_same_seed_same_split_other_seed_differs():
    a = split_indices(Y, PartitionSpec(kind="dirichlet", sites=4, seed=1))
    b = split_indices(Y, PartitionSpec(kind="dirichlet", sites=4, seed=1))
    c = split_indices(Y, PartitionSpec(kind="dirichlet", sites=4, seed=2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_dirichlet_skews_labels_and_leaves_no_site_empty():
    parts = split_indices(Y, PartitionSpec(kind="dirichlet", sites=10, alpha=0.1))
    _assert_disjoint(parts, 1000)
    assert min(len(p) for p in parts) >= 10
    held = [len(np.unique(Y[p])) for p in parts]
    assert min(held) < 10  # strong skew: some site lacks some classes


def test_sizes_are_exact():
    parts = split_indices(Y, PartitionSpec(kind="sizes", sizes=(100, 300, 200, 400)))
    assert [len(p) for p in parts] == [100, 300, 200, 400]
    _assert_disjoint(parts, 1000)


@pytest.mark.parametrize("spec, message", [
    (PartitionSpec(sites=0), "sites must be at least 1"),
    (PartitionSpec(kind="dirichlet", alpha=0), "alpha must be > 0"),
    (PartitionSpec(kind="sizes", sizes=(600, 500)), "sizes add up to 1100 rows but the data has 1000"),
    (PartitionSpec(kind="sizes", sizes=()), "sizes needs positive row counts"),
    (PartitionSpec(sites=2, noisy_sites=(3,)), r"noisy_sites \[3\] out of range"),
    (PartitionSpec(kind="shuffle"), "partition must be one of"),
])
def test_bad_specs_name_the_setting(spec, message):
    """The message names the setting (a flag only on the command line: see test_cli_simulate)."""
    with pytest.raises(ConfigError, match=f"^{message}"):
        split_indices(Y, spec)


def test_noise_is_clipped_and_only_on_noisy_sites():
    X = np.full((1000, 784), 250, np.uint8)
    shards = make_shards(X, Y, PartitionSpec(sites=2, noisy_sites=(2,), noise_std=80))
    assert np.all(shards[0][:, :784] == 250)
    noisy = shards[1][:, :784]
    assert noisy.dtype == np.uint8 and noisy.std() > 40 and noisy.max() == 255
    assert np.array_equal(np.sort(np.concatenate([s[:, 784] for s in shards])), Y)  # labels untouched


def test_add_noise_zero_std_is_identity():
    X = np.arange(784, dtype=np.int64).reshape(1, 784).astype(np.uint8)
    assert np.array_equal(add_noise(X, 0.0, np.random.default_rng(0)), X)


def test_label_histogram_counts_rows():
    shards = make_shards(np.zeros((1000, 784), np.uint8), Y, PartitionSpec(sites=2))
    hist = label_histogram(shards)
    assert hist.shape == (2, 10) and hist.sum() == 1000 and np.array_equal(hist.sum(axis=0), np.full(10, 100))
