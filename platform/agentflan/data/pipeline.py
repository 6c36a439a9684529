"""The corpus pipeline: raw files -> canonical records -> aligned -> decomposed (+ negatives) -> mixture.

Two passes, each a chain of pure batch functions (:mod:`agentflan.data.passes`) run over units of work: Ray
Data maps them one unit per task (or, with ``data.engine=local``, one Python process loops over the same
units). Each unit writes its own shards and returns a summary (:mod:`agentflan.data.sink`); this module
plans the units, runs the engines, adds up the summaries and writes the manifest:

* **Pass A** ``read -> filter -> format_following -> align -> decompose`` over the parts of the input files
  (:mod:`agentflan.data.splits`: a large file is read by several tasks) writes ``decomposed/``. The units
  also collect the pool of tool lists that case (b) negatives draw from, which needs the whole corpus.
* **Pass B** ``choose format -> negatives -> mixture`` reads ``decomposed/`` and writes ``corpus/``. A Tune
  trial re-runs pass B alone (:func:`remix`): the ReAct share, negatives, capability weights and ratios
  are all applied here.

Outputs under ``output_dir``: ``corpus/`` and ``decomposed/`` (parquet shards), ``quarantine/`` (each bad
record with its reason and ``file:line``), ``filtered/`` (ids and reasons of dropped records) and
``manifest.json`` (config, fingerprint, per-stage counts, bucket and capability statistics, and the summary of
``eval/contamination.md``: each eval set's 13-gram overlap with the corpus, :mod:`agentflan.eval.decontaminate`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from agentflan.config import Config, InputSpec
from agentflan.console import count
from agentflan.data.batch_negatives import BATCH_KINDS, fill_negatives_cache
from agentflan.data.mixture import TOKEN_COUNTER
from agentflan.data.negatives import load_tool_pool_file
from agentflan.data.passes import (
    PASS_A_SCHEMA,
    PassB,
    PassBActor,
    _pass_a_task,
    _pass_b_task,
    pass_a_unit,
    pass_b_unit,
)
from agentflan.data.readers import expand_inputs
from agentflan.data.record import CORPUS_SCHEMA, QUARANTINE_SCHEMA, Message, Record
from agentflan.data.sink import FILTERED_SCHEMA, PassSummary, clear_shards, ensure_a_shard
from agentflan.data.splits import plan
from agentflan.data.staleness import changed_input, input_stamps
from agentflan.ray_utils import ensure_ray, units_dataset

TOOL_POOL_FILE = "tool_pool.json"
NO_CORPUS = "no corpus"
NEGATIVES_CACHE = "negatives_cache"
Progress = Callable[[str], None]
Units = list[dict[str, Any]]


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


def tool_pool(cfg: Config, summary_a: PassSummary) -> list[str]:
    """Tool lists for case (b) negatives: the corpus's own, then those of ``negatives.tool_pool_files``.
    Saved beside the decomposed shards, so a re-mix (:func:`remix`) draws from the same pool."""
    pool = summary_a.tool_pool()
    for path in cfg.data.negatives.tool_pool_files:
        pool += [t for t in load_tool_pool_file(path) if t not in pool]
    (Path(cfg.output_dir) / "decomposed" / TOOL_POOL_FILE).write_text(json.dumps(pool, ensure_ascii=False))
    return pool


def _shards(decomposed: Path) -> Units:
    """Pass B's units: the decomposed shards, numbered in name order (a unit's number names its output)."""
    return [{"path": str(p), "unit": i} for i, p in enumerate(sorted(decomposed.glob("part-*.parquet")))]


def _prepare_dirs(out: Path, ok_name: str) -> None:
    for name in (ok_name, f"quarantine/{ok_name}", f"filtered/{ok_name}"):
        clear_shards(out / name)


def _finish_dirs(out: Path, ok_name: str, ok_schema: pa.Schema) -> None:
    ensure_a_shard(out / ok_name, ok_schema)
    ensure_a_shard(out / "quarantine" / ok_name, QUARANTINE_SCHEMA)
    ensure_a_shard(out / "filtered" / ok_name, FILTERED_SCHEMA)


def _pass_a(cfg: Config, files: list[InputFile], out: Path, progress: Progress) -> PassSummary:
    """Pass A over the parts of every input file (:mod:`agentflan.data.splits`): each part a unit that
    writes its own shards; the driver adds up the units' summaries."""
    parts = [p.to_dict() for p in plan([f.__dict__ for f in files], cfg.data.split_bytes)]
    _prepare_dirs(out, "decomposed")
    summary = PassSummary(cfg.data.negatives.tool_pool_size)
    if cfg.data.engine == "ray":
        summaries = _ray_map(parts, _pass_a_task, {"cfg": cfg, "out_dir": str(out)})
    else:
        summaries = (pass_a_unit(part, cfg, str(out)) for part in parts)
    for i, s in enumerate(summaries, 1):
        summary.add(s)
        count(progress, PASS_A, i, len(parts), unit="parts", records=summary.rows)
    _finish_dirs(out, "decomposed", PASS_A_SCHEMA)
    return summary


