"""Native function calling, the native path: ReAct and ToolBench trajectories aligned as native calls, the
part weights of a call message, negatives that offer tools natively, and native fields kept through alignment."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import pytest
from fc_helpers import (
    FC,
    SAMPLE,
    args,
    assert_openai_shaped,
    calls,
    load,
)

from agentflan.config import CapabilityWeights, NegativesConfig
from agentflan.data import function_calling
from agentflan.data.align import align_record, to_native
from agentflan.data.decompose import decompose_record, weigh_record
from agentflan.data.filtering import filter_record
from agentflan.data.negatives import NegativeSampler, load_tool_pool_file
from agentflan.data.record import CALL_PARTS, Message, Record
from agentflan.data.responders import TemplateResponder
from agentflan.data.stage import Drop


def _aligned(record: Record, native_thought: str) -> Record:
    filtered = filter_record(record)
    assert isinstance(filtered, Record)
    main_variant, react = align_record(filtered, 0, "native", native_thought)
    assert main_variant.meta["format"] == "native" and react.meta["format"] == "react"
    return main_variant


@pytest.fixture(scope="module")
def fireact() -> list[Record]:
    return load(SAMPLE / "react/fireact_hotpotqa.jsonl")


@pytest.mark.parametrize("native_thought", ["content", "reasoning"])
def test_react_trajectory_becomes_native_calls(fireact, native_thought):
    rec = _aligned(fireact[0], native_thought)
    thought = (
        "I need to search for the best kick boxer in the world who has been involved in unsportsmanlike conducts "
        "and crimes of violence outside of the ring."
    )
    assert [m.role for m in rec.messages] == ["user", "assistant", "tool", "assistant"]
    step, obs, answer = rec.messages[1:]
    (call,) = step.tool_calls
    assert call["type"] == "function" and call["function"]["name"] == "search"
    assert args(call) == {"input": "best kick boxer in the world unsportsmanlike conducts crimes of violence"}
    assert (step.capability, step.loss) == ("tool_call", True)
    assert step.part_weights == {"reasoning": 1.0, "names": 1.0, "arguments": 1.0}
    assert (obs.tool_call_id, obs.name) == (call["id"], "search")
    assert obs.content.startswith("Badr Hari (born 8 December 1984)")  # "Observation: " is gone
    if native_thought == "content":
        assert (step.content, step.reasoning) == (thought, None)
        assert answer.content == "Badr Hari is the person who fits the description.\nBadr Hari"
    else:
        assert (step.content, step.reasoning) == ("", thought)
        assert (answer.content, answer.reasoning) == ("Badr Hari", "Badr Hari is the person who fits the description.")  # fmt: skip
    assert answer.tool_calls is None and answer.capability == "reasoning"
    # tools: the called functions (FireAct names its tools only in its actions), a one-string schema each
    assert rec.tools == [
        {
            "type": "function",
            "function": {
                "name": "search",
                "description": "",
                "parameters": {"type": "object", "properties": {"input": {"type": "string"}}},
            },
        }
    ]


def test_every_fireact_trajectory_aligns_natively(fireact):
    """All 500: each call message answered by tool messages with its ids, and every call named in tools."""
    n_calls = 0
    for record in fireact:
        rec = _aligned(record, "content")
        assert rec.messages[-1].role == "assistant"
        assert_openai_shaped(rec)
        named = {t["function"]["name"] for t in rec.tools}
        assert {c["function"]["name"] for c in calls(rec)} == named
        assert not any("Action:" in m.content for m in rec.messages if m.role == "assistant")
        n_calls += len(calls(rec))
    assert n_calls > 500


@pytest.mark.parametrize("native_thought", ["content", "reasoning"])
def test_toolbench_trajectory_becomes_native_calls(native_thought):
    full = load(SAMPLE / "toolbench/toolllama_G1_demo.json")[
        -1
    ]  # the last step-prefix record: the whole chain
    assert full.id.startswith("toolllama_G1_demo:Step 9: I'm planning a surprise party")
    rec = _aligned(full, native_thought)
    assert_openai_shaped(rec)
    steps = [m for m in rec.messages if m.tool_calls]
    assert [c["function"]["name"] for m in steps for c in m.tool_calls] == [
        "love_quote_for_olato_quotes",
        "success_quote_for_olato_quotes",
        "motivation_quote_for_olato_quotes",
    ]
    assert all(args(c) == {} for c in calls(rec))
    # ToolLLaMA's steps have empty thoughts: no reasoning part to weigh
    assert all(m.content == "" and m.reasoning is None for m in steps)
    assert all(m.part_weights == {"names": 1.0, "arguments": 1.0} for m in steps)
    results = [m for m in rec.messages if m.role == "tool"]
    assert [m.tool_call_id for m in results] == [m.tool_calls[0]["id"] for m in steps]
    assert "Audrey Hepburn" in results[0].content
    final = rec.messages[-1]
    assert final.tool_calls is None and "Winston Churchill" in final.content  # Finish's answer, not a call
    thought = "For your surprise party, here are some meaningful quotes"
    assert (final.content if native_thought == "content" else final.reasoning).startswith(thought)
    names = [t["function"]["name"] for t in rec.tools]
    assert {"love_quote_for_olato_quotes", "success_quote_for_olato_quotes", "motivation_quote_for_olato_quotes"} <= set(names)  # fmt: skip


def test_toolbench_dfs_answer_becomes_native_calls():
    (rec,) = load(SAMPLE / "toolbench/answer_G1_10_DFS.json")
    rec = _aligned(rec, "content")
    assert_openai_shaped(rec)
    assert [(c["function"]["name"], args(c)) for c in calls(rec)] == [
        ("transitaires_for_transitaires", {}),
        ("transitaire_for_transitaires", {"is_id": "ACT_AGENCE_CALEDONIENNE_DE_TRANSIT"}),
    ]
    assert "Postal Code: 98800" in rec.messages[-1].content


def test_native_calls_of_a_function_calling_record_are_kept(shared_data):
    """A record read with native calls goes through as it is: the same calls and ids, thought as reasoning."""
    rec = load(shared_data / FC / "openai_tools_typed_parts.jsonl")[2]
    messages, tools = to_native(rec, 0, "reasoning")
    assert calls(replace(rec, messages=messages)) == calls(rec)
    assert tools == rec.tools
    step = next(m for m in messages if m.tool_calls)
    assert step.reasoning.startswith("Okay, the user wants the area") and step.content == ""
    assert step.part_weights == {"reasoning": 1.0, "names": 1.0, "arguments": 1.0}


# ----------------------------------------------------------------------------------------- 5. part weights


def test_call_parts_map_to_capabilities():
    assert CALL_PARTS == {"reasoning": "reasoning", "names": "retrieval", "arguments": "understanding"}


def test_part_weights_follow_the_capability_weights(fireact):
    rec = decompose_record(_aligned(fireact[0], "content"))
    weighed = weigh_record(rec, CapabilityWeights(), "loss_weight", seed=0)
    step = weighed.messages[1]
    assert step.capability == "tool_call" and step.loss and step.weight == 1.0
    # the paper's weights, reasoning 1 : retrieval 0.25 : understanding 0.75, on the call's own parts
    assert step.part_weights == {"reasoning": 1.0, "names": 0.25, "arguments": 0.75}
    answer = weighed.messages[-1]  # a plain reasoning turn: one weight for the message
    assert (answer.capability, answer.weight, answer.part_weights) == ("reasoning", 1.0, None)
    other = weigh_record(
        rec, CapabilityWeights(reasoning=0.5, retrieval=0.1, understanding=0.3), "loss_weight", 0
    )
    assert other.messages[1].part_weights == {"reasoning": 0.5, "names": 0.1, "arguments": 0.3}
    off = weigh_record(
        rec, CapabilityWeights(reasoning=0.0, retrieval=0.0, understanding=0.0), "loss_weight", 0
    )
    assert isinstance(off, Drop) and off.reason == "no_trained_turn"
    (toolbench,) = load(SAMPLE / "toolbench/answer_G1_10_DFS.json")
    no_thought = weigh_record(
        decompose_record(_aligned(toolbench, "content")), CapabilityWeights(), "loss_weight", 0
    )
    assert [m.part_weights for m in no_thought.messages if m.tool_calls] == [
        {"names": 0.25, "arguments": 0.75}
    ] * 2


def test_mask_strategy_keeps_each_part_at_its_weight(fireact):
    steps = []
    for record in fireact:
        weighed = weigh_record(
            decompose_record(_aligned(record, "content")), CapabilityWeights(), "mask", seed=0
        )
        steps += [m for m in weighed.messages if m.tool_calls]
    assert len(steps) > 500
    share = {p: sum(m.part_weights[p] for m in steps) / len(steps) for p in CALL_PARTS}
    assert share["reasoning"] == 1.0
    assert 0.20 < share["names"] < 0.30 and 0.70 < share["arguments"] < 0.80
    assert all(set(m.part_weights.values()) <= {0.0, 1.0} for m in steps)
    assert all(m.loss == any(m.part_weights.values()) for m in steps)


# ------------------------------------------------------------------------------------------------ 6. negatives


def test_native_negatives_offer_tools_and_reply_without_a_call(fireact):
    pool = load_tool_pool_file(str(SAMPLE / "tools/G1_query.json"))
    general = load(SAMPLE / "general/fastchat_dummy_conversation.json", kind="general")[:20]
    agent = [decompose_record(_aligned(r, "content")) for r in fireact[:20]]
    sampler = NegativeSampler(
        NegativesConfig(case_b_rate=1.0, case_c_rate=1.0), TemplateResponder(seed=0), pool, 0, "native"
    )
    made = [r for r in sampler(agent + general) if isinstance(r, Record)]
    assert Counter(r.meta["case"] for r in made) == {"b": 20, "c": 20}
    pooled = [json.dumps(function_calling.normalize_tools(json.loads(p))) for p in pool]
    for r in made:
        assert all(m.tool_calls is None and m.role in ("user", "assistant") for m in r.messages)
        reply = r.messages[-1]
        assert reply.role == "assistant" and reply.loss and reply.capability == "general"
        if r.meta["case"] == "b":
            # tools offered natively (to the template), not as a system text
            assert r.tools and all(t["type"] == "function" for t in r.tools)
            assert json.dumps(r.tools) in pooled
            assert all("_for_" in t["function"]["name"] for t in r.tools)  # ToolBench's API names
        else:
            assert r.tools == []
    c = next(r for r in made if r.meta["case"] == "c" and r.meta["seed_id"] == fireact[0].id)
    assert c.messages[0].content == fireact[0].messages[0].content


# ------------------------------------------------------------------- native trajectories in negatives and align


def test_native_function_calling_records_seed_case_c_negatives(shared_data):
    rec = load(shared_data / FC / "glaive_toolcall_sharegpt.json")[0]
    sampler = NegativeSampler(NegativesConfig(case_c_rate=1.0), TemplateResponder(seed=0), [], 0, "native")
    (out,) = sampler([decompose_record(align_record(rec, 0, "native")[0])])
    assert isinstance(out, Record) and out.messages[0].content == "I have chicken, bell peppers, and rice."


def test_native_alignment_keeps_the_reasoning_of_plain_replies(shared_data):
    rec = load(shared_data / FC / "openai_tools_typed_parts.jsonl")[1]
    reply = rec.messages[4]
    assert reply.tool_calls is None and reply.reasoning.startswith("Okay, the user is asking about a movie")
    messages, _ = to_native(rec, 0, "reasoning")
    assert messages[4].content == reply.content and messages[4].reasoning == reply.reasoning


def test_native_react_variant_offers_no_tools_natively(shared_data):
    """The ReAct variant's text lists its tools; under native a tool-calling template must not offer them a
    second time, so its ``tools`` column is empty (as for format-following samples)."""
    rec = load(shared_data / FC / "glaive_toolcall_sharegpt.json")[0]
    native, react = align_record(rec, 0, "native")
    assert native.tools and react.meta["format"] == "react" and react.tools == []


def test_message_round_trip_keeps_native_fields():
    m = Message(
        role="assistant",
        content="",
        loss=True,
        capability="tool_call",
        tool_calls=[{"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}],
        reasoning="think",
        part_weights={"reasoning": 1.0, "names": 0.25, "arguments": 0.75},
    )
    back = Message.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back.tool_calls[0]["function"]["arguments"] == '{"a": 1}'  # in flight: JSON text
    assert (back.reasoning, back.part_weights, back.capability) == ("think", m.part_weights, "tool_call")
