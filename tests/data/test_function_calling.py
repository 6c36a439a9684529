"""Native function calling (OpenAI ``tool_calls``), from the raw datasets to a corpus a chat template renders.

Real rows first: the three files of ``tests/data/real/function_calling/`` (see its SOURCES.md): glaive-function-
calling-v2 as LLaMA-Factory ships it (``sharegpt_fc``), glaive's raw form (``glaive_raw``) and LLaMA-Factory's
tool-use dialogues with typed content parts (``typed_parts``). There are no real rows here of xLAM/APIGen, of
NousResearch's hermes-function-calling-v1 or of raw ToolACE: their rows are written below from the published
schemas (each says what it follows), and so are the OpenAI ``messages`` rows (OpenAI's Chat Completions schema).

Then the native path: ReAct and ToolBench trajectories aligned as native calls, the part weights of a call message,
negatives that offer tools natively, a whole native data run whose every row goes through ``apply_chat_template``
with the Hermes/Qwen and Llama-3.1 templates, and the config check that a native corpus needs a tool-calling
template. Everything runs on the local engine (no Ray); nothing is downloaded.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from agentflan.cli import main
from agentflan.config import CapabilityWeights, ConfigError, NegativesConfig, load_config
from agentflan.data import function_calling
from agentflan.data.align import align_record, to_native
from agentflan.data.decompose import decompose_record, weigh_record
from agentflan.data.filtering import filter_record
from agentflan.data.negatives import NegativeSampler, load_tool_pool_file
from agentflan.data.pipeline import corpus_files, run_data
from agentflan.data.readers import RecordError, iter_raw_items, parse_item
from agentflan.data.record import CALL_PARTS, Message, Record
from agentflan.data.responders import TemplateResponder
from agentflan.data.stage import Drop

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "platform/agentflan/sample_data"
CHAT_TEMPLATES = REPO / "platform/agentflan/train/chat_templates"
NATIVE_SPEC = str(REPO / "pipelines/local_native.yaml")
FC = "function_calling"


# --------------------------------------------------------------------------------------------------- helpers


def raw_items(path: Path) -> list[dict[str, Any]]:
    return list(iter_raw_items(str(path), path.read_bytes(), 10**7))


def item(obj: dict[str, Any], line: int = 1) -> dict[str, Any]:
    """A raw item as the reader splits it from a file."""
    return {"path": "/data/written.jsonl", "line": line, "raw": json.dumps(obj), "error": ""}


def parse(obj: dict[str, Any]) -> Record:
    return parse_item(item(obj), "written")[0]


def load(path: Path, kind: str = "agent") -> list[Record]:
    """Records as the read stage leaves them (kind and bucket set)."""
    out = []
    for it in raw_items(path):
        rec, _ = parse_item(it, path.stem)
        out.append(
            replace(
                rec, meta={**rec.meta, "kind": kind}, bucket="general" if kind == "general" else rec.source
            )
        )
    return out


def calls(record: Record) -> list[dict[str, Any]]:
    return [c for m in record.messages for c in m.tool_calls or []]


def args(call: dict[str, Any]) -> Any:
    return json.loads(call["function"]["arguments"])


def assert_openai_shaped(record: Record) -> None:
    """Calls as OpenAI writes them, every tool message linked to a call of the assistant message it answers,
    tools in OpenAI's function wrapper, and every call naming an offered tool."""
    offered = {t["function"]["name"] for t in record.tools}
    for t in record.tools:
        assert set(t) == {"type", "function"} and t["type"] == "function", t
        assert isinstance(t["function"]["name"], str) and t["function"]["name"], t
        assert isinstance(t["function"].get("parameters", {}), dict), t
    last_calls: dict[str, str] = {}
    for m in record.messages:
        if m.role == "assistant" and m.tool_calls:
            last_calls = {}
            for c in m.tool_calls:
                assert set(c) == {"id", "type", "function"} and c["type"] == "function", c
                assert set(c["function"]) == {"name", "arguments"}, c
                assert isinstance(c["function"]["arguments"], str)
                assert isinstance(args(c), dict), c  # a JSON object as text
                assert isinstance(c["id"], str) and c["id"], c
                if offered:
                    assert c["function"]["name"] in offered, (c, offered)
                last_calls[c["id"]] = c["function"]["name"]
        elif m.role == "tool" and last_calls:
            assert m.tool_call_id in last_calls, (m, last_calls)
            assert m.name == last_calls[m.tool_call_id], (m, last_calls)
        elif m.role != "assistant":
            assert m.tool_calls is None and m.role in ("system", "user", "tool")


