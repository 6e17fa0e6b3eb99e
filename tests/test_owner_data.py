"""An owner's data file: every bad value named by row and column with the fix, the row minimum
found before any site starts, and no file (a third party's) able to take the owner's memory."""

from __future__ import annotations

import gzip
import io
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest
from conftest import error_line

from fl_syft.cli import main
from fl_syft.common.data import MAX_DATA_BYTES, DataError, read_idx
from fl_syft.owner.csv_rows import read_csv_shard
from fl_syft.owner.data import load_shard
from fl_syft.owner.network import free_base_port

RNG = np.random.default_rng(0)
X = RNG.integers(0, 256, (30, 784), dtype=np.uint8)
Y = np.arange(30) % 10
HEADER = "label," + ",".join(f"pixel{i}" for i in range(784))
LIMIT = f"{MAX_DATA_BYTES:,}"
SMALL = 8 * 2**20  # what a bounded loader may allocate while refusing a file that declares gigabytes


def csv_lines(header: bool = True) -> list[str]:
    return ([HEADER] if header else []) + [",".join(map(str, row)) for row in np.column_stack([Y, X])]


def with_cell(lines: list[str], line: int, column: int, text: str) -> list[str]:
    """``lines`` with the cell at file row ``line`` (1-based), column ``column`` (1-based) set to ``text``."""
    cells = lines[line - 1].split(",")
    cells[column - 1] = text
    return [*lines[:line - 1], ",".join(cells), *lines[line:]]


@pytest.mark.parametrize("lines, message", [
    (with_cell(csv_lines(), 7, 14, "300"), "row 7 column 'pixel12' (the 14th): 300 is not a pixel value 0..255"),
    (with_cell(csv_lines(False), 6, 14, "300"), "row 6 column 14: 300 is not a pixel value 0..255"),
    (with_cell(csv_lines(), 3, 1, "10"), "row 3 column 'label' (the 1st): 10 is not a label 0..9"),
    (with_cell(csv_lines(), 5, 2, "-1"), "row 5 column 'pixel0' (the 2nd): -1 is not a pixel value 0..255"),
    (with_cell(csv_lines(), 9, 101, "3.5"), "row 9 column 'pixel99' (the 101st): '3.5' is not a pixel value 0..255"),
    (with_cell(csv_lines(), 4, 23, ""), "row 4 column 'pixel21' (the 23rd): an empty cell is not a pixel value"),
    (with_cell(csv_lines(), 8, 785, "9" * 30), "row 8 column 'pixel783' (the 785th): '99999999999999999999' is not"),
    (with_cell(csv_lines(), 4, 3, "1,2"), "row 4: has 786 columns, needs 785 (a label and 784 pixels)"),
    (["1,2,3"], "row 1: has 3 columns, needs 785"),
    # blank lines are rows as the file counts them: the bad cell is on the file's 10th line
    (with_cell(csv_lines()[:2] + ["", ""] + csv_lines()[2:], 10, 2, "x"), "row 10 column 'pixel0' (the 2nd): 'x'"),
])
def test_a_bad_csv_value_is_named_by_row_and_column_with_the_fix(tmp_path, lines, message):
    path = tmp_path / "rows.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_shard(str(path))
    assert str(err.value).startswith(f"{path} {message}") and str(err.value).endswith(": fix the file")
    assert "\n" not in str(err.value)


