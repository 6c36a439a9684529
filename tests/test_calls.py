"""agentflan.calls, the one reader of tool calls in model output, on real replies.

Real assistant turns come from tests/data/real (SOURCES.md): glaive-function-calling (raw ``<functioncall>`` and
LLaMA-Factory's JSON ``function_call`` turns), the typed-parts dialogues (parallel calls), ToolBench (ToolLLaMA
ReAct turns; a DFS answer's OpenAI ``function_call`` messages), FireAct, AgentInstruct and BFCL's ground truth.
No real Hermes or Llama-3.1 replies are stored, so real calls are rendered through our own ``hermes`` and
``llama31`` chat templates: exactly the text a model trained on them writes.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from agentflan.calls import SYNTAXES, ToolCall, parse_calls, syntax_for
from agentflan.data.align import align_record
from agentflan.data.readers import parse_item
from agentflan.data.record import Record
from call_helpers import FC, native_calls, read, records


@pytest.fixture(scope="module")
def glaive(shared_data) -> list[Record]:
    return records(shared_data / FC / "glaive_toolcall_sharegpt.json")


@pytest.fixture(scope="module")
def typed_parts(shared_data) -> list[Record]:
    return records(shared_data / FC / "openai_tools_typed_parts.jsonl")


# ------------------------------------------------------------------------------------ native templates


def _replies(template: str, rec: Record) -> list[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    """Each assistant message with calls, as the template renders it (what the model writes), with its calls."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from agentflan.train.tool_templates import JINJA_TEMPLATES

    source = JINJA_TEMPLATES[template].source
    msgs = [m.to_dict() for m in rec.messages]
    for m in msgs:  # the template reads OpenAI fields only
        for k in ("loss", "capability", "weight", "part_weights"):
            m.pop(k, None)

    def render(conv: list[dict[str, Any]], prompt: bool) -> str:
        (text,), _ = render_jinja_template([conv], tools=rec.tools, chat_template=source,
                                           add_generation_prompt=prompt, bos_token="", eos_token="")  # fmt: skip
        return text

    out = []
    for i, m in enumerate(msgs):
        if m["role"] == "assistant" and m.get("tool_calls"):
            reply = render(msgs[: i + 1], False)[len(render(msgs[:i], True)) :]
            calls = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in m["tool_calls"]]
            out.append((reply, calls))
    return out


@pytest.mark.parametrize(("template", "syntax"), [("hermes", "hermes"), ("llama31", "llama31")])
def test_native_templates_read_back_every_call(glaive, typed_parts, template, syntax):
    n = parallel = 0
    for rec in glaive[:40] + typed_parts:
        for reply, calls in _replies(template, rec):
            got = parse_calls(reply, syntax)
            assert read(got) == calls, reply
            assert [c.id for c in got] == [f"call_{k}" for k in range(len(calls))]
            assert all(c.error is None and c.syntax == syntax for c in got)
            n, parallel = n + 1, parallel + (len(calls) > 1)
    assert n >= 40 and parallel >= 3  # the typed-parts dialogues make parallel calls


def test_hermes_keeps_the_text_around_the_calls(typed_parts):
    reply, calls = next((r, c) for rec in typed_parts for r, c in _replies("hermes", rec) if len(c) > 1)
    got = parse_calls(reply, "hermes")
    assert len(got) == len(calls) > 1
    for c in got:
        assert reply[c.span[0] : c.span[1]].startswith("<tool_call>")
        assert reply[c.span[0] : c.span[1]].endswith("</tool_call>")


def test_the_unclosed_tag_rule():
    """An unclosed <tool_call> runs to the next tag or the end: a call when its JSON is complete, else an error."""
    call = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    stopped = parse_calls(f"<tool_call>\n{call}\n<|im_end|>", "hermes")  # a server that stops at </tool_call>
    assert read(stopped) == [("get_weather", {"city": "Paris"})] and stopped[0].error is None
    (cut,) = parse_calls(f"<tool_call>\n{call[:30]}", "hermes")  # cut inside the call (max tokens)
    assert (cut.name, cut.arguments, cut.error_code) == ("get_weather", None, "bad_call")
    assert cut.error.startswith("unclosed <tool_call>")
    two = parse_calls(f"<tool_call>{call}<tool_call>{call}</tool_call>", "hermes")
    assert [c.error for c in two] == [None, None] and [c.id for c in two] == ["call_0", "call_1"]
    assert parse_calls("the tag </tool_call> alone, and <b>text</b>", "hermes") == []
    (empty,) = parse_calls("<tool_call></tool_call>", "hermes")
    assert empty.error and empty.name is None


