"""A data owner's own rows: npz, CSV (with or without header), IDX; bad files named in one line."""

from __future__ import annotations

import numpy as np
import pytest

from fl_syft.common.data import DataError, write_idx
from fl_syft.owner.data import load_shard

RNG = np.random.default_rng(0)
X = RNG.integers(0, 256, (30, 784), dtype=np.uint8)
Y = np.arange(30) % 10


def expected() -> np.ndarray:
    return np.column_stack([X, Y]).astype(np.uint8)


def test_npz(tmp_path):
    np.savez(tmp_path / "rows.npz", X=X, y=Y)
    assert np.array_equal(load_shard(str(tmp_path / "rows.npz")), expected())


@pytest.mark.parametrize("header", [None, "label_first", "label_last"])
def test_csv_with_or_without_header(tmp_path, header):
    path = tmp_path / "rows.csv"
    pixels = [f"p{i}" for i in range(784)]
    if header == "label_last":
        np.savetxt(path, np.column_stack([X, Y]), fmt="%d", delimiter=",", header=",".join([*pixels, "label"]),
                   comments="")
    else:
        np.savetxt(path, np.column_stack([Y, X]), fmt="%d", delimiter=",", comments="",
                   header=",".join(["label", *pixels]) if header else "")
    assert np.array_equal(load_shard(str(path)), expected())


def test_idx_dir(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", X.reshape(-1, 28, 28))
    write_idx(tmp_path / "train-labels-idx1-ubyte", Y)
    assert np.array_equal(load_shard(f"idx:{tmp_path}"), expected())


@pytest.mark.parametrize("make, message", [
    (lambda p: np.savez(p / "r.npz", X=X.astype(np.float32), y=Y), "X is float32; it must be uint8 pixels 0..255"),
    (lambda p: np.savez(p / "r.npz", pixels=X), "needs arrays X (n, 784) uint8 and y (n,)"),
    (lambda p: np.savez(p / "r.npz", X=X, y=Y + 5), "row 6 (y): 10 is not a label 0..9: fix the file"),
    (lambda p: (p / "r.npz").write_bytes(b"not a zip"), "not a readable .npz file"),
    (lambda p: (p / "r.csv").write_text("0," + ",".join(["300"] * 784) + "\n"),
     "row 1 column 2: 300 is not a pixel value 0..255: fix the file"),
    (lambda p: (p / "r.csv").write_text("0," + ",".join(["0.5"] * 784) + "\n"),
     "row 1 column 2: '0.5' is not a pixel value 0..255: fix the file"),
    (lambda p: (p / "r.txt").write_text(""), "unknown data"),
])
def test_bad_files_are_named(tmp_path, make, message):
    make(tmp_path)
    path = next(tmp_path.iterdir())
    with pytest.raises(DataError, match=str(path.name)) as err:
        load_shard(str(path))
    assert message in str(err.value)


def test_the_scientists_quota_is_kept_across_restarts_and_written_whole(tmp_path):
    import stat

    from fl_syft.owner.syft_patches import ScientistQuota

    quota = ScientistQuota(tmp_path / "quota.json", limit=100)
    assert quota.take("key-a", 60) and not quota.take("key-a", 50) and quota.take("key-b", 50)
    assert stat.S_IMODE((tmp_path / "quota.json").stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name != "quota.json"]  # no half-written file left
    again = ScientistQuota(tmp_path / "quota.json", limit=100)  # a restarted site
    assert not again.take("key-a", 50) and again.take("key-a", 40)
