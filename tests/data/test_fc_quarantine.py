"""Native function calling, bad input: every unusable call raises a RecordError that names the message, a
native data run quarantines such rows with their reason (nothing lost, the stages add up), and corpora without
native calls read as before."""

from __future__ import annotations

import json
from typing import Any

import pyarrow.parquet as pq
import pytest
from fc_helpers import (
    FC,
    assert_stages_add_up,
    item,
    native_cfg,
    raw_items,
)
from fc_rows import HERMES_ROW, TOOLACE_ROW, XLAM_ROWS

from agentflan.data import function_calling
from agentflan.data.pipeline import corpus_files, run_data
from agentflan.data.readers import RecordError, parse_item

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
    m = run_data(native_cfg([(path, "mixed", "agent")], tmp_path / "out"))
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
