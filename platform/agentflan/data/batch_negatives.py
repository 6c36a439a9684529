"""Negative replies written by a batch-inference engine (vLLM) through ``ray.data.llm``, before pass B.

The ``hf`` and ``openai`` responders answer inside pass B, batch by batch, as each shard's candidates come.
An engine such as vLLM wants the opposite: every prompt at once, so that it can schedule them together,
on replicas that load the model once. So ``responder.kind: vllm`` splits the work in three Ray Data jobs
over the decomposed corpus:

1. **Collect.** Each pass-B unit runs pass B itself over its shard with a responder that only records what
   it is asked (:class:`_Recorder`, behind the same :class:`~agentflan.data.responders.CachedResponder`
   pass B uses): the requests are exactly those pass B will make, and those already in the cache are left
   out. Duplicates (one query seeding several negatives) are dropped by key.
2. **Generate.** A ``ray.data.llm`` processor (``vLLMEngineProcessorConfig``, ``responder.num_actors``
   engine replicas of ``responder.num_gpus`` GPUs each, greedy, ``max_new_tokens``) answers them, and its
   workers write the replies straight into the cache folder (``write_parquet``): the driver holds no reply.
3. **Pass B** then runs as usual: every request is a cache hit. A request the engine left unanswered (a
   row it failed on) is quarantined alone (``responder_failed``), as with any responder.

A Tune trial that re-mixes the same corpus finds every reply cached and asks the engine nothing; one that
draws other negatives (another seed or share) generates only the new ones.

vLLM cannot be installed on the development machine, so the vLLM processor itself is untested here (the
README says so). What is tested runs the same three steps with another ``ray.data.llm`` processor, the HTTP
one against a local OpenAI-compatible stub (``tests/data/test_batch_negatives.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from agentflan.config import Config, ResponderConfig
from agentflan.data.responders import (
    NOT_GENERATED,
    CachedResponder,
    NegativeRequest,
    Reply,
    ResponderFailure,
    request_key,
    responder_key,
)
from agentflan.ray_utils import units_dataset

BATCH_KINDS = frozenset({"vllm"})
REQUEST_SCHEMA = pa.schema([("key", pa.string()), ("messages", pa.string())])

# A processor: a Ray Data dataset of requests (key, messages as JSON text) in, one of (key, reply) out.
Processor = Callable[[Any], Any]


class _Recorder:
    """A responder that answers nothing and remembers what it was asked (step 1)."""

    def __init__(self) -> None:
        self.asked: list[NegativeRequest] = []

    def respond(self, requests: list[NegativeRequest]) -> list[Reply]:
        self.asked.extend(requests)
        return [ResponderFailure(NOT_GENERATED)] * len(requests)


def _collect_task(shards: pa.Table, cfg: Config, tool_pool: list[str], cache_dir: str) -> pa.Table:
    """Step 1 for a batch of decomposed shards: the requests pass B will make and the cache cannot answer."""
    from agentflan.data.passes import PassB

    recorder = _Recorder()
    key = responder_key(cfg.data.negatives.responder)
    pass_b = PassB(cfg, tool_pool, responder=CachedResponder(recorder, cache_dir, key))
    for path in shards.column("path").to_pylist():
        for _ in pass_b.shard(path):
            pass  # the rows are pass B's business; only the requests matter here
    rows = {request_key(r): _messages_json(r) for r in recorder.asked}
    return pa.table({"key": list(rows), "messages": list(rows.values())}, schema=REQUEST_SCHEMA)


def _messages_json(req: NegativeRequest) -> str:
    return json.dumps([{"role": m.role, "content": m.content} for m in req.messages], ensure_ascii=False)


def _first_of_key(group: pa.Table) -> pa.Table:
    return group.slice(0, 1)


def vllm_preprocess(row: dict[str, Any], max_new_tokens: int) -> dict[str, Any]:
    """A request row as ``ray.data.llm``'s vLLM processor takes it: chat messages (its chat-template stage
    renders them with the model's template) and greedy sampling parameters."""
    return {
        "key": row["key"],
        "messages": json.loads(row["messages"]),
        "sampling_params": {"temperature": 0.0, "max_tokens": max_new_tokens},
    }


def vllm_postprocess(row: dict[str, Any]) -> dict[str, Any]:
    """The processor's output row as a cache row; a row the engine failed on keeps an empty reply and is
    dropped before writing (:func:`_answered`)."""
    return {"key": row["key"], "reply": str(row.get("generated_text") or "").strip()}


def vllm_processor(r: ResponderConfig) -> Processor:
    """The ``ray.data.llm`` vLLM processor for a responder config (needs vllm on the GPU workers)."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    engine_kwargs: dict[str, Any] = {"tensor_parallel_size": max(1, int(r.num_gpus))}
    engine_kwargs.update(r.engine_kwargs)
    config = vLLMEngineProcessorConfig(
        model_source=str(r.model),
        engine_kwargs=engine_kwargs,
        concurrency=r.num_actors,
        batch_size=r.batch_size,
        should_continue_on_error=True,  # a bad row loses itself, not the job
    )
    return build_processor(
        config,
        preprocess=lambda row: vllm_preprocess(row, r.sampling.max_new_tokens),
        postprocess=vllm_postprocess,
    )


def _answered(batch: pa.Table) -> pa.Table:
    return batch.select(["key", "reply"]).filter(pa.compute.not_equal(batch.column("reply"), ""))


def fill_negatives_cache(
    cfg: Config,
    shards: list[dict[str, Any]],
    tool_pool: list[str],
    cache_dir: str,
    processor: Processor | None = None,
) -> dict[str, int]:
    """Steps 1 and 2 (see the module docstring): afterwards pass B finds every answerable request in
    ``cache_dir``. ``processor`` defaults to :func:`vllm_processor`; returns the counts for the manifest
    (``requests``: distinct requests sent to the engine, ``answered``: replies it wrote)."""
    import ray

    r = cfg.data.negatives.responder
    ray.data.DataContext.get_current().op_resource_reservation_enabled = False
    if not shards:
        return {"requests": 0, "answered": 0}
    asked = (
        units_dataset(shards)
        .map_batches(
            _collect_task,
            fn_kwargs={"cfg": cfg, "tool_pool": tool_pool, "cache_dir": cache_dir},
            batch_size=1,
            batch_format="pyarrow",
        )
        .materialize()  # small (prompts only), and counted before an engine is started for nothing
    )
    if asked.count() == 0:
        return {"requests": 0, "answered": 0}
    requests = asked.groupby("key").map_groups(_first_of_key, batch_format="pyarrow").materialize()
    n = requests.count()
    out = Path(cache_dir) / responder_key(r)
    before = _cached_rows(out)
    processor = processor or vllm_processor(r)
    processor(requests).map_batches(_answered, batch_format="pyarrow").write_parquet(str(out))
    return {"requests": n, "answered": _cached_rows(out) - before}


def _cached_rows(folder: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in sorted(folder.glob("[!.]*.parquet")))
