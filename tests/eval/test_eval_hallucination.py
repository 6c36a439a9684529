"""Agent-H scores on hand-written replies: what counts as a hallucination, what counts as a missed call."""

from __future__ import annotations

import pytest

from agentflan.eval.agent_h import EXPECTED
from agentflan.eval.hallucination import judge_reply, score_agent_h
from agentflan.eval.sources import EvalSample, ReferenceCall
from agentflan.eval.stats import wilson

TOOLS = [{"name": "get_weather", "description": "Weather for a city.", "parameters": {"type": "object"}}]
REACT_REPLY = 'Thought: I should look this up.\nAction: get_weather\nAction Input: {"city": "Paris"}'
GENERAL_REPLY = "I will use the search tool to find that for you."
PLAIN_REPLY = "Paris is the capital of France. It is known for the Eiffel Tower."
CALL_REPLY = ["The user wants the weather.", "get_weather", '{"city": "Paris"}']


def sample(case: str, i: int = 0) -> EvalSample:
    tools = TOOLS if case in ("b", "d") else []
    reference = ReferenceCall("get_weather", {"city": "Paris"}) if case == "d" else None
    return EvalSample(f"{case}{i}", case, EXPECTED[case], "test", "q", [], tools, reference)


@pytest.mark.parametrize(
    ("reply", "react", "general", "call"),
    [
        (REACT_REPLY, True, False, True),
        (GENERAL_REPLY, False, True, False),
        (PLAIN_REPLY, False, False, False),
        ("Observation 1: it rains.", True, False, False),
        ('{"name": "get_weather", "arguments": {"city": "Paris"}}', False, False, True),
        (CALL_REPLY, False, False, True),
    ],
)
def test_judge_reply(reply, react, general, call):
    j = judge_reply(sample("b"), reply)
    assert (j.react, j.general, j.call) == (react, general, call)


def test_react_reply_to_a_plain_query_counts_for_h_react_only():
    report = score_agent_h([sample("a")], [REACT_REPLY])
    assert (report.h_react, report.h_general, report.h_score) == (1.0, 0.0, 0.5)


def test_announcing_a_tool_counts_for_h_general_only():
    report = score_agent_h([sample("c")], [GENERAL_REPLY])
    assert (report.h_react, report.h_general, report.h_score) == (0.0, 1.0, 0.5)


def test_plain_reply_counts_as_neither():
    report = score_agent_h([sample("a"), sample("b"), sample("c")], [PLAIN_REPLY] * 3)
    assert (report.h_react, report.h_general, report.h_score) == (0.0, 0.0, 1.0)
    assert report.plain_call_rate == 0.0
    assert report.missed_call_rate is None and report.combined is None  # no case (d) sample


@pytest.mark.parametrize(
    ("reply", "missed"),
    [
        (PLAIN_REPLY, 1.0),
        (GENERAL_REPLY, 1.0),  # announcing a call is not making one
        (["The user wants the weather.", "None", "{}"], 1.0),
        (CALL_REPLY, 0.0),
        (REACT_REPLY, 0.0),
        ('{"name": "get_weather", "arguments": {"city": "Paris"}}', 0.0),
    ],
)
def test_missed_call_on_case_d(reply, missed):
    report = score_agent_h([sample("d")], [reply])
    assert report.missed_call_rate == missed
    assert report.h_score is None  # no plain sample


def test_scores_and_per_case_breakdown_follow_the_formulas():
    samples = [sample(c, i) for c in "abcd" for i in range(2)]
    replies = [
        PLAIN_REPLY, REACT_REPLY,  # a: one ReAct hallucination
        GENERAL_REPLY, PLAIN_REPLY,  # b: one tool announcement
        PLAIN_REPLY, PLAIN_REPLY,  # c: clean
        CALL_REPLY, PLAIN_REPLY,  # d: one call, one missed
    ]  # fmt: skip
    report = score_agent_h(samples, replies)
    assert (report.n_plain, report.n_call) == (6, 2)
    assert report.h_react == pytest.approx(1 / 6)
    assert report.h_general == pytest.approx(1 / 6)
    assert report.h_score == pytest.approx(((1 - 1 / 6) + (1 - 1 / 6)) / 2)
    assert report.missed_call_rate == 0.5
    assert report.combined == pytest.approx((report.h_score + 0.5) / 2)
    assert report.plain_call_rate == pytest.approx(1 / 6)  # the ReAct reply in (a) is also a call
    per_case = report.to_dict()["per_case"]
    intervals = per_case["a"].pop("intervals")
    assert per_case["a"] == {
        "n": 2, "react": 1, "general": 0, "calls": 1, "react_rate": 0.5, "general_rate": 0.0, "call_rate": 0.5
    }  # fmt: skip
    assert intervals["react_rate"] == wilson(1, 2).to_dict()
    assert (per_case["d"]["n"], per_case["d"]["calls"]) == (2, 1)
    # every score carries its interval, and the interval holds the score
    for name in ("h_react", "h_general", "h_score", "missed_call_rate", "combined", "plain_call_rate"):
        iv = report.intervals[name]
        assert iv.low <= getattr(report, name) <= iv.high, name
    assert report.intervals["h_score"].n == 6 and report.intervals["combined"].n == 8


def test_score_agent_h_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="1 samples but 2 replies"):
        score_agent_h([sample("a")], [PLAIN_REPLY, PLAIN_REPLY])