def test_llama31_python_tag_forms():
    json_tag = (
        '<|python_tag|>{"name": "f", "parameters": {"a": 1}}; {"name": "g", "parameters": {}}<|eom_id|>'
    )
    assert read(parse_calls(json_tag, "llama31")) == [("f", {"a": 1}), ("g", {})]
    (builtin,) = parse_calls('<|python_tag|>brave_search.call(query="Paris weather")<|eom_id|>', "llama31")
    assert (builtin.name, builtin.arguments, builtin.error) == (
        "brave_search",
        {"query": "Paris weather"},
        None,
    )


# ----------------------------------------------------------------------------------------- react, chat


def test_react_on_real_toolllama_turns(shared_data):
    rows = json.loads((shared_data / "toolbench/toolllama_G1_demo.json").read_text())
    turns = [t["value"] for r in rows for t in r["conversations"] if t["from"] == "assistant"]
    calls = [c for t in turns for c in parse_calls(t, "react")]
    assert len(calls) >= 5
    assert all(c.error is None and isinstance(c.arguments, dict) and c.syntax == "react" for c in calls)
    assert all(c.name != "Finish" for c in calls)  # a Finish step is the final answer, not a call


def test_react_dialects_without_json_arguments_keep_their_text(shared_data):
    line = (shared_data / "react/fireact_hotpotqa.jsonl").read_text().splitlines()[0]
    turns = [m["content"] for m in json.loads(line)["messages"] if m["role"] == "assistant"]
    (search, *_) = [c for t in turns for c in parse_calls(t, "react")]
    assert search.name == "search" and search.arguments is None and search.error_code == "bad_call_arguments"
    assert search.raw_arguments and search.raw_arguments in turns[0]
    db = json.loads((shared_data / "agentinstruct/db.jsonl").read_text().splitlines()[0])
    sql = [c for t in db["conversations"] if t["from"] == "gpt" for c in parse_calls(t["value"], "react")]
    assert sql and sql[0].name == "Operation" and "SELECT" in sql[0].raw_arguments.upper()


@pytest.mark.parametrize("call_format", ["react", "chat"])
def test_what_align_teaches_reads_back_as_the_native_calls(typed_parts, glaive, call_format):
    """A model trained with call_format react / chat writes its calls as align wrote them: read back, they are the
    calls of the native form, parallel ones included."""
    checked = 0
    for rec in typed_parts + glaive[:20]:
        aligned = align_record(rec, 0, call_format)
        main = aligned if isinstance(aligned, Record) else aligned[0]
        assert main.meta["format"] == call_format
        expected = [call for group in native_calls(rec) for call in group]
        if call_format == "react":
            got = [c for m in main.messages if m.role == "assistant" for c in parse_calls(m.content, "react")]
        else:
            got = [c for turns in _chat_replies(main) for c in parse_calls(turns, "chat")]
        assert read(got) == expected, rec.id
        assert all(c.error is None for c in got)
        checked += len(expected)
    assert checked >= 40


def _chat_replies(rec: Record) -> list[list[str]]:
    """The chat-aligned replies of a record as a harness collects them: after each query or tool result, the
    assistant turns it elicits, as ``[thought, tool, arguments, ...]`` (``""`` when the step had no thought),
    up to an elicited final answer."""
    from agentflan.data.align import ELICIT_ARGS, ELICIT_FINAL, ELICIT_TOOL

    replies: list[list[str]] = []
    turns: list[str] = []
    final = False
    for k, m in enumerate(rec.messages):
        if m.role == "assistant" and not final:
            nxt = rec.messages[k + 1].content if k + 1 < len(rec.messages) else ""
            if not turns and nxt in ELICIT_ARGS:  # no thought: the first turn names the tool
                turns.append("")
            turns.append(m.content)
        elif m.role == "user" and m.content in (*ELICIT_TOOL, *ELICIT_ARGS):
            continue
        elif m.role == "user" and m.content in ELICIT_FINAL:
            final = True
        else:
            replies += [turns] if turns else []
            turns, final = [], False
    return [*replies, turns] if turns else replies


