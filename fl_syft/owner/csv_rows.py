"""A data owner's CSV of rows (a label column and 784 pixel columns), read with every size bounded.

The file may come from a third party, so it must not take the owner's memory: a line is read at
most :data:`MAX_LINE_BYTES` at a time, at most ``max_rows`` rows are kept, and lines are parsed a
block at a time (pandas' C parser) straight into the (n, 785) uint8 shard. A bad value is named
by its row and column as a person counts them in the file (1-based; the header is row 1).
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fl_syft.common.data import N_CLASSES, N_FEATURES
from fl_syft.common.errors import DataError

COLUMNS = N_FEATURES + 1
# A row of 785 values 0..255 is at most ~3.2 KB ("255," each), a header of 785 names a few tens of
# KB; a longer line is not a row of pixels, and reading it whole would let one line fill the memory.
MAX_LINE_BYTES = 64 * 1024
BLOCK_LINES = 2048  # parsed at once: ~13 MB of int64 while a block is checked
INTEGER = r"\s*[+-]?\d{1,9}\s*"  # a plain integer (no overflow in int64)

Line = tuple[int, bytes]  # (row as the file counts it, the line without its end)


def read_csv_shard(path: Path, max_rows: int) -> np.ndarray:
    """The rows of ``path`` as one (n, 785) uint8 shard (784 pixels, then the label), every value
    checked; DataError (one line: the row, the column, the value and the fix) otherwise. With a
    header the column named ``label`` is the label, else the first column."""
    try:
        f = path.open("rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        lines = _lines(f, path)
        first = next(lines, None)
        if first is None:
            raise DataError(f"{path}: holds no rows")
        _check_width(path, first)
        names = None
        if all(_is_number(cell) for cell in first[1].split(b",")):
            lines = itertools.chain([first], lines)
        else:
            names = [cell.strip().strip(b'"').decode("latin-1")[:40] for cell in first[1].split(b",")]
        lowered = [n.lower() for n in names or []]
        label = lowered.index("label") if "label" in lowered else 0
        order = [c for c in range(COLUMNS) if c != label] + [label]
        blocks, rows = [], 0
        while block := list(itertools.islice(lines, BLOCK_LINES)):
            rows += len(block)
            if rows > max_rows:
                raise DataError(f"{path}: holds more than {max_rows:,} rows, the most one site's file may hold "
                                "(fl_syft.common.data.MAX_ROWS): split it across sites")
            blocks.append(_parse(path, block, names, label)[:, order])
    if not blocks:
        raise DataError(f"{path}: holds no rows")
    return np.concatenate(blocks)


def _lines(f: BinaryIO, path: Path) -> Iterator[Line]:
    """The non-blank lines of ``f`` with their row numbers, none longer than MAX_LINE_BYTES."""
    for number in itertools.count(1):
        line = f.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_LINE_BYTES:
            raise DataError(f"{path} row {number:,}: longer than {MAX_LINE_BYTES // 1024} KiB (a row of {COLUMNS} "
                            "values is at most ~3.2 KB): not a CSV of pixel rows: fix the file")
        line = line.rstrip(b"\r\n")
        if line.strip():
            yield number, line


def _check_width(path: Path, line: Line) -> None:
    found = line[1].count(b",") + 1
    if found != COLUMNS:
        raise DataError(f"{path} row {line[0]:,}: has {found} columns, needs {COLUMNS} (a label and {N_FEATURES} "
                        "pixels): fix the file")


def _parse(path: Path, block: list[Line], names: list[str] | None, label: int) -> np.ndarray:
    """One block of lines as (len(block), 785) uint8 in the file's column order, every value checked."""
    import pandas as pd

    for line in block:
        _check_width(path, line)

    def read(**kwargs) -> pd.DataFrame:  # one line is one row: no quoting, no NA guessing, any bytes
        return pd.read_csv(io.BytesIO(b"\n".join(line for _, line in block)), header=None, quoting=csv.QUOTE_NONE,
                           na_filter=False, encoding="latin-1", **kwargs)

    frame = read()
    if all(dtype.kind in "iu" for dtype in frame.dtypes):
        values = frame.to_numpy()
    else:  # some cell is not a plain integer: read as text, so that the first one can be named
        text = read(dtype=str)
        plain = text.apply(lambda column: column.str.fullmatch(INTEGER))
        values = text.where(plain, "-1").astype(np.int64).to_numpy()  # -1: refused below
    bad = (values < 0) | (values > 255)
    bad[:, label] = (values[:, label] < 0) | (values[:, label] >= N_CLASSES)
    if bad.any():
        r, c = divmod(int(np.argmax(bad)), COLUMNS)
        raise _bad_value(path, block[r], c, names, label)
    return values.astype(np.uint8)


def _bad_value(path: Path, line: Line, column: int, names: list[str] | None, label: int) -> DataError:
    cell = line[1].split(b",")[column].strip().decode("latin-1")
    shown = cell if re.fullmatch(INTEGER, cell) else repr(cell[:20]) if cell else "an empty cell"
    what = f"a label 0..{N_CLASSES - 1}" if column == label else "a pixel value 0..255"
    named = f"{names[column]!r} (the {ordinal(column + 1)})" if names else str(column + 1)
    return DataError(f"{path} row {line[0]:,} column {named}: {shown} is not {what}: fix the file")


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st, ..."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _is_number(text: bytes) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
