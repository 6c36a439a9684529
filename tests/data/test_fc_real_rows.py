"""Native function calling, real rows: the three files of ``tests/data/real/function_calling/`` (see its
SOURCES.md) read natively by every reader, and OpenAI ``messages`` rows written from the Chat Completions schema.
Local engine only; nothing is downloaded."""

from __future__ import annotations

import json

import pytest
from fc_helpers import (
    FC,
    args,
    assert_openai_shaped,
    calls,
    item,
    load,
    parse,
    raw_items,
)

from agentflan.data import function_calling
from agentflan.data.readers import parse_item


@pytest.mark.parametrize(
    ("name", "fmt", "stats"),
    [
        # rows, rows offering tools, messages with calls, calls, messages with parallel calls, tool messages
        ("glaive_toolcall_sharegpt.json", "sharegpt_fc", (100, 59, 73, 73, 0, 73)),
        ("glaive_v2_raw.jsonl", "glaive_raw", (5, 5, 5, 5, 0, 5)),
        ("openai_tools_typed_parts.jsonl", "typed_parts", (25, 25, 34, 44, 8, 31)),
    ],
)
def test_every_real_row_is_detected_and_read_natively(shared_data, name, fmt, stats):
    path = shared_data / FC / name
    its = raw_items(path)
    assert [function_calling.detect(json.loads(it["raw"])) for it in its] == [fmt] * len(its)
    recs = []
    for it in its:
        rec, got = parse_item(it, "fc")  # a RecordError here would fail the test with its reason
        assert got == fmt and rec.meta["format"] == fmt
        assert_openai_shaped(rec)
        recs.append(rec)
    call_messages = [m for r in recs for m in r.messages if m.tool_calls]
    found = (
        len(recs),
        sum(bool(r.tools) for r in recs),
        len(call_messages),
        sum(len(m.tool_calls) for m in call_messages),
        sum(len(m.tool_calls) > 1 for m in call_messages),
        sum(m.role == "tool" for r in recs for m in r.messages),
    )
    assert found == stats


def test_glaive_sharegpt_row(shared_data):
    """The first row: a plain exchange, one call of search_recipes, its observation, then a plain refusal."""
    rec = load(shared_data / FC / "glaive_toolcall_sharegpt.json")[0]
    assert rec.id == "glaive_toolcall_sharegpt:L2"
    assert [m.role for m in rec.messages] == ["user", "assistant", "user", "assistant", "tool", "assistant", "user", "assistant"]  # fmt: skip
    call_msg = rec.messages[3]
    assert call_msg.content == "" and call_msg.loss
    (call,) = call_msg.tool_calls
    assert call["function"]["name"] == "search_recipes"
    assert args(call) == {"ingredients": ["chicken", "bell peppers", "rice"]}
    tool = rec.messages[4]
    assert (tool.tool_call_id, tool.name) == (call["id"], "search_recipes")
    assert json.loads(tool.content)["recipes"][0]["name"] == "Chicken and Bell Pepper Stir Fry"
    assert rec.messages[7].tool_calls is None  # "I'm sorry, but as an AI, I don't have the capability..."
    assert rec.tools == [
        {
            "type": "function",
            "function": {
                "name": "search_recipes",
                "description": "Search for recipes based on ingredients",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "ingredients": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "The ingredients to search for",
                        }
                    },
                    "required": ["ingredients"],
                },
            },
        }
    ]


def test_glaive_raw_rows(shared_data):
    """The single-quoted arguments become JSON objects; the schemas come out of the SYSTEM text."""
    recs = load(shared_data / FC / "glaive_v2_raw.jsonl")
    assert [[t["function"]["name"] for t in r.tools] for r in recs] == [
        ["get_exchange_rate"], ["get_news_headlines"], ["generate_password", "create_task"], ["generate_password"],
        ["calculate_median"],
    ]  # fmt: skip
    assert calls(recs[0]) == []  # "I'm sorry, but I don't have the capability to book flights."
    news = recs[1]
    assert news.messages[0].role == "system" and not news.messages[0].content.startswith("SYSTEM:")
    assert [(c["function"]["name"], args(c)) for c in calls(news)] == [
        ("get_news_headlines", {"country": "United States"}),
        ("get_news_headlines", {"country": "France"}),
    ]
    tools = [m for m in news.messages if m.role == "tool"]
    assert [t.tool_call_id for t in tools] == [c["id"] for c in calls(news)]
    assert "Biden announces new vaccine mandates" in tools[0].content
    assert "<|endoftext|>" not in "".join(m.content for m in news.messages)
    (password,) = calls(recs[3])
    assert args(password) == {"length": 12, "include_numbers": True, "include_special_characters": True}
    assert recs[2].tools[1]["function"]["parameters"]["properties"]["priority"]["enum"] == [
        "low",
        "medium",
        "high",
    ]


