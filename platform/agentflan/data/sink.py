"""Where a pass's rows go: each unit of work writes its own shards, the driver only adds up summaries.

A unit (one part of an input file in pass A, one decomposed shard in pass B) runs in a Ray task or in the
local loop and feeds a :class:`UnitSink`: it writes its rows by status (ok, quarantined, filtered) to
parquet shards named after the unit (``part-<unit>-<n>.parquet``), so the same unit always writes the same
files, a retried task overwrites what a killed one left, and the engines write identical output. What comes
back to the driver is a small summary (:meth:`UnitSink.summary`): stage counts, the multiset hash of the
rows, the unit's tool-list candidates, rows per split. :class:`PassSummary` adds them up, so the driver's
memory does not grow with the corpus.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from agentflan.data.record import QUARANTINE_SCHEMA

FILTERED_SCHEMA = pa.schema(
    [("id", pa.string()), ("stage", pa.string()), ("reason", pa.string()), ("origin", pa.string())]
)
_MOD = 2**256


class ShardWriter:
    """Parquet shards of at most ``rows_per_shard`` rows: ``<prefix>-00000.parquet``, ``<prefix>-00001...``.
    Writes nothing until a row comes (a unit with no rows of a status leaves no file for it)."""

    def __init__(
        self, directory: Path, schema: pa.Schema, rows_per_shard: int = 50_000, prefix: str = "part"
    ) -> None:
        self.directory = directory
        self.schema = schema
        self.rows_per_shard = rows_per_shard
        self.prefix = prefix
        self.rows = 0
        self._shard = -1
        self._in_shard = 0
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        table = table.select(self.schema.names).cast(self.schema)
        offset = 0
        while offset < table.num_rows:
            if self._writer is None or self._in_shard >= self.rows_per_shard:
                self._roll()
            take = min(table.num_rows - offset, self.rows_per_shard - self._in_shard)
            self._writer.write_table(table.slice(offset, take))  # type: ignore[union-attr]
            self._in_shard += take
            self.rows += take
            offset += take

    def _roll(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._shard += 1
        self._in_shard = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self.prefix}-{self._shard:05d}.parquet"
        self._writer = pq.ParquetWriter(path, self.schema)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def clear_shards(directory: Path) -> None:
    """Remove a previous run's shards before a pass writes the directory again."""
    for old in directory.glob("part-*.parquet"):
        old.unlink()


def ensure_a_shard(directory: Path, schema: pa.Schema) -> None:
    """Leave one (empty) shard where a pass wrote none, so readers of the directory find a file."""
    directory.mkdir(parents=True, exist_ok=True)
    if not any(directory.glob("part-*.parquet")):
        pq.ParquetWriter(directory / "part-00000-00000.parquet", schema).close()  # no rows, the schema


class StageCounts:
    """Sums of the count rows, per stage, in first-seen order."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, Any]] = {}
        self.extra: dict[str, Any] = {}

    def add(self, stage: str, counts: dict[str, Any]) -> None:
        s = self.stages.setdefault(
            stage, {"in": 0, "out": 0, "filtered": Counter(), "quarantined": Counter(), "repeated": 0}
        )
        s["in"] += counts["in"]
        s["out"] += counts["out"]
        s["filtered"].update(counts.get("filtered", {}))
        s["quarantined"].update(counts.get("quarantined", {}))
        s["repeated"] += counts.get("repeated", 0)
        for key, value in counts.get("extra", {}).items():
            _merge(self.extra.setdefault(key, {}), value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for a unit's summary."""
        stages = {
            name: {**c, "filtered": dict(c["filtered"]), "quarantined": dict(c["quarantined"])}
            for name, c in self.stages.items()
        }
        return {"stages": stages, "extra": self.extra}

    def merge(self, other: dict[str, Any]) -> None:
        """Add another unit's :meth:`to_dict` (stages keep their first-seen order)."""
        for name, c in other["stages"].items():
            self.add(name, c)
        _merge(self.extra, other["extra"])

    def as_list(self) -> list[dict[str, Any]]:
        out = []
        for name, s in self.stages.items():
            entry = {
                "name": name,
                "in": s["in"],
                "out": s["out"],
                "filtered": sum(s["filtered"].values()),
                "quarantined": sum(s["quarantined"].values()),
                "filtered_reasons": dict(sorted(s["filtered"].items())),
                "quarantined_reasons": dict(sorted(s["quarantined"].items())),
            }
            if s["repeated"]:
                entry["repeated"] = s["repeated"]
            if entry["in"] != entry["out"] + entry["filtered"] + entry["quarantined"]:
                raise AssertionError(f"stage {name} does not add up: {entry}")  # a bug, never bad input
            out.append(entry)
        return out


def _merge(into: dict[str, Any], value: dict[str, Any]) -> None:
    """Add nested count dicts: {"a": {"x": 1}} + {"a": {"x": 2}} = {"a": {"x": 3}}."""
    for k, v in value.items():
        if isinstance(v, dict):
            _merge(into.setdefault(k, {}), v)
        else:
            into[k] = into.get(k, 0) + v


