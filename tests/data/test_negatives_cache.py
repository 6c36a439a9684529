"""The negatives cache: a model answers each negative query once per decomposed corpus and responder config,
however many Tune trials re-mix that corpus (pass B). No Ray, no model: a counting fake stands in."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

import agentflan.data.responders as responders
from agentflan.config import ResponderConfig, load_config
from agentflan.data.passes import PassB
from agentflan.data.pipeline import TOOL_POOL_FILE, run_data
from agentflan.data.record import Message
from agentflan.data.responders import (
    CachedResponder,
    NegativeRequest,
    ResponderFailure,
    TemplateResponder,
    make_responder,
    request_key,
    responder_key,
)


class Counting:
    """A model-backed responder that counts what it is asked; fails the queries in ``failing``."""

    asked: list[str] = []  # the queries asked, across every instance (PassB builds its own)
    keys: list[str] = []  # the requests asked, as cache keys

    def __init__(self, cfg: ResponderConfig | None = None, failing: frozenset[str] = frozenset()) -> None:
        self.failing = failing

    def respond(self, requests: list[NegativeRequest]) -> list[str | ResponderFailure]:
        queries = [r.messages[-1].content for r in requests]
        Counting.asked.extend(queries)
        Counting.keys.extend(request_key(r) for r in requests)
        return [ResponderFailure("HTTP 503") if q in self.failing else f"Plainly: {q}" for q in queries]


@pytest.fixture(autouse=True)
def _fresh_counts():
    Counting.asked, Counting.keys = [], []


def req(i: int, case: str = "c") -> NegativeRequest:
    return NegativeRequest(f"r{i}", case, [Message("user", f"Question number {i}?")])  # type: ignore[arg-type]


def test_cached_responder_asks_once_and_never_caches_failures(tmp_path):
    reqs = [req(0), req(1), req(2), req(0)]  # a query twice in one batch is asked once
    first = CachedResponder(Counting(failing=frozenset({"Question number 2?"})), tmp_path, "k")
    replies = first.respond(reqs)
    assert replies[:2] == ["Plainly: Question number 0?", "Plainly: Question number 1?"]
    assert isinstance(replies[2], ResponderFailure) and replies[3] == replies[0]
    assert sorted(Counting.asked) == ["Question number 0?", "Question number 1?", "Question number 2?"]

    # another run (another trial, another Ray task): hits from disk, the failed one asked again
    Counting.asked = []
    second = CachedResponder(Counting(), tmp_path, "k")
    assert second.respond(reqs) == [
        "Plainly: Question number 0?",
        *[f"Plainly: Question number {i}?" for i in (1, 2)],
        "Plainly: Question number 0?",
    ]
    assert Counting.asked == ["Question number 2?"] and (second.hits, second.misses) == (3, 1)
    # each writer its own part file, renamed into place whole
    assert len(list((tmp_path / "k").glob("part-*.parquet"))) == 2
    assert not [p for p in (tmp_path / "k").iterdir() if not p.name.startswith("part-")]

    # the same query built another way (case, reference) or for another responder is not a hit
    Counting.asked = []
    CachedResponder(Counting(), tmp_path, "k").respond([req(0, "b")])
    CachedResponder(Counting(), tmp_path, "other").respond([req(1)])
    assert Counting.asked == ["Question number 0?", "Question number 1?"]
    assert request_key(req(0)) != request_key(NegativeRequest("r0", "c", req(0).messages, "ref"))
    assert request_key(req(0)) == request_key(NegativeRequest("another id", "c", req(0).messages))


def test_responder_key_depends_on_what_changes_replies():
    base = ResponderConfig(kind="openai", model="m", base_url="http://h/v1")
    same = [
        {"concurrency": 32, "max_retries": 0, "retry_backoff_s": 5.0},
        {"timeout_s": 1.0, "batch_size": 64, "api_key_env": "OTHER_KEY"},
    ]
    for change in same:
        assert responder_key(base.model_copy(update=change)) == responder_key(base)
    for change in ({"model": "m2"}, {"max_new_tokens": 32}, {"base_url": "http://other/v1"}):
        assert responder_key(base.model_copy(update=change)) != responder_key(base)
    assert responder_key(base).startswith("openai-")


def test_only_model_backed_responders_are_cached(tmp_path):
    assert isinstance(make_responder(ResponderConfig(), 0, tmp_path), TemplateResponder)
    cfg = ResponderConfig(kind="openai", model="m", base_url="http://h/v1")
    cached = make_responder(cfg, 0, tmp_path)
    assert isinstance(cached, CachedResponder) and cached.dir == tmp_path / responder_key(cfg)
    assert not isinstance(make_responder(cfg, 0), CachedResponder)


def _pass_b(cfg, base: Path, cache_dir: Path) -> tuple[list[dict], dict]:
    """What ``remix`` does for a trial: pass B over the shared decomposed shards; the rows and the
    negatives stage's summed counts."""
    pool = json.loads((base / "decomposed" / TOOL_POOL_FILE).read_text())
    pass_b = PassB(cfg, pool, cache_dir=str(cache_dir))
    rows = [
        r
        for shard in sorted((base / "decomposed").glob("part-*.parquet"))
        for t in pass_b.shard(str(shard))
        for r in t.to_pylist()
    ]
    counts: Counter[str] = Counter()
    for r in rows:
        if r["status"] == "count" and r["stage"] == "negatives":
            c = json.loads(r["meta"])
            counts.update(
                {
                    "in": c["in"],
                    "out": c["out"],
                    "filtered": sum(c["filtered"].values()),
                    "quarantined": sum(c["quarantined"].values()),
                }
            )
    return rows, dict(counts)


