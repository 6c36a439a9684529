"""AgentBench's DB scoring, ported rule for rule so verdicts agree with AgentBench's row by row.

:func:`compare_results` is ``DBResultProcessor.compare_results`` of AgentBench's function-calling version
(``src/server/tasks/dbbench/result_processor.py`` @578c5e9): answers are normalised (``None``/``null``/``''``
and friends -> ``"0"``, a trailing ``%`` dropped, thousands separators removed), one value against one value
matches within 1e-2 when both are numbers, lists of numbers match one to one within 1e-2, anything else must
be equal as a set. The only change: AgentBench parses answers with ``eval``; a model's answer is untrusted, so
here it is ``ast.literal_eval``, which reads the same literals and refuses everything else (where AgentBench's
``eval`` would have raised too, or run the model's code).

:func:`v02_match` is AgentBench v0.2's stricter metric (exact float equality, no normalisation), recorded
beside the verdict of the text protocol so a reviewer can compare with either release.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from typing import Any

from agentflan.rollout.types import Verdict

MODIFYING = ("INSERT", "DELETE", "UPDATE")
OVERALL_CATEGORIES = ("SELECT", "INSERT", "UPDATE")  # v0.2's overall_cat_accuracy: their mean, 0 if absent
_SPECIAL = {
    "none": "0",
    "null": "0",
    "undefined": "0",
    "nan": "0",
    "inf": "0",
    "infinity": "0",
    "-inf": "0",
    "-infinity": "0",
    "": "0",
}


def _literal(text: str) -> Any:
    return ast.literal_eval(text)


def _normalize(value: Any) -> str:
    if value is None:
        return "0"
    text = str(value).strip()
    if text.endswith("%"):
        return text[:-1].strip()
    if "," in text and not text.startswith("[") and not text.endswith("]"):
        text = text.replace(",", "")
    return _SPECIAL.get(text.lower(), text)


def _unquote(item: Any) -> str:
    return str(item).strip().strip("'\"")


def _clean_mysql_result(result: Any) -> list[str] | None:
    """A raw MySQL result string ``[(v,), ...]`` as its single values (None when it is not one)."""
    if not (isinstance(result, str) and result.startswith("[") and result.endswith("]")):
        return None
    try:
        parsed = _literal(result)
        if isinstance(parsed, list) and all(isinstance(item, tuple) for item in parsed):
            return [_unquote(item[0]) for item in parsed if len(item) == 1]
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    stripped = result.strip("[]")
    if stripped.count("(") == 1 and stripped.startswith("(") and stripped.endswith(",)"):
        return [stripped[1:-2].strip().strip("'\"")]
    return None


def _split_list_text(body: str) -> list[str]:
    """AgentBench's fallback for a list it cannot parse: split at commas outside quotes."""
    items: list[str] = []
    current = ""
    in_quotes = False
    for char in body:
        if char in "\"'":
            in_quotes = not in_quotes
        elif char == "," and not in_quotes:
            if current:
                items.append(_normalize(current.strip().strip("'\"")))
                current = ""
        else:
            current += char
    if current:
        items.append(_normalize(current.strip().strip("'\"")))
    return items


def _items(values: Iterable[Any]) -> list[str]:
    return [_normalize(_unquote(v[0] if isinstance(v, tuple) and len(v) == 1 else v)) for v in values]


def clean_answer(answer: Any) -> list[str]:
    """AgentBench's ``_clean_answer``: any answer shape as a list of normalised strings."""
    if answer is None:
        return ["0"]
    mysql = _clean_mysql_result(answer)
    if mysql is not None:
        return [_normalize(x) for x in mysql]
    if isinstance(answer, str):
        answer = answer.strip()
        if answer.startswith("[") and answer.endswith("]"):
            try:
                parsed = _literal(answer)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                return _split_list_text(answer[1:-1])
            if isinstance(parsed, list):
                return _items(parsed)
        return [_normalize(answer.strip().strip("'\""))]
    if isinstance(answer, (list, tuple)):
        return _items(answer)
    return [_normalize(str(answer).strip().strip("'\""))]


def _is_float(value: str) -> bool:
    try:
        float(value)
    except (ValueError, TypeError):
        return False
    return True


def _float_equal(a: str, b: str, tol: float = 1e-2) -> bool:
    try:
        return abs(float(a) - float(b)) <= tol
    except (ValueError, TypeError):
        return False


def compare_results(answer: Any, ground_truth: Any, query_type: str) -> bool:
    """AgentBench's ``compare_results``: is the answer (or the table hash) the ground truth?"""
    got, want = clean_answer(answer), clean_answer(ground_truth)
    if query_type in MODIFYING:
        return got == want
    if len(got) == 1 and len(want) == 1:
        if got[0] == "0" and want[0] == "0":
            return True
        if _is_float(got[0]) and _is_float(want[0]):
            return _float_equal(got[0], want[0])
        return got[0] == want[0]
    if all(_is_float(x) for x in got) and all(_is_float(x) for x in want):
        if len(got) != len(want):
            return False
        matched = [False] * len(want)
        for value in got:
            for i, gold in enumerate(want):
                if not matched[i] and _float_equal(value, gold):
                    matched[i] = True
                    break
            else:
                return False
        return all(matched)
    return set(got) == set(want)


def v02_match(answer_text: str, label: list[Any]) -> bool:
    """AgentBench v0.2's SELECT metric on the raw text after ``Final Answer:``."""
    try:
        answers = list(_literal(answer_text))  # v0.2: list(eval(ans)), the text itself when that fails
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        answers = [answer_text]
    if len(answers) == 1 and len(label) == 1:
        try:
            return float(answers[0]) == float(label[0])
        except (ValueError, TypeError):
            return answers[0] == label[0]
    try:
        return set(answers) == set(label)
    except TypeError:
        return False


def expected_hash(answer_md5: Any) -> str:
    """The hash in an ``answer_md5`` field as AgentBench compares it (``[('abc...',)]`` -> ``abc...``)."""
    cleaned = clean_answer(answer_md5)
    return cleaned[0] if len(cleaned) == 1 else "_".join(sorted(cleaned))


def category_scores(verdicts: Iterable[Verdict]) -> dict[str, float]:
    """Accuracy per AgentBench category and v0.2's ``overall_cat_accuracy``: the mean over SELECT, INSERT and
    UPDATE, where a category with no task counts 0 (as AgentBench's metric does)."""
    totals: dict[str, list[int]] = {}
    for v in verdicts:
        passed_total = totals.setdefault(v.category, [0, 0])
        passed_total[0] += int(v.passed)
        passed_total[1] += 1
    scores = {cat: passed / total for cat, (passed, total) in totals.items()}
    scores["overall_cat_accuracy"] = sum(scores.get(c, 0.0) for c in OVERALL_CATEGORIES) / len(
        OVERALL_CATEGORIES
    )
    return scores