class UnitSink:
    """Consumes the output batches of one unit of a pass and writes them (in the task that runs the unit)."""

    def __init__(
        self,
        out_dir: Path,
        ok_name: str,
        ok_schema: pa.Schema,
        unit: int,
        tool_pool_size: int = 0,
        rows_per_shard: int = 50_000,
    ) -> None:
        prefix = f"part-{unit:05d}"
        self.unit = unit
        self.ok = ShardWriter(out_dir / ok_name, ok_schema, rows_per_shard, prefix)
        self.quarantine = ShardWriter(out_dir / "quarantine" / ok_name, QUARANTINE_SCHEMA, prefix=prefix)
        self.filtered = ShardWriter(out_dir / "filtered" / ok_name, FILTERED_SCHEMA, prefix=prefix)
        self.counts = StageCounts()
        self.splits: Counter[str] = Counter()  # rows written per split (corpus rows carry one)
        self._digest_sum = 0  # multiset hash: sum of row digests mod 2**256, order-free and O(1) memory
        self.pool = ToolPool(tool_pool_size)

    def consume(self, table: pa.Table) -> None:
        status = table.column("status")
        for row in table.filter(pc.equal(status, "count")).select(["stage", "meta"]).to_pylist():
            self.counts.add(row["stage"], json.loads(row["meta"]))
        self.quarantine.write(table.filter(pc.equal(status, "quarantined")))
        self.filtered.write(table.filter(pc.equal(status, "filtered")))
        ok = table.filter(pc.equal(status, "ok"))
        if ok.num_rows == 0:
            return
        self.ok.write(ok)
        if "split" in ok.column_names:
            self.splits.update(ok.column("split").to_pylist())
        for h in ok.column("hash").to_pylist():
            self._digest_sum = (
                self._digest_sum + int.from_bytes(hashlib.sha256(h.encode()).digest(), "big")
            ) % _MOD
        if self.pool.size:  # real tool schemas only, not the names format-following samples list
            real = ok.filter(pc.not_equal(ok.column("bucket"), "format_following"))
            self.pool.add(real.column("tools").to_pylist())

    def summary(self) -> dict[str, Any]:
        """Close the writers; what the driver needs of this unit (small: no rows)."""
        for w in (self.ok, self.quarantine, self.filtered):
            w.close()
        return {
            "unit": self.unit,
            "rows": self.ok.rows,
            "counts": self.counts.to_dict(),
            "digest": f"{self._digest_sum:064x}",
            "pool": self.pool.items,
            "splits": dict(self.splits),
        }


class PassSummary:
    """The driver's view of a pass: the units' summaries added up."""

    def __init__(self, tool_pool_size: int = 0) -> None:
        self.counts = StageCounts()
        self.splits: Counter[str] = Counter()
        self.rows = 0
        self.units = 0
        self.nodes: set[str] = set()
        self._digest_sum = 0
        self._pool = ToolPool(tool_pool_size)

    def add(self, summary: dict[str, Any]) -> None:
        self.units += 1
        self.rows += summary["rows"]
        self.counts.merge(summary["counts"])
        self.splits.update(summary["splits"])
        self._digest_sum = (self._digest_sum + int(summary["digest"], 16)) % _MOD
        self._pool.merge(summary["pool"])
        if summary.get("node"):
            self.nodes.add(summary["node"])

    def fingerprint(self) -> str:
        """A hash of the multiset of written rows: independent of the order units finish in (Ray Data
        need not deliver blocks in input order) and computed in constant memory."""
        return hashlib.sha256(self._digest_sum.to_bytes(32, "big")).hexdigest()

    def tool_pool(self) -> list[str]:
        return self._pool.tool_lists()


class ToolPool:
    """The ``size`` distinct tool lists with the smallest hashes: deterministic, and the union of every
    unit's pool holds the global one, so units collect apart and the driver merges."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._heap: list[tuple[int, str]] = []  # max-heap (negated hash) of the kept lists
        self._seen: set[str] = set()

    def add(self, tool_lists: list[list[str] | str]) -> None:
        for tools in tool_lists:
            # a corpus row holds one JSON text per tool; a decomposed row the list's JSON text
            t = tools if isinstance(tools, str) else "[" + ", ".join(tools) + "]"
            if t == "[]":
                continue
            self._offer(int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "big"), t)

    def _offer(self, h: int, t: str) -> None:
        if t in self._seen:
            return
        if len(self._heap) < self.size:
            heapq.heappush(self._heap, (-h, t))
            self._seen.add(t)
        elif -self._heap[0][0] > h:
            _, dropped = heapq.heapreplace(self._heap, (-h, t))
            self._seen.discard(dropped)
            self._seen.add(t)

    @property
    def items(self) -> list[tuple[int, str]]:
        return [(-h, t) for h, t in self._heap]

    def merge(self, items: list[tuple[int, str]] | list[list[Any]]) -> None:
        for h, t in items:
            self._offer(int(h), t)

    def tool_lists(self) -> list[str]:
        return [t for _, t in sorted(self._heap, key=lambda x: -x[0])]


def row_hash(*fields: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for f in fields:
        h.update(f.encode())
        h.update(b"\x00")
    return h.hexdigest()
