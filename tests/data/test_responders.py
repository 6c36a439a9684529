"""Responders that write negative replies: a local HF model (a tiny one built here) and an
OpenAI-compatible endpoint (a stub server stands in: no endpoint can be reached from CI)."""

from __future__ import annotations

import json
import socket
import time

import pyarrow.parquet as pq

from agentflan.config import NegativesConfig, ResponderConfig
from agentflan.data.negatives import NegativeSampler
from agentflan.data.pipeline import NEGATIVES_CACHE
from agentflan.data.record import Message, Record
from agentflan.data.responders import (
    HFResponder,
    NegativeRequest,
    OpenAIResponder,
    ResponderFailure,
    TemplateResponder,
    make_responder,
)
from agentflan.data.stage import generate


def request(i: int, case: str = "c") -> NegativeRequest:
    return NegativeRequest(f"r{i}", case, [Message("user", f"What is the weather in city number {i}?")])


def test_hf_responder_generates_deterministically(tiny_model_dir):
    cfg = ResponderConfig(kind="hf", model=str(tiny_model_dir), max_new_tokens=8, batch_size=2)
    responder = make_responder(cfg, seed=0)
    assert isinstance(responder, HFResponder)
    reqs = [request(i) for i in range(3)]
    first = responder.respond(reqs)
    assert len(first) == 3 and all(isinstance(r, str) for r in first)
    assert responder.respond(reqs) == first  # greedy
    # batching (left padding) does not change an answer
    assert HFResponder(cfg.model_copy(update={"batch_size": 1})).respond(reqs) == first


def test_hf_responder_generates_in_batches(tiny_model_dir):
    """5 prompts at batch_size 2 are 3 calls of the model, not 5; the model loads on the first request."""
    responder = HFResponder(
        ResponderConfig(kind="hf", model=str(tiny_model_dir), max_new_tokens=4, batch_size=2)
    )
    assert responder._generator is None
    model = responder.generator.model
    sizes = []
    real = model.generate

    def counting(**kw):
        sizes.append(kw["input_ids"].shape[0])
        return real(**kw)

    model.generate = counting
    assert len(responder.respond([request(i) for i in range(5)])) == 5
    assert sorted(sizes) == [1, 2, 2]


def test_hf_responder_in_the_ray_pipeline(ray_session, tiny_model_dir, shared_data, tmp_path):
    """A model-backed responder runs in Ray actors; whatever it says is checked, and counts add up."""
    from agentflan.config import load_config
    from agentflan.data.pipeline import run_data

    cfg = load_config(
        "pipelines/local.yaml",
        [
            f"data.inputs=[{shared_data}/general/sharegpt_examples.json, {shared_data}/react/fireact_hotpotqa.jsonl]",
            f"data.negatives.tool_pool_files=[{shared_data}/toolbench/G1_query.json]",
            f"data.negatives.responder={{kind: hf, model: {tiny_model_dir}, max_new_tokens: 6}}",
            "data.negatives.case_b_rate=1.0",
            f"output_dir={tmp_path}",
        ],
    )
    m = run_data(cfg)
    neg = next(s for s in m["stages"] if s["name"] == "negatives")
    assert neg["in"] > 5 and neg["in"] == neg["out"] + neg["filtered"] + neg["quarantined"]
    # The model was asked (counts that add up would too if it never was), and what it answered is cached
    # beside the decomposed corpus, one reply per distinct request.
    asked = m["responder"]["asked"]
    assert asked > 0 and m["responder"]["cached"] >= 0
    (cache,) = (tmp_path / "decomposed" / NEGATIVES_CACHE).iterdir()
    keys = pq.read_table(sorted(cache.glob("*.parquet"))).column("key").to_pylist()
    assert len(keys) == len(set(keys)) and 0 < len(keys) <= asked


def answer(i: int) -> str:
    return f"Plain answer to: What is the weather in city number {i}?"


