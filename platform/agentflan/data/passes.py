"""The two passes of the corpus pipeline as batch functions: what a Ray Data task (or the local engine) runs.

* **Pass A** ``read -> filter -> format_following -> align -> decompose``, one input file at a time
  (:func:`pass_a_file`).
* **Pass B** ``negatives -> mixture``, one shard of ``decomposed/`` at a time (:class:`PassB`).

Each yields Arrow tables of rows (live records, tombstones and count rows); :mod:`agentflan.data.pipeline`
maps them over the files and feeds the results to the sinks.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from agentflan.config import Config
from agentflan.data.align import align_record, choose_format, make_format_following
from agentflan.data.decompose import decompose_record, weigh_record
from agentflan.data.filtering import filter_record
from agentflan.data.mixture import bucket_stats, mix_record
from agentflan.data.negatives import NegativeSampler
from agentflan.data.readers import RecordError, is_agent_record, iter_raw_items, parse_item, read_bytes
from agentflan.data.record import CORPUS_SCHEMA, ROW_SCHEMA, Record, storage_schema
from agentflan.data.responders import make_responder
from agentflan.data.sink import row_hash
from agentflan.data.stage import Drop, Entry, Row, count_row, decode, encode, generate, map_records

PASS_A_SCHEMA = ROW_SCHEMA.append(pa.field("hash", pa.string()))
PASS_B_SCHEMA = pa.schema(
    [
        *storage_schema(CORPUS_SCHEMA),  # JSON fields as text in flight; the corpus writer casts them
        *(f for f in ROW_SCHEMA if f.name not in CORPUS_SCHEMA.names),
        pa.field("hash", pa.string()),
    ]
)


def read_file(file: dict[str, Any], max_record_bytes: int) -> Iterator[dict[str, Any]]:
    """One input file -> raw items."""
    if file["path"].startswith("hf://"):
        yield from _hub_items(file)
        return
    try:
        data = read_bytes(file["path"])
    except OSError as e:
        yield {"path": file["path"], "line": 0, "raw": "", "error": f"unreadable_file: {e}", **_spec(file)}
        return
    for item in iter_raw_items(file["path"], data, max_record_bytes):
        yield {**item, **_spec(file)}


def _hub_items(file: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Rows of a hub dataset as raw items (line = row number), through ``datasets.load_dataset``."""
    import datasets

    try:
        ds = datasets.load_dataset(file["path"].removeprefix("hf://"), split=file.get("split", "train"))
    except Exception as e:  # noqa: BLE001 - no network, no such dataset: one quarantined item says so
        yield {"path": file["path"], "line": 0, "raw": "", "error": f"unreadable_file: {e}", **_spec(file)}
        return
    for i, row in enumerate(ds, start=1):
        yield {
            "path": file["path"],
            "line": i,
            "raw": json.dumps(row, default=str),
            "error": "",
            **_spec(file),
        }


def _spec(file: dict[str, Any]) -> dict[str, str]:
    return {"source": file["source"], "kind": file["kind"]}


def read_stage(items: list[dict[str, Any]]) -> list[Entry]:
    """Raw items -> records, or quarantined rows carrying the raw text, ``file:line`` and the reason."""
    rows: list[Entry] = []
    quarantined: Counter[str] = Counter()
    formats: dict[str, Counter[str]] = {}
    for item in items:
        origin = f"{item['path']}:{item['line']}"
        try:
            record, fmt = parse_item(item, item["source"])
        except RecordError as e:
            quarantined[e.code] += 1
            rows.append(
                {
                    "id": f"{Path(item['path']).stem}:L{item['line']}",
                    "source": item["source"],
                    "bucket": "",
                    "messages": "[]",
                    "tools": "[]",
                    "meta": "{}",
                    "status": "quarantined",
                    "stage": "read",
                    "reason": f"{e.code}: {e.detail}",
                    "origin": origin,
                    "raw": item["raw"],
                }
            )
            continue
        kind = item["kind"] if item["kind"] != "auto" else ("agent" if is_agent_record(record) else "general")
        record = replace(
            record,
            bucket="general" if kind == "general" else record.source,
            meta={**record.meta, "kind": kind},
            origin=origin,
        )
        formats.setdefault(item["path"], Counter())[fmt] += 1
        rows.append(record)
    counts = count_row("read", len(items), len(items) - sum(quarantined.values()), Counter(), quarantined)
    meta = json.loads(counts["meta"])
    meta["extra"] = {"formats": {p: dict(c) for p, c in formats.items()}}
    counts["meta"] = json.dumps(meta)
    return [*rows, counts]


def pass_a(items: list[dict[str, Any]], cfg: Config) -> list[Row]:
    d = cfg.data
    entries = read_stage(items)
    entries = map_records(entries, "filter", filter_record)
    ff = functools.partial(
        make_format_following, seed=cfg.seed, per_25k=d.format_following_per_25k, call_format=d.call_format
    )
    entries = generate(entries, "format_following", lambda recs: [ff(r) for r in recs])
    align = functools.partial(
        align_record, seed=cfg.seed, call_format=d.call_format, native_thought=d.native_thought
    )
    entries = map_records(entries, "align", align)
    entries = map_records(entries, "decompose", decompose_record)
    rows = encode(entries)
    for row in rows:
        ok = row["status"] == "ok"
        row["hash"] = (
            row_hash(row["id"], row["bucket"], row["messages"], row["tools"], row["meta"]) if ok else ""
        )
    return rows