def test_chat_turns():
    assert read(
        parse_calls(["I need the weather.", "get_weather", '```json\n{"city": "Paris"}\n```'], "chat")
    ) == [("get_weather", {"city": "Paris"})]
    two = parse_calls(["t", "f", '{"a": 1}', "g", "{}"], "chat")
    assert read(two) == [("f", {"a": 1}), ("g", {})] and [c.id for c in two] == ["call_0", "call_1"]
    assert parse_calls(["No tool is needed.", "None"], "chat") == []
    (chatty,) = parse_calls(["t", "I will use get_weather.", "{}"], "chat")
    assert chatty.name is None and chatty.error_code == "bad_call"
    (bad,) = parse_calls(["t", "get_weather", "Paris"], "chat")
    assert bad.error_code == "bad_call_arguments" and bad.raw_arguments == "Paris"


# ---------------------------------------------------------------------------------------- the whole API


def test_openai_messages_keep_every_call_in_text_records(tmp_path):
    """readers._from_messages (Agent-FLAN release rows, ToolBench DFS chains) kept only the first call."""
    row = {"id": "r1", "conversation": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Both.", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
        {"role": "user", "content": "Observation: 14 and 20"},
        {"role": "assistant", "content": "14 and 20."}]}  # fmt: skip
    item = {"path": str(tmp_path / "a.jsonl"), "line": 1, "raw": json.dumps(row), "error": ""}
    rec, fmt = parse_item(item, "release")
    assert fmt == "agentflan"
    text = rec.messages[1].content
    assert text.startswith("Thought: Both.\nAction: get_weather")
    assert read(parse_calls(text, "react")) == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Rome"}),
    ]


def test_syntax_for_templates_and_call_formats():
    assert syntax_for("native", "hermes") == "hermes"
    assert syntax_for("native", "llama31") == "llama31"
    assert syntax_for("native", "model") == "hermes"
    llama_template = '{{- "<|python_tag|>" }}{"name": ..., "parameters": ...}'
    assert syntax_for("native", "model", llama_template) == "llama31"
    assert syntax_for("chat", "agentflan") == "chat" and syntax_for("react", "chatml") == "react"
    assert syntax_for("json", "chatml") == "json"
    with pytest.raises(ValueError, match="tool-calling template"):
        syntax_for("native", "chatml")
    with pytest.raises(ValueError, match="unknown call syntax"):
        parse_calls("x", "xml")  # type: ignore[arg-type]


def test_no_model_output_makes_any_syntax_raise(shared_data, typed_parts):
    """Real replies cut anywhere, and noise, through every syntax: calls or errors, never an exception."""
    texts = [r for rec in typed_parts[:8] for r, _ in _replies("hermes", rec)]
    texts += [t["value"] for r in json.loads((shared_data / "toolbench/toolllama_G1_demo.json").read_text())
              for t in r["conversations"] if t["from"] == "assistant"]  # fmt: skip
    texts += [
        "[f(a=" * 200,
        "{" * 5000,
        "[" * 5000 + "]" * 5000,
        "<tool_call>" * 50,
        "Action:\nAction Input:",
        "",
    ]
    rng = random.Random(0)
    cut = [t[: rng.randrange(len(t) + 1)] for t in texts for _ in range(5)]
    for text in texts + cut:
        for syntax in SYNTAXES:
            calls = parse_calls(text if syntax != "chat" else ["", text, text], syntax)  # type: ignore[arg-type]
            for c in calls:
                assert isinstance(c, ToolCall) and c.id
                assert (c.error is None) == (c.error_code is None)
                assert c.error is not None or (isinstance(c.name, str) and isinstance(c.arguments, dict))
