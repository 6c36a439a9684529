"""Intervals and reply quality: the numbers the report prints beside every rate."""

from __future__ import annotations

import pytest

from agentflan.eval.quality import degenerate_count, is_degenerate, too_weak
from agentflan.eval.stats import bootstrap, prompts_to_separate, t_interval, wilson


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (1, 40, 0.0044, 0.1288)],
)
def test_wilson_matches_published_values(k, n, low, high) -> None:
    iv = wilson(k, n)
    assert iv.value == k / n and iv.n == n
    assert iv.low == pytest.approx(low, abs=1e-4) and iv.high == pytest.approx(high, abs=1e-4)


def test_no_samples_no_value() -> None:
    assert wilson(0, 0).value is None and str(wilson(0, 0)) == "- (n=0)"


def test_bootstrap_is_seeded_and_holds_the_value() -> None:
    data = [[1] * 30 + [0] * 10]
    mean = lambda g: sum(g[0]) / len(g[0])  # noqa: E731
    a, b = bootstrap(data, mean, seed=3), bootstrap(data, mean, seed=3)
    assert a == b and a.low < 0.75 < a.high and a.n == 40
    assert a.high - a.low == pytest.approx(2 * 1.96 * (0.75 * 0.25 / 40) ** 0.5, rel=0.2)  # ~ normal width
    assert bootstrap([[], [1]], lambda g: None).value is None


def test_t_interval_and_sample_sizes() -> None:
    low, high = t_interval([1.0, 2.0, 3.0])
    assert (low, high) == pytest.approx((2 - 4.303 / 3**0.5, 2 + 4.303 / 3**0.5), abs=1e-3)
    assert t_interval([1.0]) is None
    assert prompts_to_separate(0.5, 0.6) == 385  # the classic two-proportion figure
    assert prompts_to_separate(0.8, 0.9) < prompts_to_separate(0.5, 0.6)


@pytest.mark.parametrize(
    ("reply", "degenerate"),
    [
        ("", True),
        ("I to the the the the the the", True),
        ("ok ok ok ok ok ok", True),
        ("a b c a b c a b c", True),
        ("Paris is the capital of France.", False),
        ("Thought: I need to search.\nAction: search\nAction Input: {}", False),
        ("yes", False),
        (["The user wants the weather.", "get_weather", '{"city": "Paris"}'], False),
    ],
)
def test_degenerate_replies(reply, degenerate) -> None:
    assert is_degenerate(reply) is degenerate


def test_too_weak_when_half_the_replies_are_degenerate() -> None:
    replies = ["the the the the"] * 5 + ["Paris is the capital of France."] * 5
    assert degenerate_count(replies) == 5 and too_weak(5, 10) and not too_weak(4, 10) and not too_weak(0, 0)