# ------------------------------------------------------------------------------- 1. real rows, every reader


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


# ------------------------------------------------------------------ 2. xLAM, Hermes, ToolACE (written rows)

# Salesforce/xlam-function-calling-60k (APIGen): ``query``, and ``tools`` / ``answers`` as JSON strings; a tool's
# ``parameters`` maps each parameter to {type, description, default}, optional ones typed "..., optional". The first
# row below is the dataset card's first example (two parallel calls of one tool).
XLAM_ROWS = [
    {
        "id": 0,
        "query": "Where can I find live giveaways for beta access and games?",
        "answers": '[{"name": "live_giveaways_by_type", "arguments": {"type": "beta"}}, '
        '{"name": "live_giveaways_by_type", "arguments": {"type": "game"}}]',
        "tools": '[{"name": "live_giveaways_by_type", "description": "Retrieve live giveaways from the GamerPower '
        'API based on the specified type.", "parameters": {"type": {"description": "The type of giveaways to '
        'retrieve (e.g., game, loot, beta).", "type": "str", "default": "game"}}}]',
    },
    {
        "id": 1,
        "query": "Find the first 5 results for 'pizza' near zip 10001.",
        "answers": '[{"name": "search_places", "arguments": {"query": "pizza", "zip": "10001", "limit": 5}}]',
        "tools": '[{"name": "search_places", "description": "Search places.", "parameters": {"query": {"description": '
        '"Search terms.", "type": "str", "default": ""}, "zip": {"description": "ZIP code.", "type": "str", '
        '"default": ""}, "limit": {"description": "Max results.", "type": "int, optional", "default": 10}}}, '
        '{"name": "get_weather", "description": "Weather.", "parameters": {"city": {"description": "City.", '
        '"type": "str", "default": ""}}}]',
    },
]

# NousResearch/hermes-function-calling-v1 (func-calling.json): ShareGPT turns (system / human / gpt / tool) and a
# ``tools`` column; the system prompt repeats the tools inside <tools></tools> (after a sentence that itself names
# "<tools> </tools>"), calls are {"name", "arguments"} JSON inside <tool_call> tags, results <tool_response> blocks.
HERMES_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_camera_live_feed",
            "description": "Retrieves the live feed from a specified security camera.",
            "parameters": {
                "type": "object",
                "properties": {
                    "camera_id": {"type": "string", "description": "The unique identifier for the camera."},
                    "stream_quality": {"type": "string", "enum": ["720p", "1080p", "4k"]},
                },
                "required": ["camera_id"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "record_camera_feed",
            "description": "Records the live feed from a specified security camera.",
            "parameters": {
                "type": "object",
                "properties": {"camera_id": {"type": "string"}, "duration_minutes": {"type": "integer"}},
                "required": ["camera_id", "duration_minutes"],
            },
        },
    },
]
HERMES_SYSTEM = (
    "You are a function calling AI model. You are provided with function signatures within <tools> </tools> XML "
    "tags. You may call one or more functions to assist with the user query. Don't make assumptions about what "
    f"values to plug into functions.\n<tools>\n{json.dumps(HERMES_TOOLS)}\n</tools>\nFor each function call return "
    "a json object with function name and arguments within <tool_call> </tool_call> tags with the following "
    'schema:\n<tool_call>\n{"name": <function-name>, "arguments": <args-dict>}\n</tool_call>\n'
)
HERMES_ROW = {
    "id": "85f6c398-69c7-4df2-aed1-29d614a93a26",
    "conversations": [
        {"from": "system", "value": HERMES_SYSTEM},
        {"from": "human", "value": "Show me the front door camera in 1080p and record it for 30 minutes."},
        {
            "from": "gpt",
            "value": '<tool_call>\n{"name": "get_camera_live_feed", "arguments": {"camera_id": "front_door", '
            '"stream_quality": "1080p"}}\n</tool_call>\n<tool_call>\n{"name": "record_camera_feed", "arguments": '
            '{"camera_id": "front_door", "duration_minutes": 30}}\n</tool_call>\n',
        },
        {
            "from": "tool",
            "value": '<tool_response>\n{"name": "get_camera_live_feed", "content": {"stream_url": '
            '"rtsp://cams/front_door_1080p"}}\n</tool_response>\n<tool_response>\n{"name": "record_camera_feed", '
            '"content": {"status": "recording", "duration_minutes": 30}}\n</tool_response>\n',
        },
        {
            "from": "gpt",
            "value": "The live feed is at rtsp://cams/front_door_1080p and a 30-minute recording started.",
        },
    ],
    "tools": json.dumps(HERMES_TOOLS),
    "category": "Home Automation",
    "subcategory": "Security Camera Management",
    "task": "View and Manage Security Camera Feeds",
}

