"""The ReAct parser on the dialects of the real corpora."""

from __future__ import annotations

import json

import pytest

from agentflan.data.react import parse_step, render_json_call, render_react


@pytest.mark.parametrize(
    ("text", "thought", "tool", "arguments", "final"),
    [
        (
            "\nThought: \nAction: love_quote_for_olato_quotes\nAction Input: {}",
            "",
            "love_quote_for_olato_quotes",
            "{}",
            None,
        ),
        (
            "Thought: Badr Hari fits.\nAction: finish[Badr Hari]",
            "Badr Hari fits.",
            "finish",
            "Badr Hari",
            "Badr Hari",
        ),
        (
            "Join the tables.\nAction: Operation\n```sql\nSELECT 1;\n```",
            "Join the tables.",
            "Operation",
            "SELECT 1;",
            None,
        ),
        (
            "Think: count files.\n\nAct: bash\n\n```bash\nls -1 | wc -l\n```",
            "count files.",
            "bash",
            "ls -1 | wc -l",
            None,
        ),
        (
            "THOUGHT: find the soap.\n ACTION: go to sinkbasin 1",
            "find the soap.",
            "go to sinkbasin 1",
            None,
            None,
        ),
        (
            "Thought:\nuse search.\n\nAction:\nsearch[cupcake toppers]",
            "use search.",
            "search",
            "cupcake toppers",
            None,
        ),
        (
            "Thought: relations first.\nAction: get_relations(Kerosene)",
            "relations first.",
            "get_relations",
            "Kerosene",
            None,
        ),
        ("The answer is 0.\nAction: Answer\nFinal Answer: [0]", "The answer is 0.", "Answer", None, "[0]"),
        ("Think: it is 220.\n\nAct: answer(220)", "it is 220.", "answer", "220", "220"),
        ("Thought: #3 is it.\nFinal Answer: #3", "#3 is it.", None, None, "#3"),
    ],
)
def test_dialects(text, thought, tool, arguments, final):
    step = parse_step(text)
    assert step is not None
    assert (step.thought, step.tool, step.arguments, step.final_answer) == (thought, tool, arguments, final)


def test_plain_replies_are_not_steps():
    assert parse_step("Ok.") is None
    assert parse_step("Sure, here is a poem about the sea.") is None


def test_toolbench_finish():
    give = 'Thought: done\nAction: Finish\nAction Input: {"return_type": "give_answer", "final_answer": "42"}'
    assert parse_step(give).final_answer == "42"
    up = 'Thought: stuck\nAction: Finish\nAction Input: {"return_type": "give_up_and_restart"}'
    step = parse_step(up)
    assert step.gave_up and step.final_answer is None and step.is_final


def test_every_real_action_turn_parses(shared_data):
    """All FireAct and ToolLLaMA assistant turns are ReAct steps with a tool."""
    turns = [
        m["content"]
        for line in (shared_data / "react/fireact_hotpotqa.jsonl").read_text().splitlines()
        for m in json.loads(line)["messages"]
        if m["role"] == "assistant"
    ]
    turns += [
        m["value"]
        for r in json.loads((shared_data / "toolbench/toolllama_G1_demo.json").read_text())
        for m in r["conversations"]
        if m["from"] == "assistant"
    ]
    steps = [parse_step(t) for t in turns]
    assert len(turns) > 1000
    assert all(s is not None and s.tool for s in steps)


def test_render_round_trip():
    text = render_react("look it up", "search", '{"q": "x"}')
    step = parse_step(text)
    assert (step.thought, step.tool, step.arguments) == ("look it up", "search", '{"q": "x"}')
    assert json.loads(render_json_call("t", "search", '{"q": "x"}')) == {
        "thought": "t",
        "name": "search",
        "arguments": {"q": "x"},
    }


@pytest.mark.parametrize(
    ("text", "thought", "tool", "arguments"),
    [
        # numbered steps (ReAct paper, HotpotQA prompts)
        ("Thought 1: I need to search Colorado.\nAction 1: Search[Colorado orogeny]", "I need to search Colorado.",
         "Search", "Colorado orogeny"),
        ("Thought 12: Done.\nAction 12: Finish[1,800 to 7,000 ft]", "Done.", "Finish", "1,800 to 7,000 ft"),
        # multi-line JSON arguments
        ('Thought: weather.\nAction: get_weather\nAction Input: {\n  "city": "Paris",\n  "unit": "C"\n}',
         "weather.", "get_weather", '{\n  "city": "Paris",\n  "unit": "C"\n}'),
        # an observation the model wrote itself is not part of the arguments
        ('Thought: t\nAction: search\nAction Input: {"q": "x"}\nObservation: made up',
         "t", "search", '{"q": "x"}'),
    ],
)  # fmt: skip
def test_edge_dialects(text, thought, tool, arguments):
    step = parse_step(text)
    assert (step.thought, step.tool, step.arguments, step.extra_actions) == (thought, tool, arguments, 0)
    if arguments.startswith("{"):
        json.loads(step.arguments)


@pytest.mark.parametrize(
    "text",
    [
        "Thought: two things.\nAction: search[a]\nAction: lookup[b]",
        'Thought: two.\nAction: search\nAction Input: {"q": "a"}\nAction: lookup\nAction Input: {"q": "b"}',
    ],
)
def test_several_actions_in_one_turn_keep_the_first(text):
    """The executor runs the first action; the second is counted, and never leaks into the arguments."""
    step = parse_step(text)
    assert step.tool == "search" and step.extra_actions == 1
    assert "lookup" not in (step.arguments or "") and "b" not in (step.arguments or "")


@pytest.mark.parametrize(
    "text",
    [
        "Action movies are my favourite genre.",
        "Actionable advice: sleep more.",
        "Action items for the week: buy milk, call mum.",
        "Acting: the art of pretending.",
    ],
)
def test_plain_replies_that_start_with_action_are_not_steps(text):
    assert parse_step(text) is None
