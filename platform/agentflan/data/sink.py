"""The driver-side end of a pass: write rows by status, sum the count rows, fingerprint the output.

Both engines (Ray Data and the in-process one) feed the same sink batch by batch, so what is written and
counted cannot differ between them. Memory stays flat: rows are written as they arrive, in shards.
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


class ShardWriter:
    """Parquet shards of at most ``rows_per_shard`` rows: part-00000.parquet, part-00001.parquet, ..."""

    def __init__(self, directory: Path, schema: pa.Schema, rows_per_shard: int = 50_000) -> None:
        self.directory = directory
        self.schema = schema
        self.rows_per_shard = rows_per_shard
        self.rows = 0
        self._shard = -1
        self._in_shard = 0
        self._writer: pq.ParquetWriter | None = None
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("part-*.parquet"):
            old.unlink()

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
        self._writer = pq.ParquetWriter(self.directory / f"part-{self._shard:05d}.parquet", self.schema)

    def close(self) -> None:
        if self._writer is None:  # always leave one (possibly empty) shard so readers find a file
            self._roll()
        self._writer.close()  # type: ignore[union-attr]
        self._writer = None


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


class PassSink:
    """Consumes the output batches of one pass."""

    def __init__(
        self,
        out_dir: Path,
        ok_name: str,
        ok_schema: pa.Schema,
        tool_pool_size: int = 0,
        rows_per_shard: int = 50_000,
    ) -> None:
        self.ok = ShardWriter(out_dir / ok_name, ok_schema, rows_per_shard)
        self.quarantine = ShardWriter(out_dir / "quarantine" / ok_name, QUARANTINE_SCHEMA)
        self.filtered = ShardWriter(out_dir / "filtered" / ok_name, FILTERED_SCHEMA)
        self.counts = StageCounts()
        self.splits: Counter[str] = Counter()  # rows written per split (corpus rows carry one)
        self._digest_sum = 0  # multiset hash: sum of row digests mod 2**256, order-free and O(1) memory
        self._pool_size = tool_pool_size
        self._pool: list[tuple[int, str]] = []  # max-heap (negated) of the smallest tool-list hashes
        self._pool_seen: set[str] = set()

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
            ) % 2**256
        if self._pool_size:  # real tool schemas only, not the names format-following samples list
            real = ok.filter(pc.not_equal(ok.column("bucket"), "format_following"))
            self._collect_tools(real.column("tools").to_pylist())

    def _collect_tools(self, tool_lists: list[list[str] | str]) -> None:
        """Keep the ``tool_pool_size`` distinct tool lists with the smallest hashes: deterministic."""
        for tools in tool_lists:
            # a corpus row holds one JSON text per tool; a decomposed row the list's JSON text
            t = tools if isinstance(tools, str) else "[" + ", ".join(tools) + "]"
            if t == "[]" or t in self._pool_seen:
                continue
            h = int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "big")
            if len(self._pool) < self._pool_size:
                heapq.heappush(self._pool, (-h, t))
                self._pool_seen.add(t)
            elif -self._pool[0][0] > h:
                _, dropped = heapq.heapreplace(self._pool, (-h, t))
                self._pool_seen.discard(dropped)
                self._pool_seen.add(t)

    def tool_pool(self) -> list[str]:
        return [t for _, t in sorted(self._pool, key=lambda x: -x[0])]

    def fingerprint(self) -> str:
        """A hash of the multiset of written rows: independent of the order they arrive in (Ray Data
        need not deliver blocks in input order) and computed in constant memory."""
        return hashlib.sha256(self._digest_sum.to_bytes(32, "big")).hexdigest()

    @property
    def rows(self) -> int:
        return self.ok.rows

    def close(self) -> None:
        for w in (self.ok, self.quarantine, self.filtered):
            w.close()


def row_hash(*fields: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for f in fields:
        h.update(f.encode())
        h.update(b"\x00")
    return h.hexdigest()