# Team-ACE/ToolACE (data.json): ``system`` with the tools as a JSON list (BFCL-style "dict" parameters), ShareGPT
# turns from user / assistant / tool, calls as Python-style ``[Func(a=1, b="x")]``; API names may hold spaces (the
# dataset's first row calls ``Market Trends API``).
TOOLACE_TOOLS = [
    {
        "name": "Market Trends API",
        "description": "Get the latest market trends and relevant news for a specified country and trend type.",
        "parameters": {
            "type": "dict",
            "properties": {
                "trend_type": {"description": "Trend type.", "type": "string", "default": ""},
                "country": {
                    "description": "The country for which to get trends.",
                    "type": "string",
                    "default": "us",
                },
            },
            "required": ["trend_type"],
        },
        "required": None,
    },
    {
        "name": "newAddress",
        "description": "Generates a new Ethereum address that can be used to send or receive funds.",
        "parameters": {
            "type": "dict",
            "properties": {"password": {"description": "The password for the new address", "type": "string"}},
            "required": ["password"],
        },
        "required": None,
    },
]
TOOLACE_ROW = {
    "system": "You are an expert in composing functions. You are given a question and a set of possible functions. "
    "Based on the question, you will need to make one or more function/tool calls to achieve the purpose.\nHere is a "
    f"list of functions in JSON format that you can invoke:\n{json.dumps(TOOLACE_TOOLS)}. \nShould you decide to "
    "return the function call(s). \nPut it in the format of [func1(params_name=params_value, params_name2="
    "params_value2...), func2(params)]\n\nNO other text MUST be included. \n",
    "conversations": [
        {
            "from": "user",
            "value": "What's happening in the market right now? Get me the top market trends in the US.",
        },
        {"from": "assistant", "value": '[Market Trends API(trend_type="MARKET_INDEXES", country="us")]'},
        {
            "from": "tool",
            "value": '[{"name": "Market Trends API", "results": {"trends": [{"name": "S&P 500"}]}}]',
        },
        {"from": "assistant", "value": "The top market index in the US right now is the S&P 500."},
        {"from": "user", "value": "Also the gainers and a new wallet address with password 'hunter2'."},
        {
            "from": "assistant",
            "value": '[Market Trends API(trend_type="GAINERS", country="us"), newAddress(password="hunter2")]',
        },
    ],
}


def test_xlam_rows():
    first, second = (parse_item(item(r, i + 1), "xlam")[0] for i, r in enumerate(XLAM_ROWS))
    assert first.meta["format"] == "xlam"
    assert [m.role for m in first.messages] == ["user", "assistant"]
    assert first.messages[0].content == "Where can I find live giveaways for beta access and games?"
    assert [(c["function"]["name"], args(c)) for c in calls(first)] == [
        ("live_giveaways_by_type", {"type": "beta"}),
        ("live_giveaways_by_type", {"type": "game"}),
    ]
    assert len({c["id"] for c in calls(first)}) == 2  # parallel calls keep apart
    for rec in (first, second):
        assert_openai_shaped(rec)
    # xLAM's {name: {type, description, default}} parameters become a JSON schema (a parameter may be called "type")
    params = first.tools[0]["function"]["parameters"]
    assert params["type"] == "object" and params["required"] == ["type"]
    assert params["properties"]["type"] == {
        "description": "The type of giveaways to retrieve (e.g., game, loot, beta).",
        "type": "str",
        "default": "game",
    }
    assert second.tools[0]["function"]["parameters"]["required"] == ["query", "zip"]  # "int, optional" is not
    assert [t["function"]["name"] for t in second.tools] == ["search_places", "get_weather"]
    assert args(calls(second)[0]) == {"query": "pizza", "zip": "10001", "limit": 5}


