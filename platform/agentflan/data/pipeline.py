"""The corpus pipeline: raw files -> canonical records -> aligned -> decomposed (+ negatives) -> mixture.

Two passes, each a chain of pure batch functions that Ray Data maps (or, with ``data.engine=local``, one
Python process runs over the same batches):

* **Pass A** ``read -> filter -> format_following -> align -> decompose`` writes ``decomposed/``. The sink
  also collects the pool of tool lists that case (b) negatives draw from, which needs the whole corpus.
* **Pass B** ``negatives -> mixture`` reads ``decomposed/`` and writes ``corpus/``. A Tune trial that only
  changes ratios re-runs pass B alone.

Outputs under ``output_dir``: ``corpus/`` and ``decomposed/`` (parquet shards), ``quarantine/`` (each bad
record with its reason and ``file:line``), ``filtered/`` (ids and reasons of dropped records) and
``manifest.json`` (config, fingerprint, per-stage counts, bucket and capability statistics).
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from agentflan.config import Config, InputSpec
from agentflan.data.align import align_record, make_format_following
from agentflan.data.decompose import decompose_record
from agentflan.data.filtering import filter_record
from agentflan.data.mixture import TOKEN_COUNTER, bucket_stats, mix_record
from agentflan.data.negatives import NegativeSampler, load_tool_pool_file
from agentflan.data.readers import (
    RecordError,
    expand_inputs,
    is_agent_record,
    iter_raw_items,
    parse_item,
    read_bytes,
)
from agentflan.data.record import CORPUS_SCHEMA, ROW_SCHEMA, Message, Record
from agentflan.data.responders import make_responder
from agentflan.data.sink import PassSink, row_hash
from agentflan.data.stage import Drop, Entry, Row, count_row, decode, encode, generate, map_records

PASS_A_SCHEMA = ROW_SCHEMA.append(pa.field("hash", pa.string()))
PASS_B_SCHEMA = pa.schema(
    [
        *CORPUS_SCHEMA,
        *(f for f in ROW_SCHEMA if f.name not in CORPUS_SCHEMA.names),
        pa.field("hash", pa.string()),
    ]
)
# Pass B reads decomposed/ in parallel one shard per task: keep its shards small enough to spread.
DECOMPOSED_SHARD_ROWS = 4096
STAGES = ("read", "filter", "format_following", "align", "decompose", "negatives", "mixture")


class PipelineError(RuntimeError):
    """A problem with the inputs as a whole (no files found, say), reported before any work."""


@dataclass(frozen=True)
class InputFile:
    path: str  # a local path, an s3:// / gs:// URI, or hf://<dataset id> for a hub dataset
    source: str
    kind: str
    split: str = "train"


_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def resolve_inputs(specs: list[InputSpec]) -> list[InputFile]:
    files: list[InputFile] = []
    for spec in specs:
        if _HUB_ID.match(spec.path) and not Path(spec.path).exists():
            # A hub dataset id (owner/name), read through `datasets` where a network exists (untested here).
            files.append(
                InputFile(f"hf://{spec.path}", spec.source or spec.path.split("/")[1], spec.kind, spec.split)
            )
            continue
        paths = expand_inputs(spec.path)
        if not paths or ("://" not in spec.path and not all(Path(p).is_file() for p in paths)):
            raise PipelineError(f"data.inputs: no input files found at {spec.path!r}")
        for p in paths:  # absolute: Ray workers may run in another working directory
            path = p if "://" in p else str(Path(p).resolve())
            files.append(InputFile(path, spec.source or Path(p).stem, spec.kind))
    return files


# ------------------------------------------------------------------------------------------ pass A


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
    ff = functools.partial(make_format_following, seed=cfg.seed, per_25k=d.format_following_per_25k)
    entries = generate(entries, "format_following", lambda recs: [ff(r) for r in recs])
    entries = map_records(
        entries, "align", functools.partial(align_record, seed=cfg.seed, react_share=d.react_share)
    )
    decompose = functools.partial(
        decompose_record, weights=d.capability_weights, strategy=d.weight_strategy, seed=cfg.seed
    )
    entries = map_records(entries, "decompose", decompose)
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
    tools = json.dumps(entry.tools, ensure_ascii=False)
    meta = json.dumps(entry.meta, ensure_ascii=False, sort_keys=True)
    split = entry.meta.get("split", "train")
    text = json.dumps(messages, ensure_ascii=False)
    return {
        "id": entry.id,
        "source": entry.source,
        "bucket": entry.bucket,
        "split": split,
        "messages": messages,
        "tools": tools,
        "meta": meta,
        "status": "ok",
        "stage": "",
        "reason": "",
        "origin": entry.origin,
        "raw": "",
        "hash": row_hash(entry.id, entry.bucket, split, text, tools, meta),
    }


class PassB:
    """negatives -> mixture -> corpus rows. A class so Ray can keep a model-backed responder in an actor."""

    def __init__(self, cfg: Config, tool_pool: list[str]) -> None:
        d = cfg.data
        self.cfg = cfg
        self.sampler = None
        if d.negatives.enabled:
            responder = make_responder(d.negatives.responder, cfg.seed)
            self.sampler = NegativeSampler(d.negatives, responder, tool_pool, cfg.seed)
        decompose = functools.partial(
            decompose_record, weights=d.capability_weights, strategy=d.weight_strategy, seed=cfg.seed
        )
        self._decompose: Callable[[Record], Record | Drop] = decompose

    def _negatives(self, records: list[Record]) -> list[Record | Drop | None]:
        assert self.sampler is not None
        out: list[Record | Drop | None] = []
        for r in self.sampler(records):
            out.append(self._decompose(r) if isinstance(r, Record) else r)
        return out

    def rows(self, rows: list[Row]) -> list[Row]:
        d = self.cfg.data
        entries = decode(rows)
        if self.sampler is not None:
            entries = generate(entries, "negatives", self._negatives)
        mix = functools.partial(
            mix_record, ratios=d.mixture.ratios, seed=self.cfg.seed, validation_fraction=d.validation_fraction
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


def tool_pool(cfg: Config, sink_a: PassSink) -> list[str]:
    """Tool lists for case (b) negatives: the corpus's own, then those of ``negatives.tool_pool_files``."""
    pool = sink_a.tool_pool()
    for path in cfg.data.negatives.tool_pool_files:
        pool += [t for t in load_tool_pool_file(path) if t not in pool]
    return pool


