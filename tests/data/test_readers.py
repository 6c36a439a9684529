"""Each reader on the real file of its schema, and on the Agent-FLAN release schema written here."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agentflan.data.readers import RecordError, is_agent_record, iter_raw_items, parse_item


def items(path: Path, limit: int = 1_000_000) -> list[dict]:
    return list(iter_raw_items(str(path), path.read_bytes(), limit))


def records(path: Path) -> list:
    return [parse_item(it, path.stem)[0] for it in items(path)]


def test_agentinstruct_conversations_keep_loss(shared_data):
    path = shared_data / "agentinstruct/db.jsonl"
    recs = records(path)
    assert len(recs) == 430
    first = recs[0]
    assert first.id == "db:db_0"
    assert [m.role for m in first.messages[:4]] == ["user", "assistant", "user", "assistant"]
    # AgentInstruct's own loss flags: the "Ok." acknowledgement is not trained, the steps are.
    assert first.messages[1].content == "Ok." and first.messages[1].loss is False
    assert first.messages[3].loss is True
    assert first.origin.endswith("db.jsonl:1")


def test_messages_schema(shared_data):
    recs = records(shared_data / "agentinstruct/mixed_sample_200.messages.json")
    assert len(recs) == 200
    assert recs[0].messages[0].role == "system"
    # JSON array elements carry their line numbers
    lines = [int(r.origin.rsplit(":", 1)[1]) for r in recs]
    assert lines == sorted(lines) and lines[0] == 2
    fireact = records(shared_data / "react/fireact_hotpotqa.jsonl")
    assert len(fireact) == 500 and fireact[0].id == "fireact_hotpotqa:L1"
    assert all(is_agent_record(r) for r in fireact)


def test_toolllama_tools_come_from_the_system_prompt(shared_data):
    recs = records(shared_data / "toolbench/toolllama_G1_demo.json")
    assert len(recs) == 4
    names = [t["name"] for t in recs[0].tools]
    assert "love_quote_for_olato_quotes" in names and "Finish" in names
    assert [m.role for m in recs[1].messages] == ["system", "user", "assistant", "tool", "assistant"]


def test_toolbench_dfs_takes_the_whole_chain(shared_data):
    (rec,) = records(shared_data / "toolbench/answer_G1_10_DFS.json")
    assert rec.meta["format"] == "toolbench_dfs" and rec.meta["finish_type"] == "give_answer"
    assert {t["name"] for t in rec.tools} >= {"transitaire_for_transitaires", "transitaires_for_transitaires"}
    assistant = [m.content for m in rec.messages if m.role == "assistant"]
    assert len(assistant) == 3 and "Action: Finish" in assistant[-1]  # function calls rendered as ReAct


def test_sharegpt_is_general(shared_data):
    recs = records(shared_data / "general/sharegpt_examples.json")
    assert len(recs) == 5 and not any(is_agent_record(r) for r in recs)


def test_agentflan_release_schema(tmp_path):
    """`conversation` of role/content, `loss` on some turns only, extra keys: what breaks a plain datasets load."""
    rows = [
        {
            "id": "toolbench_0",
            "type": "toolbench",
            "conversation": [
                {"role": "system", "content": "You may use tools."},
                {"role": "user", "content": "Weather in Paris?", "loss": False},
                {
                    "role": "assistant",
                    "content": 'Thought: check\nAction: weather\nAction Input: {"city": "Paris"}',
                },
                {"role": "user", "content": "Observation: sunny"},
                {"role": "assistant", "content": "It is sunny.", "loss": True, "extra": 1},
            ],
        },
        {
            "id": 7,
            "conversation": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello", "loss": False},
            ],
        },
    ]
    path = tmp_path / "agent_flan.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    a, b = records(path)
    assert a.meta["format"] == "agentflan" and a.id == "agent_flan:toolbench_0"
    assert [m.loss for m in a.messages] == [False, False, True, False, True]  # missing loss: assistant only
    assert b.id == "agent_flan:7" and b.messages[1].loss is False


def test_parquet_input(tmp_path, shared_data):
    src = json.loads((shared_data / "general/sharegpt_examples.json").read_text())
    path = tmp_path / "chats.parquet"
    pq.write_table(
        pa.Table.from_pylist([{"id": r["id"], "conversations": r["conversations"]} for r in src]), path
    )
    recs = records(path)
    assert len(recs) == 5 and recs[0].messages[0].role == "user"


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"{not json", "invalid_json"),
        (b'{"conversations": [{"from": "wizard", "value": "x"}]}', "bad_message"),
        (b'{"messages": [{"content": "no role"}]}', "bad_message"),
        (
            b'{"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]}',
            "empty_content",
        ),
        (b'{"id": 1, "text": "no conversation"}', "unrecognised_schema"),
        (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', "not_utf8"),
        (b'{"messages": [{"role": "user", "content": "only a question"}]}', "no_assistant_message"),
    ],
)
def test_bad_items_raise_with_a_code(tmp_path, line, code):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n" + line + b"\n")
    (item,) = items(path)
    assert item["line"] == 2
    with pytest.raises(RecordError) as e:
        parse_item(item, "bad")
    assert e.value.code == code


def test_oversized_record(tmp_path):
    path = tmp_path / "big.jsonl"
    big = {"messages": [{"role": "user", "content": "x" * 2_000_000}, {"role": "assistant", "content": "y"}]}
    path.write_text(json.dumps(big))
    (item,) = items(path, limit=1_000_000)
    with pytest.raises(RecordError) as e:
        parse_item(item, "big")
    assert e.value.code == "too_large" and "2.0 MB" in e.value.detail


def test_broken_json_array_keeps_the_good_elements(tmp_path):
    path = tmp_path / "arr.json"
    path.write_text(
        '[\n  {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},\n  {"messages": [oops]}\n]'
    )
    good, bad = items(path)
    assert good["line"] == 2 and not good["error"]
    assert bad["error"].startswith("invalid_json") and "line 3" in bad["error"]