@pytest.mark.parametrize("with_tools_column", [True, False])
def test_hermes_row(with_tools_column):
    row = HERMES_ROW if with_tools_column else {k: v for k, v in HERMES_ROW.items() if k != "tools"}
    assert function_calling.detect(row) == "hermes"
    rec, fmt = parse_item(item(row), "hermes")
    assert fmt == "hermes"
    assert_openai_shaped(rec)
    assert rec.tools == HERMES_TOOLS  # from the column, or from the <tools> block of the system prompt
    assert [m.role for m in rec.messages] == ["system", "user", "assistant", "tool", "tool", "assistant"]
    assert "<tools>" not in rec.messages[0].content and "[{" not in rec.messages[0].content
    call_msg = rec.messages[2]
    assert call_msg.content == ""  # the <tool_call> blocks are gone from the text
    assert [(c["function"]["name"], args(c)) for c in call_msg.tool_calls] == [
        ("get_camera_live_feed", {"camera_id": "front_door", "stream_quality": "1080p"}),
        ("record_camera_feed", {"camera_id": "front_door", "duration_minutes": 30}),
    ]
    results = rec.messages[3:5]
    assert [(m.tool_call_id, m.name) for m in results] == [
        (c["id"], c["function"]["name"]) for c in call_msg.tool_calls
    ]
    assert json.loads(results[0].content)["content"] == {"stream_url": "rtsp://cams/front_door_1080p"}


def test_toolace_row():
    assert function_calling.detect(TOOLACE_ROW) == "toolace"
    rec, fmt = parse_item(item(TOOLACE_ROW), "toolace")
    assert fmt == "toolace"
    assert_openai_shaped(rec)
    assert [t["function"]["name"] for t in rec.tools] == ["Market Trends API", "newAddress"]
    assert rec.tools[0]["function"]["parameters"]["required"] == ["trend_type"]
    assert [m.role for m in rec.messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
    ]
    assert [(c["function"]["name"], args(c)) for c in calls(rec)] == [
        ("Market Trends API", {"trend_type": "MARKET_INDEXES", "country": "us"}),  # a name with spaces
        ("Market Trends API", {"trend_type": "GAINERS", "country": "us"}),
        ("newAddress", {"password": "hunter2"}),
    ]
    assert len(rec.messages[6].tool_calls) == 2  # parallel
    tool = rec.messages[3]
    assert (tool.tool_call_id, tool.name) == (rec.messages[2].tool_calls[0]["id"], "Market Trends API")
    assert rec.messages[4].tool_calls is None  # the plain answer


def test_python_call_literals():
    (call,) = function_calling._python_calls(
        '[f(n=3, xs=[1, 2.5], on=True, none=None, d={"k": "v"})]', "message 1"
    )
    assert args(call) == {"n": 3, "xs": [1, 2.5], "on": True, "none": None, "d": {"k": "v"}}


# --------------------------------------------------------------------------------------------- 3. quarantine

WEATHER_TOOL = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def _openai_call(arguments: str, name: str = "get_weather") -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": name, "arguments": arguments}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "14"},
            {"role": "assistant", "content": "14 °C."},
        ],
        "tools": WEATHER_TOOL,
    }