def _pass_b(
    cfg: Config, decomposed: Path, pool: list[str], out: Path, engine: str, progress: Progress
) -> PassSummary:
    """Pass B over the shards of ``decomposed``; model-written negatives are cached beside them
    (``negatives_cache/``), so every re-mix of the same decomposed corpus (a Tune study) reuses them."""
    shards = _shards(decomposed)
    cache_dir = str(decomposed / NEGATIVES_CACHE)
    _prepare_dirs(out, "corpus")
    summary = PassSummary()
    responder = cfg.data.negatives.responder
    batch = _batch_generate(cfg, shards, pool, cache_dir, progress)
    if engine == "ray" and cfg.data.negatives.enabled and responder.kind in ("hf", "openai"):
        # A model-backed responder lives in actors (a pool), so each model loads once per actor.
        summaries = _ray_map(
            shards,
            PassBActor,
            {},
            constructor={"cfg": cfg, "tool_pool": pool, "out_dir": str(out), "cache_dir": cache_dir},
            actors=responder.num_actors,
            gpus_per_actor=responder.num_gpus if responder.use_gpu else 0,
        )
    elif engine == "ray":
        kwargs = {"cfg": cfg, "tool_pool": pool, "out_dir": str(out), "cache_dir": cache_dir}
        summaries = _ray_map(shards, _pass_b_task, kwargs)
    else:
        pass_b = PassB(cfg, pool, cache_dir)
        summaries = (pass_b_unit(pass_b, shard, str(out)) for shard in shards)
    for i, s in enumerate(summaries, 1):
        summary.add(s)
        count(progress, PASS_B, i, len(shards), unit="shards", records=summary.rows)
    _finish_dirs(out, "corpus", CORPUS_SCHEMA)
    if batch:
        summary.counts.extra.setdefault("responder", {}).update(batch)
    return summary


def _batch_generate(
    cfg: Config, shards: Units, pool: list[str], cache_dir: str, progress: Progress
) -> dict[str, int]:
    """For a batch-engine responder (``vllm``), every reply pass B will need, generated into the cache
    before it runs (:mod:`agentflan.data.batch_negatives`); pass B then reads them like any cached reply.
    A re-mix (a Tune trial) does the same: it generates only what the cache lacks. Returns the manifest's
    ``responder.batch_requests`` / ``batch_answered`` ({} for other responders)."""
    if not cfg.data.negatives.enabled or cfg.data.negatives.responder.kind not in BATCH_KINDS:
        return {}
    ensure_ray(cfg.data.num_cpus)
    progress("negatives: generating the replies pass B needs in one batch job")
    counts = fill_negatives_cache(cfg, shards, pool, cache_dir)
    return {"batch_requests": counts["requests"], "batch_answered": counts["answered"]}


def _ray_map(
    units: Units,
    fn: Any,
    kwargs: dict[str, Any],
    constructor: dict[str, Any] | None = None,
    actors: int = 1,
    gpus_per_actor: float = 0,
):
    """Summaries of ``fn`` mapped over ``units`` by Ray Data, one unit per call, as their tasks finish (a
    task takes a few units: :func:`~agentflan.ray_utils.units_dataset`).

    A task whose worker dies is retried by Ray Data; one that raises retries its unit itself
    (:func:`~agentflan.data.passes.with_retries`). Either way the unit rewrites the same shards and its
    summary only comes back once it has finished, so a retry changes neither the output nor the counts.
    Per-operator resource reservation is off: with a single map operator it only halves the CPUs it may
    use (measured here: of 2 cores, 1 busy)."""
    import ray

    ray.data.DataContext.get_current().op_resource_reservation_enabled = False
    ds = units_dataset(units)
    if constructor is None:
        ds = ds.map_batches(
            fn,
            fn_kwargs=kwargs,
            batch_size=1,
            batch_format="pyarrow",
        )
    else:  # actors: Ray Data restarts a dead actor and retries its task by default
        ds = ds.map_batches(
            fn,
            fn_constructor_kwargs=constructor,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=gpus_per_actor,
            batch_size=1,
            batch_format="pyarrow",
        )
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        for text in batch.column("summary").to_pylist():
            yield json.loads(text)