def _shards(out: Path) -> list[str]:
    return sorted(str(p) for p in (out / "decomposed").glob("part-*.parquet"))


def _run_local(
    cfg: Config, files: list[InputFile], out: Path, progress: Callable[[str], None]
) -> tuple[PassSink, PassSink]:
    sink_a = PassSink(
        out, "decomposed", PASS_A_SCHEMA, cfg.data.negatives.tool_pool_size, DECOMPOSED_SHARD_ROWS
    )
    for i, f in enumerate(files, 1):
        progress(f"pass A: file {i}/{len(files)} {f.path}")
        for table in pass_a_file(f.__dict__, cfg):
            sink_a.consume(table)
    sink_a.close()
    progress("pass B: negatives -> mixture")
    pass_b = PassB(cfg, tool_pool(cfg, sink_a))
    sink_b = PassSink(out, "corpus", CORPUS_SCHEMA)
    for shard in _shards(out):
        for table in pass_b.shard(shard):
            sink_b.consume(table)
    sink_b.close()
    return sink_a, sink_b


def _run_ray(
    cfg: Config, files: list[InputFile], out: Path, progress: Callable[[str], None]
) -> tuple[PassSink, PassSink]:
    """Each pass is one Ray Data map over a list of files: a task reads its file and runs every stage on
    it, so nothing travels through the object store but the results. Per-operator resource reservation
    is switched off: with a single map operator it only halves the CPUs it may use (measured here: of
    2 cores, 1 busy). Block order is left free; the fingerprint does not depend on it."""
    import ray

    d = cfg.data
    ray.data.DataContext.get_current().op_resource_reservation_enabled = False
    progress("pass A: read -> filter -> format_following -> align -> decompose")
    sink_a = PassSink(out, "decomposed", PASS_A_SCHEMA, d.negatives.tool_pool_size, DECOMPOSED_SHARD_ROWS)
    ds = ray.data.from_items([f.__dict__ for f in files], override_num_blocks=len(files)).map_batches(
        _pass_a_task, fn_kwargs={"cfg": cfg}, batch_size=1, batch_format="pyarrow"
    )
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        sink_a.consume(batch)
    sink_a.close()

    progress("pass B: negatives -> mixture")
    sink_b = PassSink(out, "corpus", CORPUS_SCHEMA)
    pool = tool_pool(cfg, sink_a)
    shards = _shards(out)
    src = ray.data.from_items([{"path": p} for p in shards], override_num_blocks=len(shards))
    if d.negatives.enabled and d.negatives.responder.kind != "template":
        # A model-backed responder lives in an actor so the model loads once.
        ds = src.map_batches(
            PassB,
            fn_constructor_kwargs={"cfg": cfg, "tool_pool": pool},
            concurrency=1,
            batch_size=1,
            batch_format="pyarrow",
        )
    else:
        ds = src.map_batches(
            _pass_b_task, fn_kwargs={"cfg": cfg, "tool_pool": pool}, batch_size=1, batch_format="pyarrow"
        )
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        sink_b.consume(batch)
    sink_b.close()
    return sink_a, sink_b