def test_openai_responder_speaks_the_protocol(endpoint, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-test")
    replies = OpenAIResponder(endpoint.config(api_key_env="TEST_KEY")).respond([request(1), request(2)])
    assert replies == [answer(1), answer(2)]
    call = endpoint.seen[0]
    assert call["path"] == "/v1/chat/completions" and call["auth"] == "Bearer sk-test"
    assert call["body"]["model"] == "m" and call["body"]["temperature"] == 0


def test_openai_responder_sends_concurrently(endpoint):
    """A batch is in flight ``concurrency`` requests at a time; the replies keep the requests' order."""
    endpoint.delay_s = 0.05
    replies = OpenAIResponder(endpoint.config(concurrency=4)).respond([request(i) for i in range(12)])
    assert replies == [answer(i) for i in range(12)]
    assert 1 < endpoint.max_in_flight <= 4


def test_openai_responder_retries_5xx_and_429(endpoint):
    endpoint.script = lambda q, n: {1: (500, {}), 2: (429, {}), 3: (503, {})}.get(n, (200, {}))
    replies = OpenAIResponder(endpoint.config(retry_backoff_s=0.01)).respond([request(1), request(2)])
    assert replies == [answer(1), answer(2)]
    assert set(endpoint.attempts.values()) == {4}  # 3 failures, then the answer (max_retries=3)


def test_openai_responder_honours_retry_after(endpoint):
    endpoint.script = lambda q, n: (429, {"Retry-After": "0.3"}) if n == 1 else (200, {})
    start = time.monotonic()
    replies = OpenAIResponder(endpoint.config(retry_backoff_s=0.001)).respond([request(1)])
    assert replies == [answer(1)] and time.monotonic() - start >= 0.3


def test_openai_responder_does_not_retry_a_bad_request(endpoint):
    endpoint.script = lambda q, n: (400, {})
    [reply] = OpenAIResponder(endpoint.config(retry_backoff_s=0.001)).respond([request(1)])
    assert isinstance(reply, ResponderFailure) and reply.reason.startswith("HTTP 400")
    assert sum(endpoint.attempts.values()) == 1


def test_openai_responder_gives_up_on_an_endpoint_that_is_down():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ResponderConfig(kind="openai", model="m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=2)
    [reply] = OpenAIResponder(cfg.model_copy(update={"retry_backoff_s": 0.001})).respond([request(1)])
    assert isinstance(reply, ResponderFailure) and "after 3 attempts" in reply.reason


def test_a_failing_request_quarantines_its_record_alone(endpoint):
    """One query the endpoint always fails: its candidate is quarantined (responder_failed), the rest of
    the batch becomes negatives, and the stage's counts add up."""
    bad = "What is the weather in city number 3?"
    endpoint.script = lambda q, n: (503, {}) if q == bad else (200, {})
    responder = OpenAIResponder(endpoint.config(max_retries=1, retry_backoff_s=0.001))
    seeds = [
        Record(
            id=f"g{i}",
            source="sharegpt",
            bucket="general",
            messages=[
                Message("user", f"What is the weather in city number {i}?"),
                Message("assistant", "Sunny.", loss=True),
            ],
            meta={"kind": "general"},
        )
        for i in range(6)
    ]
    sampler = NegativeSampler(NegativesConfig(case_b_rate=1.0), responder, ['[{"name": "t"}]'], seed=0)
    out = generate(list(seeds), "negatives", sampler)
    counts = json.loads(out[-1]["meta"])
    assert counts["in"] == 6 and counts["out"] == 5 and counts["quarantined"] == {"responder_failed": 1}
    assert counts["in"] == counts["out"] + sum(counts["filtered"].values()) + sum(
        counts["quarantined"].values()
    )
    [tomb] = [e for e in out if isinstance(e, dict) and e["status"] == "quarantined"]
    assert tomb["id"] == "g3#negatives" and tomb["reason"].startswith("responder_failed: HTTP 503")
    made = [e for e in out if isinstance(e, Record) and e.bucket == "negatives"]
    assert sorted(r.meta["seed_id"] for r in made) == ["g0", "g1", "g2", "g4", "g5"]
    assert endpoint.attempts[bad] == 2


def test_template_responder_is_offline_and_seeded():
    a = TemplateResponder(seed=0).respond([request(i) for i in range(10)])
    assert a == TemplateResponder(seed=0).respond([request(i) for i in range(10)])
    assert len(set(a)) > 1
    b = NegativeRequest("x", "b", [Message("user", "hi")], reference="Hello there!")
    assert TemplateResponder(seed=0).respond([b]) == ["Hello there!"]
