import gzip
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from fl_syft.common import data
from fl_syft.common.data import DataError, load_mnist, read_idx, read_mnist_pickle, write_idx


def test_embedded_is_standard_mnist(mnist):
    assert mnist.X_train.shape == (60000, 784) and mnist.X_train.dtype == np.uint8
    assert mnist.X_test.shape == (10000, 784) and mnist.y_test.shape == (10000,)
    assert mnist.y_train.dtype == np.int64
    assert np.array_equal(np.bincount(mnist.y_test), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    assert mnist.X_train.max() == 255 and mnist.X_train.min() == 0


def test_embedded_second_load_reads_the_cache_not_the_pickle(mnist, monkeypatch):
    def no_pickle(*args):
        raise AssertionError("the embedded pickle was read again")

    monkeypatch.setattr(data, "read_mnist_pickle", no_pickle)
    again = load_mnist("embedded")
    assert np.array_equal(again.X_train, mnist.X_train) and np.array_equal(again.y_test, mnist.y_test)


def test_first_load_rejects_wrong_hash(tmp_path):
    fake = tmp_path / "mnist.pkl.gz"
    fake.write_bytes(gzip.compress(pickle.dumps(((1, 2), (3, 4), (5, 6)))))
    with pytest.raises(DataError, match=r"mnist.pkl.gz: SHA-256 .* does not match"):
        read_mnist_pickle(fake, data.EMBEDDED_SHA256)


def test_unpickler_refuses_code(tmp_path):
    evil = tmp_path / "evil.pkl.gz"
    evil.write_bytes(gzip.compress(b"cos\nsystem\n(S'echo pwned'\ntR."))
    digest = data.hashlib.sha256(evil.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="forbidden global os.system"):
        read_mnist_pickle(evil, digest)


def test_corrupted_cache_is_rebuilt(tmp_path, monkeypatch, mnist):
    monkeypatch.setenv("FL_SYFT_CACHE_DIR", str(tmp_path))
    cache = tmp_path / f"mnist-embedded-{data.EMBEDDED_SHA256[:12]}.npz"
    cache.write_bytes(b"not an npz")
    assert np.array_equal(load_mnist("embedded").y_train, mnist.y_train)
    with np.load(cache) as z:
        assert z["X_train"].shape == (60000, 784)


def test_idx_round_trip(small_idx, mnist):
    loaded = load_mnist(f"idx:{small_idx}")
    assert np.array_equal(loaded.X_train, mnist.X_train[:3000])
    assert np.array_equal(loaded.y_test, mnist.y_test[:1000])


@pytest.mark.parametrize("damage, message", [
    (lambda b: b"\x00\x00\x09\x03" + b[4:], "bad magic number"),
    (lambda b: b[:-10], "truncated"),
    (lambda b: b[:6], "truncated header"),
])
def test_idx_damaged_file_is_named(tmp_path, damage, message):
    path = tmp_path / "t10k-images-idx3-ubyte"
    write_idx(path, np.zeros((3, 28, 28), np.uint8))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=rf"t10k-images-idx3-ubyte: .*{message}"):
        read_idx(path)


def test_idx_truncated_gzip_is_named(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    write_idx(path, np.zeros(5, np.uint8))
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: truncated or not gzip"):
        read_idx(path)


def test_idx_mismatched_counts(tmp_path):
    for prefix, n_images, n_labels in (("train", 4, 3), ("t10k", 2, 2)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", np.zeros((n_images, 28, 28), np.uint8))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.zeros(n_labels, np.uint8))
    with pytest.raises(DataError, match="train has 4 images but 3 labels"):
        load_mnist(f"idx:{tmp_path}")


def test_idx_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte: missing"):
        load_mnist(f"idx:{tmp_path}")


def test_idx_rejects_other_image_sizes(tmp_path):
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", np.zeros((2, 32, 32), np.uint8))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(DataError, match="must be 28x28"):
        load_mnist(f"idx:{tmp_path}")


def test_unknown_source():
    with pytest.raises(DataError, match="unknown data source 'mnist.csv'"):
        load_mnist("mnist.csv")


def test_openml_offline_is_one_clear_line(tmp_path):
    # In a subprocess: urllib caches the proxy settings of its first request process-wide.
    env = {**os.environ, "FL_SYFT_CACHE_DIR": str(tmp_path),
           "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}  # offline even with a network
    done = subprocess.run([sys.executable, "-m", "fl_syft", "simulate", "--data", "openml"],
                          capture_output=True, text=True, env=env, timeout=120)
    errors = [line for line in done.stderr.splitlines() if line.startswith("fl-syft:")]
    assert done.returncode == 1 and len(errors) == 1, done.stderr
    assert "could not fetch mnist_784 from OpenML" in errors[0] and "--data embedded" in errors[0]
    assert "Traceback" not in done.stderr