def run_data(cfg: Config, progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the corpus pipeline; returns the manifest (also written to ``output_dir/manifest.json``)."""
    files = resolve_inputs(cfg.data.inputs)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    if cfg.data.engine == "ray":
        from agentflan.ray_utils import ensure_ray

        ensure_ray(cfg.data.num_cpus)  # joins a running cluster, or starts a local one (timed apart)
    t0 = time.time()
    runner = _run_ray if cfg.data.engine == "ray" else _run_local
    sink_a, sink_b = runner(cfg, files, out, progress)
    stages = sink_a.counts.as_list() + [s for s in sink_b.counts.as_list() if s["name"] != "stats"]
    stats = sink_b.counts.extra
    manifest = {
        "name": cfg.name,
        "fingerprint": sink_b.fingerprint(),
        "decomposed_fingerprint": sink_a.fingerprint(),
        "config": cfg.model_dump(mode="json"),
        "engine": cfg.data.engine,
        "seconds": round(time.time() - t0, 2),
        "startup_seconds": round(t0 - t_start, 2),
        "inputs": [f.__dict__ for f in files],
        "formats": sink_a.counts.extra.get("formats", {}),
        "stages": stages,
        "rows": {"corpus": sink_b.rows, "decomposed": sink_a.rows},
        "splits": _split_counts(out / "corpus"),
        "buckets": stats.get("buckets", {}),
        "capabilities": stats.get("capabilities", {}),
        "token_counter": TOKEN_COUNTER,
        "tool_pool_size": len(tool_pool(cfg, sink_a)),
        "outputs": {k: str(out / k) for k in ("corpus", "decomposed", "quarantine", "filtered")},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest


def _split_counts(corpus: Path) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for shard in corpus.glob("part-*.parquet"):
        counts.update(pq.read_table(shard, columns=["split"]).column("split").to_pylist())
    return dict(sorted(counts.items()))


def corpus_files(output_dir: str | Path) -> list[str]:
    """The corpus shards, for ``datasets.load_dataset("parquet", data_files=...)``."""
    return sorted(str(p) for p in (Path(output_dir) / "corpus").glob("part-*.parquet"))


__all__ = ["run_data", "corpus_files", "Message", "PipelineError", "STAGES"]