BAD_ROWS = {
    "openai_unparsable_arguments": (
        _openai_call('{"city": "Paris"'),
        "bad_call_arguments",
        "message 1: arguments are not JSON",
    ),
    "openai_arguments_not_an_object": (
        _openai_call('["Paris"]'),
        "bad_call_arguments",
        "message 1: arguments are list, not a JSON object",
    ),
    "openai_tool_not_offered": (
        _openai_call('{"city": "Paris"}', name="delete_account"),
        "unknown_tool",
        "message 1: calls 'delete_account', which the record does not offer (get_weather)",
    ),
    "sharegpt_fc_tool_not_offered": (
        {
            "conversations": [
                {"from": "human", "value": "Book me a flight."},
                {"from": "function_call", "value": '{"name": "book_flight", "arguments": {"to": "London"}}'},
                {"from": "observation", "value": "{}"},
                {"from": "gpt", "value": "Done."},
            ],
            "tools": '[{"name": "get_exchange_rate", "parameters": {"type": "object"}}]',
        },
        "unknown_tool",
        "message 1: calls 'book_flight'",
    ),
    "glaive_raw_unparsable_arguments": (
        {
            "system": 'SYSTEM: You can use - {"name": "get_news_headlines", "parameters": {"type": "object"}}',
            "chat": 'USER: News?\n\n\nASSISTANT: <functioncall> {"name": "get_news_headlines", "arguments": '
            "'{\"country\": United States}'} <|endoftext|>\n\n\nFUNCTION RESPONSE: {}\n\n\nASSISTANT: None.",
        },
        "bad_call_arguments",
        "message 2: arguments are not JSON",
    ),
    "xlam_tool_not_offered": (
        {**XLAM_ROWS[0], "answers": '[{"name": "live_giveaways", "arguments": {"type": "beta"}}]'},
        "unknown_tool",
        "message 1: calls 'live_giveaways'",
    ),
    "hermes_call_not_json": (
        {
            **HERMES_ROW,
            "conversations": [
                *HERMES_ROW["conversations"][:2],
                {"from": "gpt", "value": "<tool_call>\n{name: x}\n</tool_call>"},
            ],
        },
        "bad_call",
        "message 2: the call is not JSON",
    ),
    "toolace_positional_arguments": (
        {
            **TOOLACE_ROW,
            "conversations": [
                TOOLACE_ROW["conversations"][0],
                {"from": "assistant", "value": '[Market Trends API("us")]'},
                TOOLACE_ROW["conversations"][2],
            ],
        },
        "bad_call_arguments",
        "message 2: 'Market Trends API' has positional arguments",
    ),
    "typed_parts_call_without_name": (
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "value": "Hi"}]},
                {"role": "assistant", "content": [{"type": "tool_call", "value": '{"arguments": {"x": 1}}'}]},
            ],
            "tools": json.dumps(WEATHER_TOOL),
        },
        "bad_call",
        "message 1: a call without a function name",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_unusable_calls_raise_record_errors_naming_the_message(case):
    row, code, detail = BAD_ROWS[case]
    with pytest.raises(RecordError) as err:
        parse_item(item(row), "bad")
    assert err.value.code == code
    assert detail in err.value.detail
    assert str(err.value).startswith(f"{code}: message ")


def _native_cfg(inputs: list[tuple[Path, str, str]], out: Path, *extra: str):
    spec = ",".join(f"{{path: {p}, source: {s}, kind: {k}}}" for p, s, k in inputs)
    return load_config(
        NATIVE_SPEC,
        [
            f"data.inputs=[{spec}]",
            f"output_dir={out}",
            "data.engine=local",
            f"data.negatives.tool_pool_files=[{SAMPLE / 'tools/G1_query.json'}]",
            *extra,
        ],
    )


def assert_stages_add_up(manifest: dict[str, Any]) -> None:
    for s in manifest["stages"]:
        assert s["in"] == s["out"] + s["filtered"] + s["quarantined"], s
        assert s["quarantined"] == sum(s["quarantined_reasons"].values()), s
        assert s["filtered"] == sum(s["filtered_reasons"].values()), s