def _manifest(
    cfg: Config, sink_b: PassSummary, pass_a_stages: list[dict[str, Any]], **fields: Any
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
        "responder": stats.get("responder", {}),  # negatives asked of the model, and answered from its cache
        "token_counter": TOKEN_COUNTER,
        "outputs": {k: str(out / k) for k in ("corpus", "decomposed", "quarantine", "filtered")},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest


def run_data(cfg: Config, progress: Progress = lambda s: None, dashboard: bool = True) -> dict[str, Any]:
    """Run the corpus pipeline; returns the manifest (also written to ``output_dir/manifest.json``).
    ``dashboard``: whether a local Ray instance this starts gets one (:func:`~agentflan.ray_utils.ensure_ray`)."""
    files = resolve_inputs(cfg.data.inputs)
    stamps = input_stamps(data_input_paths(cfg))  # before reading: a file changed mid-run is seen as changed
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    if cfg.data.engine == "ray":
        # joins a running cluster, or starts a local one (timed apart)
        ensure_ray(cfg.data.num_cpus, dashboard)
    t0 = time.time()
    summary_a = _pass_a(cfg, files, out, progress)
    pool = tool_pool(cfg, summary_a)
    summary_b = _pass_b(cfg, out / "decomposed", pool, out, cfg.data.engine, progress)
    manifest = _manifest(
        cfg,
        summary_b,
        summary_a.counts.as_list(),
        decomposed_fingerprint=summary_a.fingerprint(),
        engine=cfg.data.engine,
        seconds=round(time.time() - t0, 2),
        startup_seconds=round(t0 - t_start, 2),
        inputs=[f.__dict__ for f in files],
        input_files=stamps,
        formats=summary_a.counts.extra.get("formats", {}),
        rows={"decomposed": summary_a.rows},
        units={"pass_a": summary_a.units, "pass_b": summary_b.units},
        nodes=sorted(summary_a.nodes | summary_b.nodes),
        tool_pool_size=len(pool),
    )
    from agentflan.eval.decontaminate import attach_to_manifest  # eval imports this module

    return attach_to_manifest(cfg, manifest, progress)  # the eval sets' 13-gram overlap with the corpus


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
    sink_b = _pass_b(cfg, base / "decomposed", pool, out, "local", progress)
    pass_a = [s for s in base_manifest["stages"] if s["name"] not in sink_b.counts.stages]
    return _manifest(
        cfg,
        sink_b,
        pass_a,
        decomposed_fingerprint=base_manifest["decomposed_fingerprint"],
        decomposed_from=str(base),
        input_files=base_manifest.get("input_files"),
        engine="local",
        seconds=round(time.time() - t0, 2),
        rows={"decomposed": base_manifest["rows"]["decomposed"]},
        tool_pool_size=len(pool),
    )


def data_input_paths(cfg: Config) -> list[str]:
    """Every file the data stage reads: the inputs and the tool-pool files."""
    return [f.path for f in resolve_inputs(cfg.data.inputs)] + list(cfg.data.negatives.tool_pool_files)


def corpus_staleness(cfg: Config) -> str | None:
    """``None`` when the corpus under ``output_dir`` can be reused as it is (same data config, seed and input
    files: :mod:`agentflan.data.staleness`); otherwise why not, in one line (``NO_CORPUS`` when none is there)."""
    out = Path(cfg.output_dir)
    if not (out / "manifest.json").exists() or not (out / "decomposed" / TOOL_POOL_FILE).exists():
        return NO_CORPUS
    built = json.loads((out / "manifest.json").read_text())
    config = built.get("config", {})
    if config.get("data") != cfg.data.model_dump(mode="json") or config.get("seed") != cfg.seed:
        return "the data config or seed changed"
    if "input_files" not in built:
        return "its manifest records no input files (built by an older version)"
    try:
        now = input_stamps(data_input_paths(cfg))
    except PipelineError as e:  # an input directory or glob that matches nothing now
        return str(e)
    return changed_input(built["input_files"], now)


def corpus_files(output_dir: str | Path) -> list[str]:
    """The corpus shards, for ``datasets.load_dataset("parquet", data_files=...)``."""
    return sorted(str(p) for p in (Path(output_dir) / "corpus").glob("part-*.parquet"))


def corpus_shards(output_dir: str | Path) -> list[str]:
    """The corpus shards, refused in one line when there are none (what a reader of the corpus wants)."""
    files = corpus_files(output_dir)
    if not files:
        raise FileNotFoundError(f"no corpus under {Path(output_dir) / 'corpus'}: run `agentflan data` first")
    return files


def read_corpus(output_dir: str | Path, split: str | None = None) -> list[Record]:
    """The written corpus (one split, or all) as records, in id order (shard order is not fixed)."""
    records = []
    for shard in corpus_shards(output_dir):
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


__all__ = [
    "run_data",
    "remix",
    "corpus_staleness",
    "corpus_files",
    "corpus_shards",
    "read_corpus",
    "PipelineError",
]
