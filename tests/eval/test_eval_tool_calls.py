"""parse_call on the four output formats (well-formed and malformed), and the argument scores."""

from __future__ import annotations

import pytest

from agentflan.eval.sources import EvalSample, ReferenceCall
from agentflan.eval.tool_calls import normalize_value, parse_call, score_arguments, score_tool_use

TOOLS = ["get_weather", "search_for_jsearch"]
PARIS = {"city": "Paris"}


@pytest.mark.parametrize(
    ("reply", "name", "arguments", "fmt", "valid"),
    [
        # ReAct, ToolLLaMA dialect
        (
            'Thought: weather first.\nAction: get_weather\nAction Input: {"city": "Paris"}',
            "get_weather",
            PARIS,
            "react",
            True,
        ),
        ("\nThought: \nAction: get_weather\nAction Input: {}", "get_weather", {}, "react", True),
        ('Action: get_weather\nAction Input: {"city": "Paris"}', "get_weather", PARIS, "react", False),
        ("Thought: look it up.\nAction: search[Paris]", "search", "Paris", "react", False),
        (
            'Thought: t\nAction: get_weather\nAction Input: {"city": "Paris"}\nObservation: sunny',
            "get_weather",
            PARIS,
            "react",
            False,
        ),
        (
            "Thought: t\nAction: get_weather\nAction Input: city=Paris",
            "get_weather",
            "city=Paris",
            "react",
            False,
        ),
        # JSON, bare and fenced, with and without a thought
        ('{"name": "get_weather", "arguments": {"city": "Paris"}}', "get_weather", PARIS, "json", True),
        (
            '```json\n{"thought": "t", "name": "get_weather", "arguments": {"city": "Paris"}}\n```',
            "get_weather",
            PARIS,
            "json",
            True,
        ),
        (
            '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}',
            "get_weather",
            PARIS,
            "json",
            True,
        ),
        (
            'Sure: {"name": "get_weather", "arguments": {"city": "Paris"}}',
            "get_weather",
            PARIS,
            "json",
            False,
        ),
        ('{"name": "get_weather", "args": {"city": "Paris"}}', "get_weather", PARIS, "json", False),
        (
            '{"name": "get_weather", "arguments": {"city": "Paris"}, "id": 3}',
            "get_weather",
            PARIS,
            "json",
            False,
        ),
        (
            '[{"id": 0, "name": "get_weather", "args": {"city": "Paris"}}]',
            "get_weather",
            PARIS,
            "json",
            False,
        ),
        (
            '{"name": "get_weather", "arguments": {"city": "Paris"',
            "get_weather",
            '{"city": "Paris"',
            "json",
            False,
        ),
        ('{"name": "get_weather"}', "get_weather", None, "json", False),
        # native: what a tool-calling chat template writes (Hermes/Qwen tags; Llama-3.1 JSON)
        (
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
            "get_weather",
            PARIS,
            "native",
            True,
        ),
        (
            'I will check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "search_for_jsearch", "arguments": {}}\n</tool_call>',
            "get_weather",
            PARIS,
            "native",
            True,
        ),
        (
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}',
            "get_weather",
            PARIS,
            "native",
            False,
        ),
        (
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par',
            "get_weather",
            None,
            "native",
            False,
        ),
        (
            '<tool_call>\n{"name": "get_weather", "arguments": {}, "id": 1}\n</tool_call>',
            "get_weather",
            {},
            "native",
            False,
        ),
        ('{"name": "get_weather", "parameters": {"city": "Paris"}}', "get_weather", PARIS, "native", True),
        # chat-aligned protocol: [thought, tool name, arguments]
        (["I need the weather.", "get_weather", '{"city": "Paris"}'], "get_weather", PARIS, "chat", True),
        (
            ["I need the weather.", "`get_weather`", '```json\n{"city": "Paris"}\n```'],
            "get_weather",
            PARIS,
            "chat",
            True,
        ),
        (
            ["I need the weather.", "I will use get_weather.", '{"city": "Paris"}'],
            "get_weather",
            PARIS,
            "chat",
            False,
        ),
        (["t", "5_day_forecast_for_ski", "{}"], "5_day_forecast_for_ski", {}, "chat", True),
        (["I need the weather.", "get_weather", "Paris"], "get_weather", "Paris", "chat", False),
        (["I need the weather.", "get_weather"], "get_weather", None, "chat", False),
    ],
)
def test_parse_call_reads_each_format(reply, name, arguments, fmt, valid):
    call = parse_call(reply, tool_names=TOOLS)
    assert (call.name, call.arguments, call.format, call.valid) == (name, arguments, fmt, valid), call.error
    assert call.found
    assert call.valid == (call.error == "")


