"""The Agent-H and tool-use builders on the real eval files (tests/data/real/eval)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from agentflan.data.align import FORMAT_INSTRUCTIONS
from agentflan.data.negatives import TOOLS_SYSTEM_PROMPT
from agentflan.data.record import Message, Record
from agentflan.eval.agent_h import CASES, build_agent_h
from agentflan.eval.sources import EvalSources, normalize_query, training_queries
from agentflan.eval.tool_calls import build_tool_use_set


@pytest.fixture(scope="module")
def sources(shared_data) -> EvalSources:
    return EvalSources.from_dir(shared_data)


@pytest.fixture(scope="module")
def agent_h(sources):
    return build_agent_h(sources, seed=0)


def test_every_case_is_built_from_the_sources(agent_h):
    taken = agent_h.manifest["taken"]
    assert all(taken[c] > 0 for c in CASES), taken
    assert taken == agent_h.manifest["allowed"]  # no caps given
    assert sum(taken.values()) == len(agent_h.samples)
    assert {s.case for s in agent_h.samples} == set(CASES)


def test_tools_are_offered_in_b_and_d_only(agent_h):
    for s in agent_h.samples:
        assert s.expected == ("call" if s.case == "d" else "plain")
        assert s.messages[-1] == {"role": "user", "content": s.query}
        if s.case in ("b", "d"):
            assert s.tools and len(s.messages) == 2
            # the tools, then the format instruction a deployed agent gets (output_format="react" by default)
            assert (
                s.messages[0]["content"]
                == TOOLS_SYSTEM_PROMPT.format(tools=json.dumps(s.tools, ensure_ascii=False))
                + "\n"
                + FORMAT_INSTRUCTIONS["react"]
            )
        else:
            assert not s.tools and [m["role"] for m in s.messages] == ["user"]
        assert (s.reference is not None) == (s.case == "d")


def test_queries_are_unique_across_cases(agent_h):
    queries = [normalize_query(s.query) for s in agent_h.samples]
    assert len(queries) == len(set(queries))


def test_same_inputs_and_seed_give_the_same_set(sources, agent_h):
    again = build_agent_h(sources, seed=0)
    assert again.fingerprint == agent_h.fingerprint
    assert [s.id for s in again.samples] == [s.id for s in agent_h.samples]
    assert build_agent_h(sources, seed=1).fingerprint != agent_h.fingerprint


def test_exclude_queries_removes_training_queries(sources, agent_h):
    chosen = [next(s for s in agent_h.samples if s.case == c) for c in CASES]
    corpus = [
        Record(
            id=s.id,
            source="train",
            messages=[Message("user", f"  {s.query.upper()} "), Message("assistant", "x")],
        )
        for s in chosen
    ]
    exclude = training_queries(corpus)
    built = build_agent_h(sources, seed=0, exclude_queries=exclude)
    kept = {normalize_query(s.query) for s in built.samples}
    assert not kept & exclude
    assert built.manifest["excluded_queries"] == len(chosen)
    for s in chosen:  # every copy of an excluded query is counted (fastchat repeats its identity questions)
        assert built.manifest["sources"][s.source]["excluded"] >= 1
    n_tool = sum(s.source in ("toolbench_g1", "teval_plan") for s in chosen)
    assert built.manifest["pools"]["tool_queries"] == agent_h.manifest["pools"]["tool_queries"] - n_tool


def test_caps_limit_each_case(sources):
    built = build_agent_h(sources, seed=0, max_per_case={"a": 3, "c": 5, "d": 4}, max_hotpot=10)
    assert built.manifest["taken"] == {"a": 3, "b": built.manifest["allowed"]["b"], "c": 5, "d": 4}
    with pytest.raises(ValueError, match="unknown case"):
        build_agent_h(sources, max_per_case={"e": 1})


def test_write_round_trips_through_parquet(agent_h, tmp_path):
    path = agent_h.write(tmp_path)
    table = pq.read_table(path)
    assert table.num_rows == len(agent_h.samples)
    assert table.column_names == [
        "id",
        "case",
        "expected",
        "source",
        "query",
        "messages",
        "tools",
        "reference",
    ]
    manifest = json.loads((tmp_path / "agent_h.manifest.json").read_text())
    assert manifest["fingerprint"] == agent_h.fingerprint


def test_tool_use_set_holds_reference_calls(sources):
    built = build_tool_use_set(sources, seed=0, max_per_source=20, output_format="json")
    assert built.manifest["taken"] == {"toolbench_g1": 20, "teval_plan": 20}
    for s in built.samples:
        names = {t["name"] for t in s.tools}
        assert s.reference is not None and s.reference.name in names
        assert s.messages[0]["content"].endswith('"arguments": {...}}.')  # the JSON format instruction
        if s.source == "teval_plan":
            assert isinstance(s.reference.arguments, dict)
    assert (
        build_tool_use_set(sources, seed=0, max_per_source=20, output_format="json").fingerprint
        == built.fingerprint
    )


def test_toolbench_references_keep_arguments_only_when_not_cut(sources):
    built = build_tool_use_set(sources, seed=0)
    scorable = built.manifest["scorable"]
    assert scorable["toolbench_g1"]["name"] == 100
    assert 0 < scorable["toolbench_g1"]["arguments"] < 100
    assert scorable["teval_plan"] == {"name": 553, "arguments": 553}


def test_native_sets_offer_tools_to_the_chat_template_only(sources):
    """Under ``output_format: native`` the prompt is the user turn alone and the tools go to the chat template
    (``tools=``, OpenAI's wrapper), as an inference server offers them; the same queries as the text sets."""
    from agentflan.eval.sources import prompt_tools
    from agentflan.generation import ChatGenerator
    from agentflan.train.tokenizer import train_bpe_tokenizer

    native = build_agent_h(sources, seed=0, output_format="native")
    text = build_agent_h(sources, seed=0)
    assert [s.query for s in native.samples] == [s.query for s in text.samples]
    generator = ChatGenerator.__new__(ChatGenerator)  # its prompt rendering only: no model needed
    generator.tokenizer = train_bpe_tokenizer([s.query for s in text.samples], 400, "hermes")
    for s in native.samples:
        assert [m["role"] for m in s.messages] == ["user"]
        tools = prompt_tools(s.tools)
        assert (tools is not None) == (s.case in ("b", "d"))
        prompt = generator.prompt(s.messages, tools)
        assert prompt.endswith("<|im_start|>assistant\n") and s.query in prompt
        if tools:
            assert all(t["type"] == "function" and t["function"]["name"] for t in tools)
            assert "<tools>" in prompt and tools[0]["function"]["name"] in prompt
    uses = build_tool_use_set(sources, seed=0, output_format="native")
    assert uses.samples and all(len(s.messages) == 1 and s.tools for s in uses.samples)