def test_two_trials_ask_the_model_once_per_query(shared_data, tmp_path, monkeypatch):
    """A 2-trial study in miniature: pass A once, then two re-mixes with another ReAct share and the same
    negatives config. Every query reaches the model once over both; another responder config misses."""
    inputs = (
        f"data.inputs=[{shared_data}/react/fireact_hotpotqa.jsonl, "
        f"{{path: {shared_data}/general/fastchat_dummy_conversation.json, source: sharegpt, kind: general}}]"
    )
    base = tmp_path / "base"
    common = [
        inputs,
        f"data.negatives.tool_pool_files=[{shared_data}/toolbench/G1_query.json]",
        "data.engine=local",
    ]
    run_data(load_config("pipelines/local.yaml", [*common, f"output_dir={base}"]))
    cache = base / "decomposed" / "negatives_cache"

    monkeypatch.setattr(responders, "OpenAIResponder", Counting)
    model = "data.negatives.responder={kind: openai, model: m, base_url: 'http://h/v1'}"

    def trial(n: int, *extra: str):
        args = [*common, model, "data.negatives.case_c_rate=0.5", f"output_dir={tmp_path / str(n)}", *extra]
        return _pass_b(load_config("pipelines/local.yaml", args), base, cache)

    rows1, counts1 = trial(1, "data.react_share=0.1")
    asked1 = len(Counting.keys)
    rows2, counts2 = trial(2, "data.react_share=0.9")
    assert 100 < asked1 <= counts1["in"]  # the corpus repeats some queries: asked once each
    assert len(Counting.keys) == len(set(Counting.keys))  # no request asked twice, over both trials
    assert len(Counting.keys) - asked1 < counts2["in"] // 10  # trial 2 answered (almost) all from the cache
    for counts in (counts1, counts2):
        assert counts["in"] == counts["out"] + counts["filtered"] + counts["quarantined"]
    replies = [json.loads(r["meta"]).get("case") for r in rows2 if r["bucket"] == "negatives"]
    assert len(replies) == counts2["out"]

    # the same trial again asks nothing; another model (another responder key) asks everything again
    Counting.keys = []
    trial(3, "data.react_share=0.9")
    assert Counting.keys == []
    trial(4, "data.react_share=0.9", "data.negatives.responder.max_new_tokens=32")
    assert len(Counting.keys) == len(set(Counting.keys)) > 100
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        responder_key(ResponderConfig(kind="openai", model="m", base_url="http://h/v1", max_new_tokens=n))
        for n in (256, 32)
    )
