"""agentflan.calls on text syntaxes, real replies: glaive's ``<functioncall>`` turns and JSON calls, OpenAI
``function_call``/``tool_calls`` messages (``from_openai``), and Python call lists (BFCL's ground truth), which are
parsed, never run. Real rows come from tests/data/real (SOURCES.md)."""

from __future__ import annotations

import json

import pytest

from agentflan.calls import from_openai, parse_calls
from call_helpers import FC, read

# ------------------------------------------------------------------------------------------ glaive, json


def test_glaive_functioncall_turns(shared_data):
    rows = [json.loads(line) for line in (shared_data / FC / "glaive_v2_raw.jsonl").read_text().splitlines()]
    found = 0
    for row in rows:
        for block in row["chat"].split("ASSISTANT:")[1:]:
            block = block.split("FUNCTION RESPONSE:")[0].split("USER:")[0]
            calls = parse_calls(block, "glaive")
            assert len(calls) == block.count("<functioncall>")
            for c in calls:
                assert c.error is None and isinstance(c.arguments, dict) and c.name and c.syntax == "glaive"
                assert isinstance(c.raw_arguments, str)  # glaive's single-quoted JSON string
            found += len(calls)
    assert found >= 5


def test_json_calls_from_real_function_call_turns(shared_data):
    rows = json.loads((shared_data / FC / "glaive_toolcall_sharegpt.json").read_text())
    values = [t["value"] for r in rows for t in r["conversations"] if t["from"] == "function_call"]
    assert len(values) >= 50
    for v in values:
        (c,) = parse_calls(v, "json")
        expected = json.loads(v)
        assert (c.name, c.arguments, c.error, c.id) == (
            expected["name"],
            expected["arguments"],
            None,
            "call_0",
        )
        (fenced,) = parse_calls(f"```json\n{v}\n```", "json")
        (prose,) = parse_calls(f"I will call it: {v} now.", "json")
        assert read([fenced, prose]) == [(c.name, c.arguments)] * 2
    listed = parse_calls(json.dumps([json.loads(v) for v in values[:3]]), "json")
    assert read(listed) == [(json.loads(v)["name"], json.loads(v)["arguments"]) for v in values[:3]]
    assert [c.id for c in listed] == ["call_0", "call_1", "call_2"]
    assert all(json.loads(c.raw) == json.loads(v) for c, v in zip(listed, values, strict=False))


def test_json_reads_typed_parts_tool_calls_and_openai_messages(shared_data):
    parts = []
    for line in (shared_data / FC / "openai_tools_typed_parts.jsonl").read_text().splitlines():
        for m in json.loads(line)["messages"]:
            if isinstance(m["content"], list):
                parts += [p["value"] for p in m["content"] if p["type"] == "tool_call"]
    assert len(parts) >= 10
    for p in parts:
        (c,) = parse_calls(p, "json")
        assert c.error is None and c.name == json.loads(p)["name"]
    message = {"role": "assistant", "tool_calls": [{"id": "x9", "type": "function", "function": {
        "name": "f", "arguments": '{"a": 1}'}}]}  # fmt: skip
    (c,) = parse_calls(json.dumps(message), "json")
    assert (c.id, c.name, c.arguments) == ("x9", "f", {"a": 1})


@pytest.mark.parametrize(
    ("text", "name", "error"),
    [
        ('{"name": "get_weather", "arguments": {"city": "Par', "get_weather", "the call is not JSON"),
        ('{"name": "f", "arguments": "{\'city\': 1}"}', "f", "arguments are not JSON"),
        ('{"name": "f", "arguments": ["Paris"]}', "f", "arguments are list, not a JSON object"),
        ('{"arguments": {"x": 1}}', None, "a call without a function name"),
        ("{name: f}", None, "the call is not JSON"),
        ('[{"name": "f"}, 3]', "f", None),  # the second element errs, the first stands
    ],
)
def test_malformed_json_calls_are_errors_not_exceptions(text, name, error):
    calls = parse_calls(text, "json")
    assert calls and calls[0].name == name
    if error is None:
        assert calls[0].error is None and calls[1].error == "the call is int, not an object"
    else:
        assert calls[0].error.startswith(error)
        assert calls[0].arguments is None or calls[0].error_code == "bad_call"  # what could be read is kept
    assert parse_calls("Paris is sunny. {'name': 1}", "json") == []  # prose, not a call


def test_names_are_strings_as_written():
    (c,) = parse_calls('{"name": "__import__(\'os\').system", "arguments": {"cmd": "rm -rf /"}}', "json")
    assert c.name == "__import__('os').system" and c.error is None  # a string: only an environment's lookup
    (spaced,) = parse_calls('{"name": "Market Trends API", "arguments": {}}', "json")
    assert spaced.name == "Market Trends API"


