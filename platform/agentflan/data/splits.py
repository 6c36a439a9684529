"""Input parts: how one file is read by several tasks at once.

A 120 MB JSONL file read by one task runs its whole pass A on one core. So a file larger than
``data.split_bytes`` is cut into parts, each a Ray task of its own:

=========  ===============================================================================================
JSONL      byte ranges that end on a line break, each with the line number it starts at (the planner
           counts line breaks once, streaming, in constant memory): a quarantined row keeps its true
           ``file:line``
JSON       a top-level array is read by every part, and each part decodes only the elements whose index
           falls to it (``index % parts``): elements cannot be found without scanning, but scanning is cheap
           next to what pass A does with each record. Line numbers come from the same scan
parquet    ranges of row groups; a row's line is its row number in the file
=========  ===============================================================================================

Anything else (a small file, a JSON object, a hub dataset) is one part. Parts change which task reads a
record, never the record's id, line or content, so the output is the same however a file is cut.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agentflan.data.readers import iter_raw_items

_SCAN = 8 << 20  # bytes read at a time while planning (memory stays flat whatever the file's size)


@dataclass(frozen=True)
class Part:
    """One task's share of one input file."""

    path: str
    source: str
    kind: str
    split: str = "train"  # of a hub dataset
    unit: int = 0  # the part's index over all inputs: names its output shards
    mode: str = "whole"  # whole | bytes | stripe | row_groups
    start: int = 0  # bytes: first byte; row_groups: first group; stripe: this part's index
    stop: int = -1  # bytes: end byte; row_groups: end group; stripe: the number of parts
    first_line: int = 1  # bytes: the line number of the first byte; row_groups: of the first row

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_size(path: str) -> int:
    if "://" in path:
        fs, inner = _fs(path)
        return fs.get_file_info(inner).size
    return Path(path).stat().st_size


def _fs(path: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(path)


def _open(path: str):
    """A seekable binary file: local, or through pyarrow's filesystems (s3://, gs://, ...)."""
    if "://" in path:
        fs, inner = _fs(path)
        return fs.open_input_file(inner)
    return open(path, "rb")  # noqa: SIM115 - returned to a with-block


def plan_parts(path: str, source: str, kind: str, split: str, split_bytes: int) -> list[Part]:
    """The parts one input file is read in (see the module docstring)."""
    whole = [Part(path, source, kind, split)]
    if path.startswith("hf://") or file_size(path) <= split_bytes:
        return whole
    size = file_size(path)
    n = math.ceil(size / split_bytes)
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        with _open(path) as f:
            meta = pq.ParquetFile(f).metadata
        groups = meta.num_row_groups
        if groups < 2:
            return whole
        bounds = sorted({round(k * groups / min(n, groups)) for k in range(min(n, groups) + 1)})
        rows_before = [0]
        for g in range(groups):
            rows_before.append(rows_before[-1] + meta.row_group(g).num_rows)
        return [
            Part(path, source, kind, split, mode="row_groups", start=a, stop=b, first_line=rows_before[a] + 1)
            for a, b in zip(bounds, bounds[1:], strict=False)
        ]
    if path.endswith((".jsonl", ".ndjson")):
        return _line_ranges(path, source, kind, split, size, n)
    with _open(path) as f:
        head = f.read(4096).lstrip()
    if head[:1] != b"[":
        return whole  # one JSON object, or JSON lines in a .json file: read whole
    return [Part(path, source, kind, split, mode="stripe", start=k, stop=n) for k in range(n)]


def _line_ranges(path: str, source: str, kind: str, split: str, size: int, n: int) -> list[Part]:
    """``n`` byte ranges ending on line breaks (found by seeking), and the line each starts at (one streaming
    count of line breaks)."""
    cuts = [0]
    with _open(path) as f:
        for target in (size * k // n for k in range(1, n)):
            if target <= cuts[-1]:
                continue
            f.seek(target)
            pos = target
            while True:
                buf = f.read(1 << 16)
                if not buf:
                    pos = size
                    break
                k = buf.find(b"\n")
                if k >= 0:
                    pos += k + 1
                    break
                pos += len(buf)
            if cuts[-1] < pos < size:
                cuts.append(pos)
        lines, pending, offset, newlines = [1], cuts[1:], 0, 0
        f.seek(0)
        while pending and (chunk := f.read(_SCAN)):
            while pending and pending[0] <= offset + len(chunk):
                lines.append(1 + newlines + chunk.count(b"\n", 0, pending.pop(0) - offset))
            newlines += chunk.count(b"\n")
            offset += len(chunk)
    cuts.append(size)
    return [
        Part(path, source, kind, split, mode="bytes", start=a, stop=b, first_line=line)
        for a, b, line in zip(cuts[:-1], cuts[1:], lines, strict=True)
    ]


def plan(files: list[dict[str, Any]], split_bytes: int) -> list[Part]:
    """Every input file's parts, numbered in input order (a part's number names its output shards)."""
    parts = [
        p
        for f in files
        for p in plan_parts(f["path"], f["source"], f["kind"], f.get("split", "train"), split_bytes)
    ]
    return [Part(**{**p.to_dict(), "unit": i}) for i, p in enumerate(parts)]


def read_part(part: dict[str, Any], max_record_bytes: int) -> Iterator[dict[str, Any]]:
    """The raw items of one part, with their file's line numbers."""
    path, mode = part["path"], part["mode"]
    if mode == "bytes":
        with _open(path) as f:
            f.seek(part["start"])
            data = f.read(part["stop"] - part["start"])
        yield from iter_raw_items(path, data, max_record_bytes, first_line=part["first_line"])
        return
    if mode == "row_groups":
        import pyarrow.parquet as pq

        with _open(path) as f:
            table = pq.ParquetFile(f).read_row_groups(list(range(part["start"], part["stop"])))
        yield from iter_raw_items(path, table, max_record_bytes, first_line=part["first_line"])
        return
    with _open(path) as f:
        data = f.read()
    if mode == "stripe":
        yield from iter_raw_items(path, data, max_record_bytes, stripe=(part["start"], part["stop"]))
        return
    yield from iter_raw_items(path, data, max_record_bytes)
