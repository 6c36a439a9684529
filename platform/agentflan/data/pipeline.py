"""The corpus pipeline: raw files -> canonical records -> aligned -> decomposed (+ negatives) -> mixture.

Two passes, each a chain of pure batch functions (:mod:`agentflan.data.passes`) that Ray Data maps (or,
with ``data.engine=local``, one Python process runs over the same batches); this module resolves the inputs,
runs the engines and writes the manifest:

* **Pass A** ``read -> filter -> format_following -> align -> decompose`` writes ``decomposed/``. The sink
  also collects the pool of tool lists that case (b) negatives draw from, which needs the whole corpus.
* **Pass B** ``choose format -> negatives -> mixture`` reads ``decomposed/`` and writes ``corpus/``. A Tune
  trial re-runs pass B alone (:func:`remix`): the ReAct share, negatives, capability weights and ratios
  are all applied here.

Outputs under ``output_dir``: ``corpus/`` and ``decomposed/`` (parquet shards), ``quarantine/`` (each bad
record with its reason and ``file:line``), ``filtered/`` (ids and reasons of dropped records) and
``manifest.json`` (config, fingerprint, per-stage counts, bucket and capability statistics).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from agentflan.config import Config, InputSpec
from agentflan.console import count
from agentflan.data.mixture import TOKEN_COUNTER
from agentflan.data.negatives import load_tool_pool_file
from agentflan.data.passes import PASS_A_SCHEMA, PassB, _pass_a_task, _pass_b_task, pass_a_file
from agentflan.data.readers import expand_inputs
from agentflan.data.record import CORPUS_SCHEMA, Message, Record
from agentflan.data.sink import PassSink

# Pass B reads decomposed/ in parallel one shard per task: keep its shards small enough to spread.
DECOMPOSED_SHARD_ROWS = 4096
TOOL_POOL_FILE = "tool_pool.json"
Progress = Callable[[str], None]


PASS_A = "data: read, filter, align, decompose"
PASS_B = "data: format, negatives, mixture"


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


def tool_pool(cfg: Config, sink_a: PassSink) -> list[str]:
    """Tool lists for case (b) negatives: the corpus's own, then those of ``negatives.tool_pool_files``.
    Saved beside the decomposed shards, so a re-mix (:func:`remix`) draws from the same pool."""
    pool = sink_a.tool_pool()
    for path in cfg.data.negatives.tool_pool_files:
        pool += [t for t in load_tool_pool_file(path) if t not in pool]
    (Path(cfg.output_dir) / "decomposed" / TOOL_POOL_FILE).write_text(json.dumps(pool, ensure_ascii=False))
    return pool


def _shards(decomposed: Path) -> list[str]:
    return sorted(str(p) for p in decomposed.glob("part-*.parquet"))


def _pass_a_sink(cfg: Config, out: Path) -> PassSink:
    return PassSink(
        out, "decomposed", PASS_A_SCHEMA, cfg.data.negatives.tool_pool_size, DECOMPOSED_SHARD_ROWS
    )


def _pass_a_local(cfg: Config, files: list[InputFile], out: Path, progress: Progress) -> PassSink:
    sink_a = _pass_a_sink(cfg, out)
    for i, f in enumerate(files, 1):
        for table in pass_a_file(f.__dict__, cfg):
            sink_a.consume(table)
        count(progress, PASS_A, i, len(files), unit="files", records=sink_a.rows)
    sink_a.close()
    return sink_a


def _pass_b_local(
    cfg: Config, shards: list[str], pool: list[str], out: Path, progress: Progress = lambda s: None
) -> PassSink:
    pass_b = PassB(cfg, pool)
    sink_b = PassSink(out, "corpus", CORPUS_SCHEMA)
    for i, shard in enumerate(shards, 1):
        for table in pass_b.shard(shard):
            sink_b.consume(table)
        count(progress, PASS_B, i, len(shards), unit="shards", records=sink_b.rows)
    sink_b.close()
    return sink_b


def _run_local(
    cfg: Config, files: list[InputFile], out: Path, progress: Progress
) -> tuple[PassSink, PassSink, list[str]]:
    sink_a = _pass_a_local(cfg, files, out, progress)
    pool = tool_pool(cfg, sink_a)
    return sink_a, _pass_b_local(cfg, _shards(out / "decomposed"), pool, out, progress), pool


def _run_ray(
    cfg: Config, files: list[InputFile], out: Path, progress: Progress
) -> tuple[PassSink, PassSink, list[str]]:
    """Each pass is one Ray Data map over a list of files: a task reads its file and runs every stage on
    it, so nothing travels through the object store but the results. Per-operator resource reservation
    is switched off: with a single map operator it only halves the CPUs it may use (measured here: of
    2 cores, 1 busy). Block order is left free; the fingerprint does not depend on it."""
    import ray

    d = cfg.data
    ray.data.DataContext.get_current().op_resource_reservation_enabled = False
    sink_a = _pass_a_sink(cfg, out)
    ds = ray.data.from_items([f.__dict__ for f in files], override_num_blocks=len(files)).map_batches(
        _pass_a_task, fn_kwargs={"cfg": cfg}, batch_size=1, batch_format="pyarrow"
    )
    # One task per file returns one block (a block over Ray Data's target size is split: the count is
    # capped at the number of files).
    for i, batch in enumerate(ds.iter_batches(batch_format="pyarrow", batch_size=None), 1):
        sink_a.consume(batch)
        count(progress, PASS_A, min(i, len(files)), len(files), unit="files", records=sink_a.rows)
    sink_a.close()

    sink_b = PassSink(out, "corpus", CORPUS_SCHEMA)
    pool = tool_pool(cfg, sink_a)
    shards = _shards(out / "decomposed")
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
    for i, batch in enumerate(ds.iter_batches(batch_format="pyarrow", batch_size=None), 1):
        sink_b.consume(batch)
        count(progress, PASS_B, min(i, len(shards)), len(shards), unit="shards", records=sink_b.rows)
    sink_b.close()
    return sink_a, sink_b, pool


def _manifest(
    cfg: Config, sink_b: PassSink, pass_a_stages: list[dict[str, Any]], **fields: Any
) -> dict[str, Any]:
    out = Path(cfg.output_dir)
    stats = sink_b.counts.extra
    rows = {"corpus": sink_b.rows, **fields.pop("rows", {})}
    manifest = {
        "name": cfg.name,
        "fingerprint": sink_b.fingerprint(),
        "config": cfg.model_dump(mode="json"),
        **fields,
        "stages": pass_a_stages + [s for s in sink_b.counts.as_list() if s["name"] != "stats"],
        "rows": rows,
        "splits": dict(sorted(sink_b.splits.items())),
        "buckets": stats.get("buckets", {}),
        "capabilities": stats.get("capabilities", {}),
        "token_counter": TOKEN_COUNTER,
        "outputs": {k: str(out / k) for k in ("corpus", "decomposed", "quarantine", "filtered")},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest


def run_data(cfg: Config, progress: Progress = lambda s: None) -> dict[str, Any]:
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
    sink_a, sink_b, pool = runner(cfg, files, out, progress)
    return _manifest(
        cfg,
        sink_b,
        sink_a.counts.as_list(),
        decomposed_fingerprint=sink_a.fingerprint(),
        engine=cfg.data.engine,
        seconds=round(time.time() - t0, 2),
        startup_seconds=round(t0 - t_start, 2),
        inputs=[f.__dict__ for f in files],
        formats=sink_a.counts.extra.get("formats", {}),
        rows={"decomposed": sink_a.rows},
        tool_pool_size=len(pool),
    )


def remix(cfg: Config, base_dir: str | Path, progress: Progress = lambda s: None) -> dict[str, Any]:
    """Pass B alone: re-mix the decomposed corpus of ``base_dir`` with this config into ``output_dir``.

    What a Tune trial runs: choose format, negatives, capability weights and ratios come from ``cfg``; what
    pass A decided (inputs, filters, alignment) comes from the base. It runs in the calling process (pass B
    over the sample corpus takes about a second with the template responder).
    """
    base = Path(base_dir)
    base_manifest = json.loads((base / "manifest.json").read_text())
    pool = json.loads((base / "decomposed" / TOOL_POOL_FILE).read_text())
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    progress(f"re-mixing the decomposed corpus of {base}")
    sink_b = _pass_b_local(cfg, _shards(base / "decomposed"), pool, out, progress)
    pass_a = [s for s in base_manifest["stages"] if s["name"] not in sink_b.counts.stages]
    return _manifest(
        cfg,
        sink_b,
        pass_a,
        decomposed_fingerprint=base_manifest["decomposed_fingerprint"],
        decomposed_from=str(base),
        engine="local",
        seconds=round(time.time() - t0, 2),
        rows={"decomposed": base_manifest["rows"]["decomposed"]},
        tool_pool_size=len(pool),
    )


def corpus_is_current(cfg: Config) -> bool:
    """A corpus under output_dir built from the same data config and seed can be reused as it is."""
    out = Path(cfg.output_dir)
    if not (out / "manifest.json").exists() or not (out / "decomposed" / TOOL_POOL_FILE).exists():
        return False
    built = json.loads((out / "manifest.json").read_text())["config"]
    return built.get("data") == cfg.data.model_dump(mode="json") and built.get("seed") == cfg.seed


def corpus_files(output_dir: str | Path) -> list[str]:
    """The corpus shards, for ``datasets.load_dataset("parquet", data_files=...)``."""
    return sorted(str(p) for p in (Path(output_dir) / "corpus").glob("part-*.parquet"))


def read_corpus(output_dir: str | Path, split: str | None = None) -> list[Record]:
    """The written corpus (one split, or all) as records, in id order (shard order is not fixed)."""
    files = corpus_files(output_dir)
    if not files:
        raise FileNotFoundError(f"no corpus under {Path(output_dir) / 'corpus'}: run `agentflan data` first")
    records = []
    for shard in files:
        for row in pq.read_table(shard).to_pylist():
            if split is None or row["split"] == split:
                records.append(
                    Record(
                        id=row["id"],
                        source=row["source"],
                        bucket=row["bucket"],
                        messages=[Message.from_dict(m) for m in row["messages"]],
                        tools=[json.loads(t) if isinstance(t, str) else t for t in row["tools"] or []],
                        meta=json.loads(row["meta"]),
                    )
                )
    return sorted(records, key=lambda r: r.id)


__all__ = ["run_data", "remix", "corpus_is_current", "corpus_files", "read_corpus", "PipelineError"]
