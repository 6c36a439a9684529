"""Negatives from a batch engine (``responder.kind: vllm``): collect every request pass B will make, generate
them in one ``ray.data.llm`` job into the cache, then pass B reads them.

vLLM cannot be installed here, so the engine step runs ``ray.data.llm``'s HTTP processor against the stub
OpenAI-compatible endpoint (tests/data/conftest.py) in place of the vLLM processor; everything around it
(collecting, deduplicating, writing the cache, pass B, a re-mix, a reply the engine failed on) is the real
code. The vLLM processor is checked only as far as it builds.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import agentflan.data.responders as responders
from agentflan.config import ResponderConfig, load_config
from agentflan.data.batch_negatives import (
    fill_negatives_cache,
    vllm_postprocess,
    vllm_preprocess,
    vllm_processor,
)
from agentflan.data.passes import PassB
from agentflan.data.pipeline import NEGATIVES_CACHE, TOOL_POOL_FILE, _shards, remix, run_data
from agentflan.data.responders import NegativeRequest, request_key


def test_vllm_rows_in_and_out():
    row = {"key": "k1", "messages": json.dumps([{"role": "user", "content": "Hi?"}])}
    assert vllm_preprocess(row, max_new_tokens=32) == {
        "key": "k1",
        "messages": [{"role": "user", "content": "Hi?"}],
        "sampling_params": {"temperature": 0.0, "max_tokens": 32},
    }
    assert vllm_postprocess({"key": "k1", "generated_text": " A plain reply.\n"}) == {
        "key": "k1",
        "reply": "A plain reply.",
    }
    # a row the engine failed on (should_continue_on_error) has no text: an empty reply, never cached
    assert vllm_postprocess({"key": "k2", "generated_text": None})["reply"] == ""


@pytest.mark.slow  # importing ray.data.llm's vLLM stages takes ~15 s
def test_vllm_processor_builds_from_the_responder_config():
    """Built (no Ray, no vLLM needed to build it): the responder config reaches the engine stage."""
    cfg = ResponderConfig(
        kind="vllm", model="/models/qwen", num_actors=2, num_gpus=2, engine_kwargs={"max_model_len": 4096}
    )
    processor = vllm_processor(cfg)
    assert "vLLMEngineStage" in processor.list_stage_names()
    c = processor.config
    assert c.model_source == "/models/qwen" and c.concurrency == 2 and c.batch_size == cfg.batch_size
    # one model over both GPUs of an actor, and the user's engine kwargs on top
    assert c.engine_kwargs["tensor_parallel_size"] == 2 and c.engine_kwargs["max_model_len"] == 4096
    assert c.should_continue_on_error  # a bad row loses itself, not the job
    with pytest.raises(ValueError, match="needs `model`"):
        ResponderConfig(kind="vllm")


class Collecting:
    """An ``openai`` responder stand-in that records the request keys pass B asks (no cache): the reference
    for what the batch job must generate."""

    keys: list[str] = []

    def __init__(self, cfg: ResponderConfig) -> None:
        pass

    def respond(self, requests: list[NegativeRequest]) -> list[str]:
        Collecting.keys.extend(request_key(r) for r in requests)
        return ["x"] * len(requests)


def http_processor(endpoint, drop: set[str] = frozenset()):
    """``ray.data.llm``'s HTTP processor against the stub endpoint, as the batch engine; rows whose key is
    in ``drop`` are left out of its output (what the vLLM processor does with a row it failed on)."""
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    config = HttpRequestProcessorConfig(url=f"{endpoint.base_url}/chat/completions", concurrency=1)
    processor = build_processor(
        config,
        preprocess=lambda row: {
            "key": row["key"],
            "payload": {"model": "m", "messages": json.loads(row["messages"]), "max_tokens": 8},
        },
        postprocess=lambda row: {
            "key": row["key"],
            "reply": row["http_response"]["choices"][0]["message"]["content"],
        },
    )
    return lambda ds: processor(ds).filter(lambda row: row["key"] not in drop)


def _negatives_counts(manifest: dict) -> dict:
    return next(s for s in manifest["stages"] if s["name"] == "negatives")


@pytest.fixture
def base(shared_data, tmp_path) -> tuple[list[str], Path]:
    """Pass A over a real ReAct corpus and real chats, once (the decomposed corpus pass B re-mixes)."""
    common = [
        f"data.inputs=[{shared_data}/react/fireact_hotpotqa.jsonl, "
        f"{{path: {shared_data}/general/fastchat_dummy_conversation.json, source: sharegpt, kind: general}}]",
        f"data.negatives.tool_pool_files=[{shared_data}/toolbench/G1_query.json]",
        "data.negatives.case_c_rate=0.5",
        "data.engine=local",
    ]
    run_data(load_config("pipelines/local.yaml", [*common, f"output_dir={tmp_path / 'base'}"]))
    return common, tmp_path / "base"


def test_batch_job_generates_what_pass_b_asks_once(base, tmp_path, endpoint, monkeypatch, ray_session):
    common, base_dir = base
    decomposed = base_dir / "decomposed"
    pool = json.loads((decomposed / TOOL_POOL_FILE).read_text())
    cache = decomposed / NEGATIVES_CACHE

    # the reference: the requests pass B makes of a model responder, with nothing cached
    monkeypatch.setattr(responders, "OpenAIResponder", Collecting)
    Collecting.keys = []
    ref_cfg = load_config(
        "pipelines/local.yaml",
        [*common, "data.negatives.responder={kind: openai, model: m, base_url: 'http://h/v1'}"],
    )
    ref = PassB(ref_cfg, pool, cache_dir=None)
    for shard in _shards(decomposed):
        list(ref.shard(shard["path"]))
    expected = Counter(Collecting.keys)
    assert len(expected) > 100 and max(expected.values()) > 1  # some queries seed several negatives
    total = sum(expected.values())

    vllm = "data.negatives.responder={kind: vllm, model: m, max_new_tokens: 8}"

    def config(name: str):
        return load_config("pipelines/local.yaml", [*common, vllm, f"output_dir={tmp_path / name}"])

    # the engine fails on one request (the vLLM processor leaves such a row without text)
    failing = max(expected, key=lambda k: (expected[k], k))  # one that seeds several negatives
    engine = {"drop": {failing}}
    monkeypatch.setattr(
        "agentflan.data.pipeline.fill_negatives_cache",
        lambda *a, **k: fill_negatives_cache(*a, **k, processor=http_processor(endpoint, engine["drop"])),
    )

    counts = fill_negatives_cache(
        config("direct"), _shards(decomposed), pool, str(cache), http_processor(endpoint, engine["drop"])
    )
    # every distinct request reached the engine once; all but the failed one were written to the cache
    assert counts == {"requests": len(expected), "answered": len(expected) - 1}
    assert len(endpoint.seen) == len(expected)

    # a re-mix (a Tune trial) asks the engine again only for what the cache lacks; pass B then reads every
    # reply from the cache, and the request still unanswered quarantines its own candidates, nothing else
    trial1 = remix(config("trial1"), base_dir)
    assert trial1["responder"] == {
        "batch_requests": 1,
        "batch_answered": 0,
        "cached": total - expected[failing],
        "asked": expected[failing],
    }
    assert len(endpoint.seen) == len(expected) + 1
    neg = _negatives_counts(trial1)
    assert neg["quarantined_reasons"] == {"responder_failed": expected[failing]}
    assert neg["in"] == neg["out"] + neg["filtered"] + neg["quarantined"]
    quarantined = pq.read_table(tmp_path / "trial1" / "quarantine" / "corpus").to_pylist()
    assert sum(r["reason"].startswith("responder_failed") for r in quarantined) == expected[failing]

    # the engine recovers: the next trial generates that one reply, and one after it asks nothing
    engine["drop"] = set()
    trial2 = remix(config("trial2"), base_dir)
    assert trial2["responder"] == {"batch_requests": 1, "batch_answered": 1, "cached": total, "asked": 0}
    assert _negatives_counts(trial2)["quarantined"] == 0
    trial3 = remix(config("trial3"), base_dir)
    assert trial3["responder"] == {"batch_requests": 0, "batch_answered": 0, "cached": total, "asked": 0}
    assert len(endpoint.seen) == len(expected) + 2
    assert trial3["fingerprint"] == trial2["fingerprint"]

    # the replies pass B wrote are the engine's
    corpus = pq.read_table(tmp_path / "trial3" / "corpus").to_pylist()
    negatives = [r for r in corpus if r["bucket"] == "negatives"]
    assert len(negatives) == _negatives_counts(trial3)["out"] > 100
    assert all("Plain answer to: " in json.dumps(r["messages"]) for r in negatives[:50])