def test_typed_parts_row_keeps_parallel_calls_and_their_result_ids(shared_data):
    """Row 3: two then three parallel circle_area calls; each result carries the id of its call."""
    rec = load(shared_data / FC / "openai_tools_typed_parts.jsonl")[2]
    assert rec.id == "openai_tools_typed_parts:L3"
    first, second = (m for m in rec.messages if m.tool_calls)
    assert [args(c) for c in first.tool_calls] == [{"radius": 1.5}, {"radius": 3}]
    assert [args(c) for c in second.tool_calls] == [{"radius": 2.5}, {"radius": 4}, {"radius": 5.5}]
    assert [c["id"] for c in first.tool_calls] == [
        "call_7aEpYivNq3WjuZ3DXJlNZXiZ",
        "call_RcOWM5rYHIKqdKWc0Vd6aTF1",
    ]
    results = [m for m in rec.messages if m.role == "tool"]
    assert [(m.tool_call_id, m.name) for m in results[:2]] == [
        ("call_7aEpYivNq3WjuZ3DXJlNZXiZ", "circle_area"),
        ("call_RcOWM5rYHIKqdKWc0Vd6aTF1", "circle_area"),
    ]
    assert results[0].content == "{'area': 7.0686, 'radius': 1.5, 'unit':'square meters'}"
    assert first.content == "" and first.reasoning.startswith("Okay, the user wants the area of a circle")
    assert [t["function"]["name"] for t in rec.tools] == ["circle_area"]
    assert rec.tools[0]["function"]["parameters"]["required"] == ["radius"]


def test_openai_messages_written_from_the_spec():
    """OpenAI Chat Completions: ``tool_calls`` (parallel, ``arguments`` as JSON text), tool messages with
    ``tool_call_id``, ``tools`` wrapped; and the legacy ``function_call`` / ``function`` role form."""
    weather = {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}
    row = {
        "messages": [
            {"role": "user", "content": "What's the weather like in Paris and in Tokyo?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_abc",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                    },
                    {
                        "id": "call_def",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location": "Tokyo"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_abc", "content": '{"temperature": 14}'},
            {"role": "tool", "tool_call_id": "call_def", "content": '{"temperature": 21}'},
            {"role": "assistant", "content": "Paris is at 14 °C and Tokyo at 21 °C."},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": weather}}],
    }
    rec, fmt = parse_item(item(row), "openai")
    assert fmt == "openai"
    assert_openai_shaped(rec)
    assert [(c["id"], args(c)) for c in calls(rec)] == [("call_abc", {"location": "Paris"}), ("call_def", {"location": "Tokyo"})]  # fmt: skip
    assert [(m.tool_call_id, m.name) for m in rec.messages if m.role == "tool"] == [
        ("call_abc", "get_weather"),
        ("call_def", "get_weather"),
    ]
    legacy = {
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "get_weather", "arguments": '{"location": "Oslo"}'},
            },
            {"role": "function", "name": "get_weather", "content": '{"temperature": -3}'},
            {"role": "assistant", "content": "It is -3 °C in Oslo."},
        ],
        "functions": [{"name": "get_weather", "parameters": weather}],
    }
    rec = parse(legacy)
    (call,) = calls(rec)
    assert call["function"]["name"] == "get_weather" and args(call) == {"location": "Oslo"}
    assert rec.messages[2].role == "tool" and rec.messages[2].tool_call_id == call["id"]
