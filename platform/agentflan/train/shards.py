"""Packed rows on disk as parquet shards, and a reader that fetches rows by their global index.

A split's packed rows live in ``train/packed_<split>/part-<block>.parquet``, one shard per packing block
(:mod:`agentflan.train.pack_corpus`); the split's row ``i`` is the ``i``-th row of the shards read in name
order. Training never loads the whole table: each worker opens the shards memory-mapped (``output_dir`` is a
shared file system on a cluster), keeps a small index (global row -> shard row group) and reads the row
groups that the rows of its steps (:func:`agentflan.train.sampling.step_rows`) fall in, keeping the last few
decoded. The first epoch reads the shards front to back, so each row group is decoded once; later epochs
read in a permutation, so row groups are kept small (about :data:`ROW_GROUP_BYTES`) to bound what a row
costs to fetch.
"""

from __future__ import annotations

import os
import random
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from agentflan.train.templates import IGNORE_INDEX

if TYPE_CHECKING:
    from agentflan.train.packing import PackedRow

# What a packed row holds, as the shards store it.
ROW_SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("weights", pa.list_(pa.float32())),
        ("position_ids", pa.list_(pa.int32())),
        ("n_real", pa.int32()),
        ("n_trained", pa.int32()),  # tokens whose label is trained (the loss normaliser's share of this row)
    ]
)
# The token columns and their dtypes (no torch here: the packing workers that write shards never load it).
COLUMNS = {"input_ids": np.int32, "labels": np.int32, "weights": np.float32, "position_ids": np.int32}
ROW_GROUP_BYTES = 1 << 20  # ~1 MiB of token columns per row group: a random row costs at most this to fetch


def rows_table(rows: list[PackedRow], seed: int | str) -> pa.Table:
    """The rows as a :data:`ROW_SCHEMA` table, in an order shuffled by ``seed``."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    data = []
    for i in order:
        r = rows[i]
        n_trained = sum(1 for label in r.labels[1:] if label != IGNORE_INDEX)
        data.append(
            {
                "input_ids": r.input_ids,
                "labels": r.labels,
                "weights": r.weights,
                "position_ids": r.position_ids,
                "n_real": r.n_real,
                "n_trained": n_trained,
            }
        )
    return pa.Table.from_pylist(data, schema=ROW_SCHEMA)


def shard_name(block: int) -> str:
    return f"part-{block:05d}.parquet"


def shard_paths(directory: str | Path) -> list[Path]:
    """The shards of a split in row order (their names carry the block index, zero-padded)."""
    return sorted(Path(directory).glob("part-*.parquet"))


def write_shard(table: pa.Table, path: Path, seq_len: int) -> None:
    """Write one shard atomically (a retried Ray task rewrites the same bytes; a reader never sees half)."""
    rows_per_group = max(1, ROW_GROUP_BYTES // (len(COLUMNS) * 4 * seq_len))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, row_group_size=rows_per_group)
    os.replace(tmp, path)


def read_packed(directory: str | Path) -> pa.Table:
    """A whole split as one table, in row order: for tests, benchmarks and small validation sets."""
    paths = shard_paths(directory)
    if not paths:
        raise FileNotFoundError(f"no packed shards under {directory}")
    return pa.concat_tables([pq.read_table(p) for p in paths])


def shard_rows(directory: str | Path) -> int:
    """Rows of a split, from the shards' footers alone."""
    return sum(pq.ParquetFile(p).metadata.num_rows for p in shard_paths(directory))


def worker_rows(config: Mapping[str, Any], name: str) -> PackedShards | None:
    """What a Ray Train worker reads: the split's shard directory the driver passed (``<name>_dir``), by row."""
    return PackedShards(config[f"{name}_dir"]) if config.get(f"{name}_dir") else None


def matrix(column: pa.ChunkedArray | pa.Array, n_rows: int) -> np.ndarray:
    """A list column of equal-length rows as a 2-D array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(n_rows, -1) if n_rows else values.reshape(0, 0)


class PackedShards:
    """The packed rows of one split, fetched by global row index from its shards.

    Only the per-row counts (``n_real``, ``n_trained``: every worker needs the trained tokens of a whole
    step) are read up front; token columns are read one row group at a time, the last ``cache_groups``
    kept decoded. Safe to call from the prefetch thread and the training thread at once."""

    def __init__(self, directory: str | Path, cache_groups: int = 8) -> None:
        self.directory = Path(directory)
        paths = shard_paths(directory)
        if not paths:
            raise FileNotFoundError(f"no packed shards under {directory}")
        self._files = [pq.ParquetFile(p, memory_map=True) for p in paths]
        self._groups: list[tuple[int, int]] = []  # (shard, row group) in row order
        starts = [0]
        for s, f in enumerate(self._files):
            for g in range(f.metadata.num_row_groups):
                self._groups.append((s, g))
                starts.append(starts[-1] + f.metadata.row_group(g).num_rows)
        self._starts = np.array(starts, dtype=np.int64)
        self.n_rows = int(starts[-1])
        counts = pa.concat_tables([f.read(columns=["n_real", "n_trained"]) for f in self._files])
        self.n_real = counts.column("n_real").to_numpy().astype(np.int64)
        self.n_trained = counts.column("n_trained").to_numpy().astype(np.int64)
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._cache_groups = cache_groups
        self._lock = threading.Lock()
        self.groups_read = 0  # row groups decoded so far (what a test or benchmark looks at)
        first = int(np.searchsorted(self._starts, 0, side="right")) - 1  # the first row group with rows
        self.seq_len = int(self._group(first)["input_ids"].shape[1]) if self.n_rows else 0

    def __len__(self) -> int:
        return self.n_rows

    def take(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """The token columns of rows ``indices``, as ``len(indices) x seq_len`` arrays."""
        if any(i < 0 or i >= self.n_rows for i in indices):
            raise IndexError(f"row index out of range for {self.n_rows} rows in {self.directory}")
        where = np.searchsorted(self._starts, np.asarray(indices, dtype=np.int64), side="right") - 1
        out = {name: np.empty((len(indices), self.seq_len), dtype=dtype) for name, dtype in COLUMNS.items()}
        with self._lock:
            for j, (i, g) in enumerate(zip(indices, where, strict=True)):
                group = self._group(int(g))
                for name in COLUMNS:
                    out[name][j] = group[name][i - self._starts[g]]
        return out

    def _group(self, g: int) -> dict[str, np.ndarray]:
        if g in self._cache:
            self._cache.move_to_end(g)
            return self._cache[g]
        shard, group = self._groups[g]
        table = self._files[shard].read_row_group(group, columns=list(COLUMNS))
        decoded = {name: matrix(table.column(name), table.num_rows) for name in COLUMNS}
        self.groups_read += 1
        self._cache[g] = decoded
        if len(self._cache) > self._cache_groups:
            self._cache.popitem(last=False)
        return decoded
