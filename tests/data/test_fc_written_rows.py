"""Native function calling, rows written from published schemas (``fc_rows.py``): xLAM/APIGen, Hermes and
ToolACE, and the Python call literals ToolACE writes."""

from __future__ import annotations

import json

import pytest
from fc_helpers import (
    args,
    assert_openai_shaped,
    calls,
    item,
)
from fc_rows import HERMES_ROW, HERMES_TOOLS, TOOLACE_ROW, XLAM_ROWS

from agentflan.data import function_calling
from agentflan.data.readers import parse_item


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