def pass_a_file(file: dict[str, Any], cfg: Config) -> Iterator[pa.Table]:
    """One input file through pass A, in batches of ``data.batch_size`` raw items.

    This is the unit of work of both engines: Ray Data maps it over the list of files (one task per file,
    read and transforms fused, results streamed batch by batch); the local engine loops over it.
    """
    chunk: list[dict[str, Any]] = []
    for item in read_file(file, cfg.data.max_record_bytes):
        chunk.append(item)
        if len(chunk) >= cfg.data.batch_size:
            yield pa.Table.from_pylist(pass_a(chunk, cfg), schema=PASS_A_SCHEMA)
            chunk = []
    if chunk:
        yield pa.Table.from_pylist(pass_a(chunk, cfg), schema=PASS_A_SCHEMA)


# ------------------------------------------------------------------------------------------ pass B


def _to_corpus_row(entry: Entry) -> Row:
    if not isinstance(entry, Record):
        return {**entry, "messages": [], "split": ""}
    messages = [m.to_dict() for m in entry.messages]
    tools = json.dumps(entry.tools, ensure_ascii=False)  # the hash's form; the column holds one text per tool
    meta = json.dumps(entry.meta, ensure_ascii=False, sort_keys=True)
    split = entry.meta.get("split", "train")
    text = json.dumps(messages, ensure_ascii=False)
    return {
        "id": entry.id,
        "source": entry.source,
        "bucket": entry.bucket,
        "split": split,
        "messages": messages,
        "tools": [json.dumps(t, ensure_ascii=False) for t in entry.tools],
        "meta": meta,
        "status": "ok",
        "stage": "",
        "reason": "",
        "origin": entry.origin,
        "raw": "",
        "hash": row_hash(entry.id, entry.bucket, split, text, tools, meta),
    }


class PassB:
    """choose format -> negatives -> mixture -> corpus rows. A class so Ray can keep a model-backed responder
    in an actor. Everything a Tune trial varies (ReAct share, negatives, capability weights, ratios) is
    applied here, so a trial re-runs this pass alone over ``decomposed/``."""

    def __init__(self, cfg: Config, tool_pool: list[str]) -> None:
        d = cfg.data
        self.cfg = cfg
        self.sampler = None
        if d.negatives.enabled:
            responder = make_responder(d.negatives.responder, cfg.seed)
            self.sampler = NegativeSampler(d.negatives, responder, tool_pool, cfg.seed, d.call_format)

    def _negatives(self, records: list[Record]) -> list[Record | Drop | None]:
        assert self.sampler is not None
        return [decompose_record(r) if isinstance(r, Record) else r for r in self.sampler(records)]

    def rows(self, rows: list[Row]) -> list[Row]:
        d, seed = self.cfg.data, self.cfg.seed
        entries = decode(rows)
        choose = functools.partial(choose_format, seed=seed, react_share=d.react_share)
        entries = map_records(entries, "choose_format", choose)
        if self.sampler is not None:
            entries = generate(entries, "negatives", self._negatives)
        weigh = functools.partial(
            weigh_record, weights=d.capability_weights, strategy=d.weight_strategy, seed=seed
        )
        mix = functools.partial(
            mix_record,
            ratios=d.mixture.ratios,
            seed=seed,
            validation_fraction=d.validation_fraction,
            split_seed=d.split_seed,
            weigh=weigh,
        )
        entries = map_records(entries, "mixture", mix)
        stats_row = count_row("stats", 0, 0, Counter(), Counter())
        stats = bucket_stats([e for e in entries if isinstance(e, Record)])
        stats_row["meta"] = json.dumps({"in": 0, "out": 0, "extra": stats})
        return [_to_corpus_row(e) for e in [*entries, stats_row]]

    def shard(self, path: str) -> Iterator[pa.Table]:
        """One decomposed shard through pass B, in batches (the unit of work, as :func:`pass_a_file`)."""
        for batch in pq.ParquetFile(path).iter_batches(batch_size=self.cfg.data.batch_size):
            yield pa.Table.from_pylist(self.rows(batch.to_pylist()), schema=PASS_B_SCHEMA)

    def __call__(self, paths: pa.Table) -> Iterator[pa.Table]:
        """Ray Data entry: a batch of shard paths."""
        for path in paths.column("path").to_pylist():
            yield from self.shard(path)


def _pass_a_task(files: pa.Table, cfg: Config) -> Iterator[pa.Table]:
    for file in files.to_pylist():
        yield from pass_a_file(file, cfg)


def _pass_b_task(paths: pa.Table, cfg: Config, tool_pool: list[str]) -> Iterator[pa.Table]:
    yield from PassB(cfg, tool_pool)(paths)
