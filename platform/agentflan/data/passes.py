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
import logging
from collections import Counter
from collections.abc import Callable, Iterator
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
from agentflan.data.readers import RecordError, is_agent_record, parse_item
from agentflan.data.record import CORPUS_SCHEMA, ROW_SCHEMA, Record, storage_schema
from agentflan.data.responders import Responder, make_responder
from agentflan.data.sink import UnitSink, row_hash
from agentflan.data.splits import read_part
from agentflan.data.stage import Drop, Entry, Row, count_row, decode, encode, generate, map_records

_log = logging.getLogger(__name__)
PASS_A_SCHEMA = ROW_SCHEMA.append(pa.field("hash", pa.string()))
PASS_B_SCHEMA = pa.schema(
    [
        *storage_schema(CORPUS_SCHEMA),  # JSON fields as text in flight; the corpus writer casts them
        *(f for f in ROW_SCHEMA if f.name not in CORPUS_SCHEMA.names),
        pa.field("hash", pa.string()),
    ]
)


def read_file(
    part: dict[str, Any], max_record_bytes: int, quarantine_unreadable: bool = True
) -> Iterator[dict[str, Any]]:
    """One input file, or one part of it (:mod:`agentflan.data.splits`) -> raw items.

    A file that cannot be opened at all becomes one quarantined item (``unreadable_file``) when
    ``quarantine_unreadable`` (the unit's last attempt); otherwise the error is raised, so the unit is tried
    again. An error after the first item always raises: quarantining the rest of a file would lose records."""
    if part["path"].startswith("hf://"):
        yield from _hub_items(part)
        return
    started = False
    try:
        for item in read_part({"mode": "whole", **part}, max_record_bytes):
            started = True
            yield {**item, **_spec(part)}
    except OSError as e:
        if started or not quarantine_unreadable:
            raise
        yield {"path": part["path"], "line": 0, "raw": "", "error": f"unreadable_file: {e}", **_spec(part)}


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


def pass_a_file(file: dict[str, Any], cfg: Config, last_attempt: bool = True) -> Iterator[pa.Table]:
    """One input file through pass A, in batches of ``data.batch_size`` raw items.

    This is the unit of work of both engines: Ray Data maps it over the list of files (one task per file,
    read and transforms fused, results streamed batch by batch); the local engine loops over it.
    """
    chunk: list[dict[str, Any]] = []
    for item in read_file(file, cfg.data.max_record_bytes, quarantine_unreadable=last_attempt):
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

    def __init__(
        self,
        cfg: Config,
        tool_pool: list[str],
        cache_dir: str | None = None,
        responder: Responder | None = None,
    ) -> None:
        """``cache_dir`` (``<base>/decomposed/negatives_cache``) keeps model-written negative replies, so the
        trials that re-mix one decomposed corpus ask the model once (see ``CachedResponder``); None: no cache.
        ``responder`` replaces the one the config names (the batch engine's request collector)."""
        d = cfg.data
        self.cfg = cfg
        self.sampler = None
        self._seen_calls = (0, 0)  # the responder's (cached, asked) counts already reported
        if d.negatives.enabled:
            responder = responder or make_responder(d.negatives.responder, cfg.seed, cache_dir)
            self.sampler = NegativeSampler(d.negatives, responder, tool_pool, cfg.seed, d.call_format)

    def _negatives(self, records: list[Record]) -> list[Record | Drop | Exception | None]:
        # An exception in the list (a Quarantine: responder_failed) quarantines that candidate alone.
        assert self.sampler is not None
        return [decompose_record(r) if isinstance(r, Record) else r for r in self.sampler(records)]

    def _responder_calls(self) -> dict[str, int]:
        """Requests the responder answered from its cache and those it had to ask, since the last batch (the
        manifest's ``responder``: a re-mix of a cached corpus asks nothing)."""
        responder = self.sampler.responder if self.sampler is not None else None
        hits, misses = getattr(responder, "hits", 0), getattr(responder, "misses", 0)
        (seen_hits, seen_misses), self._seen_calls = self._seen_calls, (hits, misses)
        return {"cached": hits - seen_hits, "asked": misses - seen_misses}

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
        stats["responder"] = self._responder_calls()
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