def test_bad_calls_are_quarantined_by_a_native_run(shared_data, tmp_path):
    glaive = json.loads((shared_data / FC / "glaive_toolcall_sharegpt.json").read_text())
    typed = (shared_data / FC / "openai_tools_typed_parts.jsonl").read_text().splitlines()
    bad_args = BAD_ROWS["openai_unparsable_arguments"][0]
    unknown = BAD_ROWS["sharegpt_fc_tool_not_offered"][0]
    lines = [
        json.dumps(glaive[0]),
        typed[2],
        json.dumps(bad_args),
        json.dumps(glaive[3]),
        json.dumps(unknown),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    m = run_data(_native_cfg([(path, "mixed", "agent")], tmp_path / "out"))
    assert_stages_add_up(m)
    read = m["stages"][0]
    assert read["name"] == "read" and (read["in"], read["out"], read["quarantined"]) == (5, 3, 2)
    assert read["quarantined_reasons"] == {"bad_call_arguments": 1, "unknown_tool": 1}
    q = sorted(pq.read_table(tmp_path / "out/quarantine").to_pylist(), key=lambda r: r["origin"])
    assert [r["origin"].rsplit("/", 1)[1] for r in q] == ["mixed.jsonl:3", "mixed.jsonl:5"]
    assert q[0]["reason"].startswith("bad_call_arguments: message 1: arguments are not JSON")
    assert q[1]["reason"] == (
        "unknown_tool: message 1: calls 'book_flight', which the record does not offer (get_exchange_rate)"
    )
    assert json.loads(q[0]["raw"]) == bad_args and json.loads(q[1]["raw"]) == unknown  # nothing lost
    kept = {r["id"] for shard in corpus_files(tmp_path / "out") for r in pq.read_table(shard).to_pylist()}
    assert {"mixed:L1", "mixed:L2", "mixed:L4"} <= kept


def test_existing_corpora_read_as_before(shared_data):
    """Agent corpora without native calls are not function-calling records: no native fields, same dict form."""
    fireact = raw_items(shared_data / "react/fireact_hotpotqa.jsonl")[0]
    db = raw_items(shared_data / "agentinstruct/db.jsonl")[0]
    for it, fmt in ((fireact, "messages"), (db, "conversations")):
        assert function_calling.detect(json.loads(it["raw"])) is None
        rec, got = parse_item(it, "old")
        assert got == fmt and rec.tools == []
        assert all(
            m.tool_calls is None and m.reasoning is None and m.tool_call_id is None for m in rec.messages
        )
        assert all(set(m.to_dict()) == {"role", "content", "loss", "capability", "weight", "name"} for m in rec.messages)  # fmt: skip
    rec, _ = parse_item(fireact, "old")
    assert rec.messages[1].content.startswith("Thought: I need to search for the best kick boxer")


# ------------------------------------------------------------------------------------- 4. native alignment


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


# ------------------------------------------------------------------------------ 7. the native corpus, rendered


@pytest.fixture(scope="module")
def native_run(shared_data, tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    """The three real function-calling files, FireAct, and plain chats (the seeds of case (b) negatives)."""
    out = tmp_path_factory.mktemp("native")
    fc = shared_data / FC
    cfg = _native_cfg(
        [
            (fc / "glaive_toolcall_sharegpt.json", "glaive", "agent"),
            (fc / "glaive_v2_raw.jsonl", "glaive_raw", "agent"),
            (fc / "openai_tools_typed_parts.jsonl", "typed_parts", "agent"),
            (SAMPLE / "react/fireact_hotpotqa.jsonl", "react", "agent"),
            (SAMPLE / "general/fastchat_dummy_conversation.json", "sharegpt", "general"),
        ],
        out,
    )
    assert cfg.data.call_format == "native"
    return out, run_data(cfg)


@pytest.fixture(scope="module")
def native_corpus(native_run):
    import datasets

    out, _ = native_run
    return datasets.load_dataset("parquet", data_files=corpus_files(out), split="train")


def test_native_run_accounts_for_every_row(native_run):
    _, m = native_run
    assert_stages_add_up(m)
    read = m["stages"][0]
    assert (read["in"], read["quarantined"]) == (100 + 5 + 25 + 500 + 500, 0)
    formats = {Path(p).name: f for p, f in m["formats"].items()}
    assert formats["glaive_toolcall_sharegpt.json"] == {"sharegpt_fc": 100}
    assert formats["glaive_v2_raw.jsonl"] == {"glaive_raw": 5}
    assert formats["openai_tools_typed_parts.jsonl"] == {"typed_parts": 25}
    assert m["capabilities"]  # stats were gathered
    assert {"glaive", "glaive_raw", "typed_parts", "react", "general", "negatives"} <= set(m["buckets"])


def test_native_corpus_loads_as_lists_of_dicts(native_run, native_corpus):
    ds = native_corpus
    _, m = native_run
    assert len(ds) == m["rows"]["corpus"]
    assert {"messages", "tools"} <= set(ds.column_names)
    formats = Counter(json.loads(r["meta"]).get("format") for r in ds)
    assert formats["native"] > 500 and formats["react"] > 0  # react_share keeps a tenth in ReAct
    n_calls = 0
    for row in ds:
        assert isinstance(row["messages"], list) and all(isinstance(msg, dict) for msg in row["messages"])
        assert isinstance(row["tools"], list) and all(isinstance(t, dict) for t in row["tools"])
        # plain JSON values, as TRL's apply_chat_template takes them
        assert json.loads(json.dumps(row["messages"])) == row["messages"]
        assert json.loads(json.dumps(row["tools"])) == row["tools"]
        for t in row["tools"]:
            assert t["type"] == "function" and isinstance(t["function"]["name"], str)
        for msg in row["messages"]:
            assert msg["role"] in ("system", "user", "assistant", "tool") and isinstance(msg["content"], str)
            for c in msg["tool_calls"] or []:
                assert c["type"] == "function" and isinstance(c["function"]["arguments"], dict)  # decoded
                n_calls += 1
            if msg["tool_calls"]:
                assert msg["capability"] == "tool_call"
                assert set(msg["part_weights"]) == set(CALL_PARTS)
                kept = {v for v in msg["part_weights"].values() if v is not None}
                assert kept <= {0.0, 1.0}  # the spec's mask strategy: each part on or off
    assert n_calls > 500
    b = [r for r in ds if json.loads(r["meta"]).get("case") == "b"]
    assert b and all(r["tools"] for r in b)
    assert all(msg["tool_calls"] is None for r in b for msg in r["messages"])


def _tokenizer_with(template: str):
    from agentflan.train.tokenizer import train_bpe_tokenizer
    from agentflan.train.tool_templates import JINJA_TEMPLATES

    source = (CHAT_TEMPLATES / f"{template}.jinja").read_text()
    assert JINJA_TEMPLATES[template].source == source
    tok = train_bpe_tokenizer(["a small corpus to train a tokenizer on"] * 20, 300, "chatml")
    tok.chat_template = source
    return tok


@pytest.mark.parametrize("template", ["hermes", "llama31"])
def test_every_corpus_row_renders_with_a_tool_calling_template(native_corpus, template):
    tok = _tokenizer_with(template)
    failures = []
    for row in native_corpus:
        try:
            tok.apply_chat_template(row["messages"], tools=row["tools"], tokenize=False)
        except Exception as e:  # noqa: BLE001 - collected, so the failure names every row that failed
            failures.append((row["id"], f"{type(e).__name__}: {e}"))
    assert failures == []
    row = next(
        r for r in native_corpus
        if json.loads(r["meta"]).get("format") == "native" and any(len(m["tool_calls"] or []) == 2 for m in r["messages"])
    )  # fmt: skip
    step = next(m for m in row["messages"] if len(m["tool_calls"] or []) == 2)
    text = tok.apply_chat_template(row["messages"], tools=row["tools"], tokenize=False)
    key = "arguments" if template == "hermes" else "parameters"
    for c in step["tool_calls"]:
        rendered = json.dumps(
            {"name": c["function"]["name"], key: c["function"]["arguments"]}, ensure_ascii=False
        )
        assert rendered in text
    assert json.dumps(row["tools"][0]["function"]["name"]) in text  # the tools are offered
    if template == "hermes":
        assert text.count("<tool_call>") >= 2 and "<tools>" in text and "<tool_response>" in text


# ------------------------------------------------------------------------------------------------ 8. config


@pytest.mark.parametrize("template", ["agentflan", "chatml", "llama2"])
def test_native_calls_need_a_tool_calling_template(tmp_path, capsys, template):
    with pytest.raises(ConfigError) as err:
        load_config(NATIVE_SPEC, [f"train.model.template={template}", f"output_dir={tmp_path}"])
    assert f"train.model.template: {template}" in str(err.value) and "call_format" in str(err.value)
    out = tmp_path / "o"
    args = ["data", NATIVE_SPEC, f"train.model.template={template}", f"output_dir={out}"]
    assert main(args) == 2
    err_text = capsys.readouterr().err
    assert "train.model.template" in err_text and "Traceback" not in err_text
    assert not out.exists()


@pytest.mark.parametrize("template", ["hermes", "llama31", "model"])
def test_tool_calling_templates_are_accepted(tmp_path, template):
    cfg = load_config(NATIVE_SPEC, [f"train.model.template={template}", f"output_dir={tmp_path}"])
    assert (cfg.data.call_format, cfg.train.model.template) == ("native", template)
    text = load_config(
        str(REPO / "pipelines/local.yaml"), ["train.model.template=agentflan", f"output_dir={tmp_path}"]
    )
    assert text.data.call_format == "chat"  # a text template is fine for the chat form


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