# ------------------------------------------------------------------------------------------- from_openai


def test_from_openai_reads_a_real_dfs_answer(shared_data):
    answer = json.loads((shared_data / "toolbench/answer_G1_10_DFS.json").read_text())
    chain = max(answer["answer_generation"]["train_messages"], key=len)
    calls = [c for m in chain if m.get("function_call") for c in from_openai([m["function_call"]])]
    assert [c.name for c in calls] == [
        "transitaires_for_transitaires",
        "transitaire_for_transitaires",
        "Finish",
    ]
    assert all(c.error is None and c.syntax == "openai" for c in calls)
    assert calls[1].arguments == {"is_id": "ACT_AGENCE_CALEDONIENNE_DE_TRANSIT"}


def test_from_openai_keeps_server_ids_and_returns_bad_arguments_as_errors():
    calls = from_openai([
        {"id": "srv_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
        {"type": "function", "function": {"name": "g", "arguments": {"b": 2}}},
        {"id": "srv_3", "type": "function", "function": {"name": "h", "arguments": '{"c": '}},
        {"type": "function", "function": {"arguments": "{}"}},
    ])  # fmt: skip
    assert [c.id for c in calls] == ["srv_1", "call_1", "srv_3", "call_3"]
    assert read(calls[:2]) == [("f", {"a": 1}), ("g", {"b": 2})]
    assert (calls[2].arguments, calls[2].error_code, calls[2].raw_arguments) == (
        None,
        "bad_call_arguments",
        '{"c": ',
    )
    assert calls[3].name is None and calls[3].error_code == "bad_call"


# ------------------------------------------------------------------------------------------------ python


def test_python_calls_of_bfcl_ground_truth(shared_data):
    n = 0
    for path in sorted((shared_data / "eval/bfcl/possible_answer").glob("*.json")):
        for line in path.read_text().splitlines():
            truth = [next(iter(g.items())) for g in json.loads(line)["ground_truth"]]
            calls = [(name, {k: v[0] for k, v in p.items() if v and v[0] != ""}) for name, p in truth]
            text = (
                "["
                + ", ".join(f"{f}({', '.join(f'{k}={v!r}' for k, v in a.items())})" for f, a in calls)
                + "]"
            )
            got = parse_calls(text, "python")
            assert [(c.name, c.arguments) for c in got] == calls, text
            assert all(c.error is None for c in got) and [c.id for c in got] == [
                f"call_{k}" for k in range(len(calls))
            ]
            n += 1
    assert n == 100


def test_python_with_code_in_it_never_runs(tmp_path):
    marker = tmp_path / "ran"
    text = f"[__import__('os').system('touch {marker}'), f(a=__import__('os').system('touch {marker}'))]"
    bad_name, bad_value = parse_calls(text, "python")
    assert bad_name.name == "__import__('os').system" and bad_name.error_code == "bad_call"
    assert bad_value.name == "f" and bad_value.error_code == "bad_call_arguments"
    assert isinstance(bad_value.arguments["a"], str)  # its source text, a plain string
    (power,) = parse_calls("[f(a=9**9**9**9, b='x'*10**12)]", "python")  # no hang, no 1 TB string
    assert power.arguments == {"a": "9 ** 9 ** 9 ** 9", "b": "'x' * 10 ** 12"} and power.error
    assert not marker.exists()


@pytest.mark.parametrize(
    ("text", "expected", "error"),
    [
        ("[f(a=1), g.h(b='x')]", [("f", {"a": 1}), ("g.h", {"b": "x"})], None),
        ("```python\nf(a=[1, 2.5], d={'k': None})\n```", [("f", {"a": [1, 2.5], "d": {"k": None}})], None),
        ("[f('positional', b=2)]", [("f", {"b": 2})], "'f' has positional arguments"),
        ("[f(a=true)]", [("f", {"a": True})], "arguments of 'f' are not literals"),
        (
            "[Market Trends API(country='us')]",
            [("Market Trends API", {"country": "us"})],
            None,
        ),  # ToolACE names
        ("[f(a=1", [(None, None)], "not a list of calls"),
    ],
)
def test_python_call_lists(text, expected, error):
    calls = parse_calls(text, "python")
    assert read(calls) == expected
    assert all(c.raw in text and (c.span is None or text[c.span[0] : c.span[1]] == c.raw) for c in calls)
    assert calls[0].error == error or (error and calls[0].error.startswith(error))


def test_python_prose_is_no_call():
    assert parse_calls("The area is 25 square units.", "python") == []
    assert parse_calls("hello", "python") == []