# ------------------------------------------------------------------------------------------ units

# Pass B reads decomposed/ in parallel one shard per task. Every pass-A unit writes its own shards, so at
# scale there are already as many as units; a larger shard keeps pass B from paying a task per few thousand
# rows (measured on one 120 MB file, 16 units: 4,096 rows per shard gave pass B 48 tasks and the job 29.7 s,
# 16,384 gave 16 tasks and 26.7 s).
DECOMPOSED_SHARD_ROWS = 16384


UNIT_ATTEMPTS = 3


def with_retries(run: Callable[[bool], dict[str, Any]], what: str) -> dict[str, Any]:
    """Run a unit again when it raises (a read that failed once, a flaky filesystem): a unit writes the same
    shards every time, so an attempt that failed half-way leaves nothing behind once a later one succeeds.
    Bad records never raise (they are quarantined), so what is retried is the environment, not the data."""
    for attempt in range(1, UNIT_ATTEMPTS + 1):
        try:
            return run(attempt == UNIT_ATTEMPTS)  # told whether it is the last attempt
        except Exception as e:  # noqa: BLE001 - re-raised after the last attempt
            if attempt == UNIT_ATTEMPTS:
                raise
            _log.warning("%s failed (attempt %d of %d), retrying: %s", what, attempt, UNIT_ATTEMPTS, e)
    raise AssertionError("unreachable")


def pass_a_unit(part: dict[str, Any], cfg: Config, out_dir: str) -> dict[str, Any]:
    """One part of an input file through pass A, written to ``out_dir`` by the task that runs it; returns
    the unit's summary (:class:`~agentflan.data.sink.UnitSink`)."""
    return with_retries(
        lambda last: _pass_a_unit(part, cfg, out_dir, last), f"pass A on {part['path']} (unit {part['unit']})"
    )


def _pass_a_unit(part: dict[str, Any], cfg: Config, out_dir: str, last_attempt: bool) -> dict[str, Any]:
    sink = UnitSink(
        Path(out_dir),
        "decomposed",
        PASS_A_SCHEMA,
        part["unit"],
        cfg.data.negatives.tool_pool_size,
        DECOMPOSED_SHARD_ROWS,
    )
    for table in pass_a_file(part, cfg, last_attempt):
        sink.consume(table)
    return sink.summary()


def pass_b_unit(pass_b: PassB, shard: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """One decomposed shard through pass B, written to ``out_dir/corpus`` by the task that runs it."""
    return with_retries(lambda last: _pass_b_unit(pass_b, shard, out_dir), f"pass B on {shard['path']}")


def _pass_b_unit(pass_b: PassB, shard: dict[str, Any], out_dir: str) -> dict[str, Any]:
    sink = UnitSink(Path(out_dir), "corpus", CORPUS_SCHEMA, shard["unit"])
    for table in pass_b.shard(shard["path"]):
        sink.consume(table)
    return sink.summary()


def _summaries(summaries: list[dict[str, Any]]) -> pa.Table:
    """Ray Data carries a unit's summary back as one row of JSON text (and the node it ran on)."""
    import ray

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    return pa.table({"summary": [json.dumps({**s, "node": node}) for s in summaries]})


def _pass_a_task(parts: pa.Table, cfg: Config, out_dir: str) -> pa.Table:
    return _summaries([pass_a_unit(part, cfg, out_dir) for part in parts.to_pylist()])


def _pass_b_task(
    shards: pa.Table, cfg: Config, tool_pool: list[str], out_dir: str, cache_dir: str | None
) -> pa.Table:
    pass_b = PassB(cfg, tool_pool, cache_dir)
    return _summaries([pass_b_unit(pass_b, shard, out_dir) for shard in shards.to_pylist()])


class PassBActor:
    """Pass B in an actor, so a model-backed responder loads once per actor (an actor pool)."""

    def __init__(self, cfg: Config, tool_pool: list[str], out_dir: str, cache_dir: str | None) -> None:
        self.pass_b = PassB(cfg, tool_pool, cache_dir)
        self.out_dir = out_dir

    def __call__(self, shards: pa.Table) -> pa.Table:
        return _summaries([pass_b_unit(self.pass_b, s, self.out_dir) for s in shards.to_pylist()])
