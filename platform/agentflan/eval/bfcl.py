"""Score tool calls the way the Berkeley Function Calling Leaderboard (BFCL) does, for any model's replies.

BFCL's single-turn AST categories are checked call by call against the question's function documents and
the category's ``possible_answer`` file, with BFCL's rules (written from its public checker, our own code):

* **Decoding** a reply into calls ``[{name: {param: value}}]`` (:mod:`agentflan.eval.bfcl_decode`: native
  ``tool_calls``, JSON calls, ``<tool_call>`` tags, Python-style calls, a ReAct step). A reply that decodes
  to nothing holds no call.
* **Categories**: a name with ``parallel`` checks several calls in any order (each expected call takes the
  first unmatched reply call that passes); ``multiple`` checks one call among several offered functions; any
  other AST category checks exactly one call; ``irrelevance`` passes when the reply holds no call and
  ``relevance`` when it holds at least one.
* **A call**: the function name; every required parameter present; no parameter the function or the answer
  does not list; each value's type by BFCL's table (``float``, ``tuple`` = list, ``dict``, ``any`` = str; an
  int is accepted for a float; arrays and tuples checked one level deep); each value among the allowed ones,
  strings compared after BFCL's normalisation (spaces and ``,./-_*^`` removed, lower case, ``'`` -> ``"``),
  lists element-wise, dicts key by key; an allowed value ``""`` means the parameter may be left out.
* Native ``tool_calls`` cannot carry dots in names (OpenAI's pattern): as BFCL's function-calling handlers do,
  a dotted function name is expected there with its dots turned into underscores. That holds for a reply
  given as a ``tool_calls`` list, and for any reply to a native prompt (``native_prompt``: the functions were
  offered through ``tools=`` with underscored names, :func:`agentflan.eval.bfcl_data.openai_tools`), where
  the calls come back as the template's text, such as ``<tool_call>`` tags.

Java and JavaScript categories (whose values arrive as strings in the language's syntax) are not scored.
Reading BFCL's data folder and building prompts is :mod:`agentflan.eval.bfcl_data`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agentflan.eval.bfcl_data import categories, load_category, scorable
from agentflan.eval.bfcl_decode import Call, DecodeError, decode_reply
from agentflan.eval.stats import wilson

PYTHON_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "any": str,
}
NESTED_TYPES = ("array", "tuple")
_STANDARDIZE = re.compile(r"[ ,./\-_*^]")


@dataclass(frozen=True)
class Verdict:
    id: str
    category: str
    valid: bool
    error: str = ""
    error_type: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def standardize(text: str) -> str:
    return _STANDARDIZE.sub("", text).lower().replace("'", '"')


def _result(valid: bool, error: str = "", error_type: str = "") -> dict[str, Any]:
    return {"valid": valid, "error": error, "error_type": error_type}


def _answer_type(allowed: Sequence[Any]) -> type | None:
    for value in allowed:
        if value != "":
            return type(value)
    return None


def _type_check(param: str, value: Any, allowed: Sequence[Any], type_name: str, nested: type | None) -> dict:
    """BFCL's type rule; the result also says whether the value is a 'variable': a string standing for the
    value, used where the answer itself lists strings for a non-string type."""
    expected = PYTHON_TYPES[type_name]
    answer_type = _answer_type(allowed)
    is_variable = answer_type is not None and answer_type != expected
    nested_failed = False
    if type(value) is expected:
        if nested is None:
            return {**_result(True), "is_variable": is_variable}
        for option in allowed:  # one level deep: each item of the value has the items' type
            items_ok = not isinstance(option, list) or all(
                _type_check(param, item, option, nested_name(nested), None)["valid"] for item in value
            )
            if items_ok:
                return {**_result(True), "is_variable": is_variable}
        nested_failed = True
    if answer_type is not None and type(value) is answer_type and not nested_failed:
        return {**_result(True), "is_variable": True}
    what = f"{type_name} of {nested_name(nested)}" if nested_failed and nested else type_name
    return {
        **_result(False, f"Incorrect type for parameter {param!r}: expected {what}, got {type(value).__name__} "
                  f"({value!r})", "type_error:nested" if nested_failed else "type_error"),
        "is_variable": False,
    }  # fmt: skip


def nested_name(t: type) -> str:
    return next(name for name, py in PYTHON_TYPES.items() if py is t and name not in ("tuple", "any"))


def _string_check(param: str, value: str, allowed: Sequence[Any]) -> dict:
    if standardize(value) in [standardize(a) for a in allowed if isinstance(a, str)]:
        return _result(True)
    return _result(
        False,
        f"Invalid value for parameter {param!r}: {value!r}; allowed {list(allowed)}",
        "value_error:string",
    )


def _standardized(option: Any) -> list[Any] | None:
    """An allowed list with its strings standardised; ``""`` (may be omitted) compares as the empty list."""
    if isinstance(option, (list, tuple, str)):
        return [standardize(v) if isinstance(v, str) else v for v in option]
    return None


def _list_check(param: str, value: list, allowed: Sequence[Any]) -> dict:
    got = [standardize(v) if isinstance(v, str) else v for v in value]
    if got in [o for o in map(_standardized, allowed) if o is not None]:
        return _result(True)
    return _result(
        False,
        f"Invalid value for parameter {param!r}: {value!r}; allowed {list(allowed)}",
        "value_error:list",
    )


def _dict_check(param: str, value: dict, allowed: Sequence[Any]) -> dict:
    result = _result(False, f"Invalid value for parameter {param!r}: {value!r}", "value_error:dict")
    for option in allowed:
        if option == "" or not isinstance(option, dict):
            continue
        ok = True
        for key, item in value.items():
            if key not in option:
                result, ok = (
                    _result(False, f"Unexpected dict key {key!r} in {param!r}", "value_error:dict_key"),
                    False,
                )
                break
            options = [standardize(o) if isinstance(o, str) else o for o in option[key]]
            if (standardize(item) if isinstance(item, str) else item) not in options:
                result = _result(
                    False, f"Invalid value for {param!r}[{key!r}]: {item!r}", "value_error:dict_value"
                )
                ok = False
                break
        if ok:
            missing = [k for k, opts in option.items() if k not in value and "" not in opts]
            if missing:
                result, ok = (
                    _result(False, f"Missing dict key {missing[0]!r} in {param!r}", "value_error:dict_key"),
                    False,
                )
        if ok:
            return _result(True)
    return result


def _list_of_dicts_check(param: str, value: list, allowed: Sequence[Any]) -> dict:
    result = _result(False, f"Invalid value for parameter {param!r}: {value!r}", "value_error:list_dict")
    for option in allowed:
        option = [] if option == "" else option  # may be omitted: an empty list of dicts is fine
        if not isinstance(option, list):
            continue
        if len(option) != len(value):
            result = _result(
                False, f"Wrong number of dictionaries in {param!r}", "value_error:list_dict_count"
            )
            continue
        for item, expected in zip(value, option, strict=True):
            result = (
                _dict_check(param, item, [expected])
                if isinstance(item, dict)
                else _result(
                    False, f"{param!r} holds a {type(item).__name__}, not a dict", "value_error:list_dict"
                )
            )
            if not result["valid"]:
                break
        else:
            return _result(True)
    return result


def _names(name: str, native: bool) -> set[str]:
    """The name a call must use: in native tool calls a dotted name has its dots as underscores (OpenAI's
    name pattern has no dots; BFCL's function-calling handlers compare it so)."""
    return {name.replace(".", "_")} if native else {name}


def check_call(function: Mapping[str, Any], call: Call, answer: Mapping[str, Any], native: bool) -> dict:
    """One decoded call against one function document and its allowed values (``{name: {param: [...]}}``)."""
    expected_name = next(iter(answer))
    allowed = answer[expected_name]
    name, params = next(iter(call.items())) if call else ("", {})
    if name not in _names(function["name"], native):
        return _result(
            False, f"Function name {function['name']!r} not found (got {name!r})", "wrong_func_name"
        )
    details = function.get("parameters", {}).get("properties", {})
    for required in function.get("parameters", {}).get("required", []):
        if required not in params:
            return _result(False, f"Missing required parameter: {required!r}", "missing_required")
    for param, value in params.items():
        if param not in details or param not in allowed:
            return _result(False, f"Unexpected parameter: {param!r}", "unexpected_param")
        type_name = details[param].get("type", "any")
        if type_name not in PYTHON_TYPES:
            type_name = "any"
        nested = None
        if type_name in NESTED_TYPES:
            nested = PYTHON_TYPES.get(details[param].get("items", {}).get("type", "any"), str)
        if type_name == "tuple" and type(value) is tuple:
            value = list(value)
        if type_name == "float" and type(value) is int:
            value = float(value)
        typed = _type_check(param, value, allowed[param], type_name, nested)
        if not typed["valid"]:
            return _result(False, typed["error"], typed["error_type"])
        expected = PYTHON_TYPES[type_name]
        if not typed["is_variable"]:
            if expected is dict:
                result = _dict_check(param, value, allowed[param])
            elif expected is list and nested is dict:
                result = _list_of_dicts_check(param, value, allowed[param])
            elif expected is str:
                result = _string_check(param, value, allowed[param])
            elif expected is list:
                result = _list_check(param, value, allowed[param])
            else:
                result = None
            if result is not None:
                if not result["valid"]:
                    return result
                continue
        if value not in allowed[param]:
            return _result(
                False,
                f"Invalid value for parameter {param!r}: {value!r}; allowed {allowed[param]}",
                "value_error",
            )
    for param, options in allowed.items():
        if param not in params and "" not in options:
            return _result(
                False,
                f"Optional parameter {param!r} not provided and not marked optional",
                "missing_optional",
            )
    return _result(True)


def _find(functions: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any]:
    return next((f for f in functions if f["name"] == name), functions[0])


def check_ast(
    category: str,
    functions: Sequence[Mapping[str, Any]],
    calls: list[Call],
    answers: Sequence[Mapping[str, Any]],
    native: bool,
) -> dict:
    """The decoded calls of one reply against the category's ground truth (a list of expected calls)."""
    if len(calls) != len(answers):
        return _result(False, f"Wrong number of calls: {len(calls)}, expected {len(answers)}", "wrong_count")
    if "parallel" in category:
        matched: set[int] = set()
        for k, answer in enumerate(answers):
            function = _find(functions, next(iter(answer)))
            errors = []
            for i, call in enumerate(calls):
                if i in matched:
                    continue
                result = check_call(function, call, answer, native)
                if result["valid"]:
                    matched.add(i)
                    break
                errors.append(result["error"])
            else:
                detail = f"; {errors[0]}" if errors else ""
                return _result(
                    False,
                    f"No call matches expected call {k} ({next(iter(answer))}){detail}",
                    "parallel_no_match",
                )
        return _result(True)
    function = _find(functions, next(iter(answers[0]))) if "multiple" in category else functions[0]
    return check_call(function, calls[0], answers[0], native)


def judge(
    category: str,
    question: Mapping[str, Any],
    answers: Sequence[Mapping[str, Any]] | None,
    reply: Any,
    native_prompt: bool = False,
) -> Verdict:
    """The verdict on one reply (``native_prompt``: the functions were offered natively, see the module)."""
    qid = str(question["id"])
    try:
        calls, native = decode_reply(reply)
        native = native or native_prompt
    except DecodeError as e:
        calls, native, decode_error = [], False, str(e)
    else:
        decode_error = ""
    has_call = bool(calls) and calls != [{}]
    if "irrelevance" in category:
        if has_call:
            return Verdict(qid, category, False, "a call where none is wanted", "irrelevance:made_a_call")
        return Verdict(qid, category, True)
    if category.endswith("relevance"):
        if has_call:
            return Verdict(qid, category, True)
        return Verdict(qid, category, False, "no call where one is wanted", "relevance:no_call")
    if decode_error:
        return Verdict(qid, category, False, f"Failed to decode the reply: {decode_error}", "decoder_failed")
    if answers is None:
        return Verdict(qid, category, False, "no possible answer for this question", "no_ground_truth")
    result = check_ast(category, question["function"], calls, answers, native)
    return Verdict(qid, category, result["valid"], result["error"], result["error_type"])


def score_replies(
    data_dir: str | Path, replies: Mapping[str, Any], only: Iterable[str] | None = None
) -> list[Verdict]:
    """A verdict per reply whose id is a question of a scorable category of ``data_dir``."""
    wanted = set(only) if only is not None else None
    verdicts = []
    for category in categories(data_dir):
        if not scorable(category) or (wanted is not None and category not in wanted):
            continue
        questions, answers = load_category(data_dir, category)
        for q in questions:
            if str(q["id"]) in replies:
                verdicts.append(judge(category, q, answers.get(str(q["id"])), replies[str(q["id"])]))
    return verdicts


def summarize(verdicts: Sequence[Verdict]) -> dict[str, dict[str, Any]]:
    """Accuracy per category, with n and its Wilson interval, and over all of them."""
    by: dict[str, list[Verdict]] = {}
    for v in verdicts:
        by.setdefault(v.category, []).append(v)
    out = {c: wilson(sum(v.valid for v in vs), len(vs)).to_dict() for c, vs in sorted(by.items())}
    out["overall"] = wilson(sum(v.valid for v in verdicts), len(verdicts)).to_dict()
    return out