@pytest.mark.parametrize(
    "reply",
    [
        "Paris is sunny today, around 20 degrees.",
        "",
        [],
        "Thought: I know it.\nFinal Answer: sunny",
        'Thought: done\nAction: Finish\nAction Input: {"return_type": "give_answer", "final_answer": "sunny"}',
        ["No tool is needed.", "None", "{}"],
        ["No tool is needed.", "The answer is sunny, I think.", "{}"],
        "Here is some code: {'name': 1}",
    ],
)
def test_parse_call_finds_no_call_in_plain_or_final_replies(reply):
    call = parse_call(reply, tool_names=TOOLS)
    assert not call.found and not call.valid and call.error


def test_action_input_with_a_name_key_is_read_as_react():
    call = parse_call('Thought: t\nAction: add_user\nAction Input: {"name": "Ann", "age": 3}')
    assert (call.name, call.arguments, call.format) == ("add_user", {"name": "Ann", "age": 3}, "react")


def test_expected_format_makes_another_format_invalid_but_keeps_the_call():
    react = 'Thought: t\nAction: get_weather\nAction Input: {"city": "Paris"}'
    call = parse_call(react, expected_format="json")
    assert call.found and call.name == "get_weather" and not call.valid and "json" in call.error
    assert parse_call(react, expected_format="react").valid


def test_normalize_value_compares_numbers_numerically_and_strings_folded():
    assert normalize_value(" Paris ") == normalize_value("paris")
    assert normalize_value("3") == normalize_value(3) == normalize_value(3.0)
    assert normalize_value(True) != normalize_value(1)
    assert normalize_value({"a": [1, "X"]}) == normalize_value({"a": ["1.0", "x"]})


@pytest.mark.parametrize(
    ("predicted", "reference", "exact", "precision", "recall", "f1"),
    [
        ({"city": " paris", "days": "3"}, {"city": "Paris", "days": 3}, True, 1.0, 1.0, 1.0),
        ({"city": "Paris"}, {"city": "Paris", "days": 3}, False, 1.0, 0.5, 2 / 3),
        ({"city": "Paris", "days": 4}, {"city": "Paris", "days": 3}, False, 0.5, 0.5, 0.5),
        ({"city": "Paris", "days": 3, "unit": "C"}, {"city": "Paris", "days": 3}, False, 2 / 3, 1.0, 0.8),
        ({"town": "Paris"}, {"city": "Paris"}, False, 0.0, 0.0, 0.0),
        ({}, {}, True, 1.0, 1.0, 1.0),
        ({}, {"city": "Paris"}, False, 0.0, 0.0, 0.0),
        ("city=Paris", {"city": "Paris"}, False, 0.0, 0.0, 0.0),
        (None, {}, False, 0.0, 0.0, 0.0),
    ],
)
def test_argument_exact_match_and_f1(predicted, reference, exact, precision, recall, f1):
    s = score_arguments(predicted, reference)
    assert s.exact is exact
    assert (s.precision, s.recall, s.f1) == pytest.approx((precision, recall, f1))


def test_score_tool_use_separates_retrieval_understanding_and_format():
    def sample(i: int, source: str, reference: ReferenceCall) -> EvalSample:
        tools = [{"name": n} for n in TOOLS]
        return EvalSample(f"s{i}", "d", "call", source, "q", [], tools, reference)

    samples = [
        sample(0, "teval", ReferenceCall("get_weather", {"city": "Paris"})),
        sample(1, "teval", ReferenceCall("get_weather", {"city": "Rome", "days": 2})),
        sample(2, "toolbench", ReferenceCall("search_for_jsearch", None)),  # name only: arguments were cut
    ]
    replies = [
        ["t", "get_weather", '{"city": "paris"}'],  # right, valid
        'Action: get_weather\nAction Input: {"city": "Rome"}',  # right name, half the arguments, no Thought
        "I cannot help with that.",  # missed
    ]
    report = score_tool_use(samples, replies)
    overall = report["overall"]
    assert (overall["n"], overall["n_arguments"]) == (3, 2)
    assert overall["retrieval"] == pytest.approx(2 / 3)
    assert overall["understanding_exact"] == pytest.approx(0.5)
    assert overall["understanding_f1"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert overall["instruction_following"] == pytest.approx(1 / 3)
    assert report["by_source"]["toolbench"]["retrieval"] == 0.0
    assert report["by_source"]["toolbench"]["understanding_f1"] is None


def test_native_format_is_expected_of_native_prompts():
    tagged = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert parse_call(tagged, expected_format="native").valid
    react = 'Thought: t\nAction: get_weather\nAction Input: {"city": "Paris"}'
    call = parse_call(react, expected_format="native")
    assert call.found and not call.valid and "native" in call.error