def test_a_csv_label_column_may_be_anywhere_and_windows_line_ends_are_rows(tmp_path):
    path = tmp_path / "rows.csv"
    rows = [",".join(map(str, r)) for r in np.column_stack([X, Y])]
    lines = [",".join([*[f"p{i}" for i in range(784)], "Label"]), *rows]
    path.write_bytes(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert np.array_equal(load_shard(str(path)), np.column_stack([X, Y]))


def npz_with(tmp_path, **arrays) -> str:
    np.savez(tmp_path / "rows.npz", **arrays)
    return str(tmp_path / "rows.npz")


@pytest.mark.parametrize("arrays, message", [
    ({"X": X, "y": np.where(np.arange(30) == 6, 12, Y)}, "rows.npz row 7 (y): 12 is not a label 0..9: fix the file"),
    ({"X": X, "y": Y - 1}, "rows.npz row 1 (y): -1 is not a label 0..9: fix the file"),
    ({"X": X.astype(np.int64), "y": Y}, "rows.npz: X is int64; it must be uint8 pixels 0..255: save X.astype"),
    ({"X": X.reshape(30, 28, 28), "y": Y}, "rows.npz: X is (30, 28, 28); it must be (n, 784)"),
    ({"X": X, "y": Y[:29]}, "rows.npz: y is (29,); it must be (30,), one label per row of X: fix the file"),
    ({"X": X, "y": Y.astype(float)}, "rows.npz: y is float64; labels must be integers 0..9: fix the file"),
    ({"X": X, "y": np.array([None] * 30)}, "rows.npz: y.npy holds Python objects, which are never unpickled"),
    ({"pixels": X}, "rows.npz: needs arrays X (n, 784) uint8 and y (n,), has ['pixels']"),
    ({"X": X[:0], "y": Y[:0]}, "rows.npz: holds no rows"),
])
def test_a_bad_npz_is_named_with_the_fix(tmp_path, arrays, message):
    with pytest.raises(DataError) as err:
        load_shard(npz_with(tmp_path, **arrays))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_column_major_or_compressed_npz_reads_as_written(tmp_path):
    np.savez_compressed(tmp_path / "rows.npz", X=np.asfortranarray(X), y=Y.astype(">i2"))
    assert np.array_equal(load_shard(str(tmp_path / "rows.npz")), np.column_stack([X, Y]))


def test_the_limit_admits_the_whole_of_mnist(tmp_path, mnist):
    X_all, y_all = np.concatenate([mnist.X_train, mnist.X_test]), np.concatenate([mnist.y_train, mnist.y_test])
    np.savez(tmp_path / "mnist.npz", X=X_all, y=y_all)
    shard = load_shard(str(tmp_path / "mnist.npz"))
    assert shard.shape == (70000, 785)
    assert np.array_equal(shard[:, :784], X_all) and np.array_equal(shard[:, 784], y_all)


def peak_while_refused(load, *args) -> tuple[str, int]:
    """(the refusal's message, the most memory Python and numpy held while ``load`` refused)."""
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as err:
            load(*args)
        return str(err.value), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def npy_header(shape: tuple, descr: str = "|u1") -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue()


def write_member(z: zipfile.ZipFile, name: str, header: bytes, zeros: int) -> None:
    with z.open(name, "w") as f:
        f.write(header)
        chunk = bytes(2**24)
        while zeros > 0:
            f.write(chunk[:zeros])
            zeros -= len(chunk)


def test_a_small_npz_that_decompresses_to_millions_of_rows_is_refused_before_it_is_read(tmp_path):
    """The file of the report: ~1 MB on disk, 1.37M rows (1.07 GB) once decompressed."""
    path, n = tmp_path / "bomb.npz", 1_370_000
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        write_member(z, "X.npy", npy_header((n, 784)), n * 784)
        write_member(z, "y.npy", npy_header((n,), "<i8"), n * 8)
    assert path.stat().st_size < 2 * 2**20
    message, peak = peak_while_refused(load_shard, str(path))
    assert f"declares X and y {n * 784 + n * 8 + 256:,} bytes decompressed, more than the {LIMIT}" in message
    assert "split it across sites" in message and peak < SMALL


def test_an_npy_header_declaring_more_than_the_limit_is_refused_from_the_header(tmp_path):
    path = tmp_path / "rows.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("X.npy", npy_header((1_370_000, 784)) + bytes(10))
        z.writestr("y.npy", npy_header((1_370_000,)) + bytes(10))
    message, peak = peak_while_refused(load_shard, str(path))
    assert f"X.npy declares (1370000, 784) uint8 = 1,074,080,000 bytes, more than the {LIMIT}" in message
    assert peak < SMALL


def test_a_zip_that_understates_its_members_size_is_never_decompressed_beyond_it(tmp_path):
    """The zip says X.npy holds exactly what its header declares; its stream holds 40 MB more."""
    path = tmp_path / "rows.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        write_member(z, "X.npy", npy_header((30, 784)), 30 * 784 + 40 * 2**20)
        z.writestr("y.npy", npy_header((30,), "<i8") + Y.astype("<i8").tobytes())
    raw = bytearray(path.read_bytes())
    entry = raw.index(b"PK\x01\x02")  # the central directory's entry of X.npy: its uncompressed size at +24
    assert raw[entry + 46: entry + 51] == b"X.npy"
    raw[entry + 24: entry + 28] = struct.pack("<I", 128 + 30 * 784)
    path.write_bytes(bytes(raw))
    message, peak = peak_while_refused(load_shard, str(path))
    assert "not a readable .npz file (Bad CRC-32 for file 'X.npy')" in message and peak < SMALL


def test_an_idx_gz_is_read_no_further_than_its_header_declares(tmp_path):
    big, liar = tmp_path / "big-idx3-ubyte.gz", tmp_path / "liar-idx3-ubyte.gz"
    big.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (400_000, 28, 28))))
    with gzip.open(liar, "wb", compresslevel=1) as f:  # declares 3 images, decompresses to 40 MB
        f.write(bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (3, 28, 28)))
        f.write(bytes(40 * 2**20))
    message, peak = peak_while_refused(read_idx, big)
    assert f"declares (400000, 28, 28) = 313,600,000 bytes, more than the {LIMIT}" in message and peak < SMALL
    message, peak = peak_while_refused(read_idx, liar)
    assert "holds more bytes than its header (3, 28, 28) needs" in message and peak < SMALL


def test_a_csv_line_too_long_to_be_a_row_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes(HEADER.encode() + b"\n" + b"1," * 20 * 2**20)
    message, peak = peak_while_refused(load_shard, str(path))
    assert message == (f"{path} row 2: longer than 64 KiB (a row of 785 values is at most ~3.2 KB): not a CSV of "
                       "pixel rows: fix the file") and peak < SMALL


def test_a_csv_with_more_rows_than_a_site_may_hold_is_refused(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("\n".join(csv_lines()) + "\n")
    assert len(read_csv_shard(path, 30)) == 30
    with pytest.raises(DataError, match=r"rows.csv: holds more than 29 rows, the most one site's file may hold "
                                        r"\(fl_syft.common.data.MAX_ROWS\): split it across sites"):
        read_csv_shard(path, 29)


def test_serve_refuses_too_few_rows_before_any_site_starts(tmp_path, capsys):
    """The owner's --min-rows is checked against the file's rows as soon as they are read: exit 2,
    one line naming the fix, and no site directory (no datasite process was started)."""
    tiny = tmp_path / "tiny.csv"
    tiny.write_text("\n".join(csv_lines()[:21]) + "\n")  # a header and 20 rows
    state = tmp_path / "state"
    rc = main(["serve", "--data", str(tiny), "--name", "clinic", "--port", str(free_base_port(1)),
               "--state-dir", str(state)])
    line = error_line(capsys.readouterr().err)
    assert rc == 2
    assert line == ("fl-syft: error: clinic: --min-rows 50 is more than the 20 rows this site holds: give it at least "
                    "50 rows, or lower --min-rows to 20 or less (the owner's choice: no call trains or evaluates on "
                    "fewer rows)")
    assert not (state / "clinic").exists()

