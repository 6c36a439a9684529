"""Score tool calls the way the Berkeley Function Calling Leaderboard (BFCL) does, for any model's replies.

BFCL's single-turn AST categories are checked call by call against the question's function documents and
the category's ``possible_answer`` file, with BFCL's rules (written from its public checker, our own code):

* **Decoding** a reply into calls ``[{name: {param: value}}]``: a list of OpenAI ``tool_calls`` (native
  function calling), or a text holding JSON calls (``{"name", "arguments"}``, lists of them, OpenAI
  ``tool_calls`` objects, Hermes ``<tool_call>`` tags), Python-style calls (BFCL's prompting format:
  ``[func(a=1, b="x")]``, keyword arguments, dotted names) or a ReAct ``Action`` / ``Action Input`` step.
  A reply that decodes to nothing holds no call.
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
  offered through ``tools=`` with underscored names, :func:`openai_tools`), where the calls come back as the
  template's text, such as ``<tool_call>`` tags.

Java and JavaScript categories (whose values arrive as strings in the language's syntax) are not scored.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agentflan.data.react import parse_step
from agentflan.eval.stats import wilson

Call = dict[str, dict[str, Any]]  # {function name: {parameter: value}}, BFCL's decoded form
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
_FILE = re.compile(r"^BFCL_v\d+_(?P<category>[\w]+)\.json$")
_STANDARDIZE = re.compile(r"[ ,./\-_*^]")
_TOOL_CALL_TAG = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


class BfclError(ValueError):
    """A problem with the data folder or the replies file, in one line naming the file and line."""


class DecodeError(ValueError):
    """The reply holds no call in any format we read."""


@dataclass(frozen=True)
class Verdict:
    id: str
    category: str
    valid: bool
    error: str = ""
    error_type: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------- decoding


def decode_reply(reply: str | Sequence[Any]) -> tuple[list[Call], bool]:
    """The calls in a reply, and whether they came as native ``tool_calls``. Raises :class:`DecodeError`."""
    if not isinstance(reply, str):
        return [_native_call(c) for c in reply], True
    text = reply.strip()
    if not text:
        raise DecodeError("empty reply")
    if tags := _TOOL_CALL_TAG.findall(text):
        return [_json_call(_loads(t)) for t in tags], False
    try:
        value = json.loads(_unfence(text))
    except ValueError:
        value = None
    if isinstance(value, (dict, list)):
        return _json_calls(value), False
    try:
        return _python_calls(text), False
    except (SyntaxError, ValueError, TypeError) as python_error:
        step = parse_step(text)
        if step is not None and step.tool and not step.is_final:
            args = _loads(step.arguments) if step.arguments else {}
            if not isinstance(args, dict):
                raise DecodeError("ReAct arguments are not a JSON object") from None
            return [{step.tool: args}], False
        raise DecodeError(f"no call: {python_error}") from None


def _unfence(text: str) -> str:
    m = re.match(r"^```(?:json|python|py)?\s*\n?(.*?)\n?\s*```$", text, re.S)
    return m.group(1).strip() if m else text


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise DecodeError(f"invalid JSON: {e}") from None


def _native_call(call: Any) -> Call:
    """An OpenAI tool call (``{"type": "function", "function": {"name", "arguments"}}``) or its inner part."""
    if not isinstance(call, Mapping):
        raise DecodeError(f"a tool call is {type(call).__name__}, not an object")
    fn = call.get("function", call)
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        raise DecodeError("a tool call without a function name")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        args = _loads(args) if args.strip() else {}
    if not isinstance(args, dict):
        raise DecodeError("tool call arguments are not an object")
    return {fn["name"]: args}


def _json_call(value: Any) -> Call:
    if not isinstance(value, Mapping):
        raise DecodeError("a JSON call is not an object")
    if "function" in value and isinstance(value["function"], Mapping):
        return _native_call(value)
    name = value.get("name")
    args = value.get("arguments", value.get("parameters", {}))
    if not isinstance(name, str):
        raise DecodeError("a JSON call without a name")
    if isinstance(args, str):
        args = _loads(args)
    if not isinstance(args, dict):
        raise DecodeError("JSON call arguments are not an object")
    return {name: args}


def _json_calls(value: Any) -> list[Call]:
    if isinstance(value, Mapping) and "tool_calls" in value:
        return [_native_call(c) for c in value["tool_calls"] or []]
    items = value if isinstance(value, list) else [value]
    return [_json_call(v) for v in items]


def _python_calls(text: str) -> list[Call]:
    """BFCL's prompting format: ``[f(a=1), g.h(b="x")]`` (brackets optional, backticks and quotes around)."""
    body = _unfence(text).strip("`\n ").strip()
    if body.startswith("python\n"):
        body = body[len("python\n") :]
    if not body.startswith("["):
        body = "[" + body
    if not body.endswith("]"):
        body = body + "]"
    tree = ast.parse(body.strip().strip("'"), mode="eval").body
    elements = [tree] if isinstance(tree, ast.Call) else getattr(tree, "elts", None)
    if elements is None:
        raise ValueError("not a list of calls")
    calls = []
    for element in elements:
        if not isinstance(element, ast.Call):
            raise ValueError(f"{type(element).__name__} is not a call")
        calls.append(_call(element))
    return calls


def _call(node: ast.Call) -> Call:
    parts, func = [], node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return {".".join(reversed(parts)): {k.arg: _value(k.value) for k in node.keywords if k.arg is not None}}


def _value(node: ast.AST) -> Any:
    """A Python literal as BFCL's decoder reads it (names become strings, ``true``/``false`` booleans)."""
    if isinstance(node, ast.Constant):
        return "..." if node.value is Ellipsis else node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _value(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.List):
        return [_value(v) for v in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_value(v) for v in node.elts)
    if isinstance(node, ast.Dict):
        return {_value(k): _value(v) for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, ast.Name):
        return {"true": True, "false": False, "null": None, "None": None}.get(node.id, node.id)
    if isinstance(node, ast.BinOp):
        return _binop(node)
    if isinstance(node, ast.Call):
        return _call(node) if node.keywords else ast.unparse(node)
    return ast.unparse(node)


def _binop(node: ast.BinOp) -> Any:
    left, right = _value(node.left), _value(node.right)
    ops = {
        ast.Add: lambda a, b: a + b,
        ast.Sub: lambda a, b: a - b,
        ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b,
        ast.FloorDiv: lambda a, b: a // b,
        ast.Mod: lambda a, b: a % b,
        ast.Pow: lambda a, b: a**b,
    }
    op = ops.get(type(node.op))
    if op is None:
        return ast.unparse(node)
    try:
        return op(left, right)
    except Exception:
        return ast.unparse(node)


# ----------------------------------------------------------------------------------------------- checking


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


# --------------------------------------------------------------------------------------------- data files


def _lines(path: Path) -> list[dict[str, Any]]:
    """BFCL's files are JSON lines despite their ``.json`` suffix."""
    text = path.read_text(encoding="utf-8").strip()
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def categories(data_dir: str | Path) -> dict[str, Path]:
    """Category -> question file of a BFCL data folder (``BFCL_v4_<category>.json``)."""
    out = {}
    for path in sorted(Path(data_dir).glob("BFCL_v*_*.json")):
        if m := _FILE.match(path.name):
            out[m.group("category")] = path
    return out


def scorable(category: str) -> bool:
    """Single-turn Python categories (AST, irrelevance, relevance); not multi-turn, agentic, Java, JS."""
    bad = ("multi_turn", "java", "javascript", "memory", "web_search", "format_sensitivity", "exec")
    return not any(b in category for b in bad)


def load_category(data_dir: str | Path, category: str) -> tuple[list[dict[str, Any]], dict[str, list]]:
    """The questions of a category and, by id, their ground truth (none for irrelevance and relevance)."""
    path = categories(data_dir).get(category)
    if path is None:
        raise FileNotFoundError(f"{data_dir}: no BFCL_v*_{category}.json")
    questions = _lines(path)
    answer_file = Path(data_dir) / "possible_answer" / path.name
    answers = {str(a["id"]): a["ground_truth"] for a in _lines(answer_file)} if answer_file.exists() else {}
    return questions, answers


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


def question_counts(data_dir: str | Path, only: Iterable[str] | None = None) -> dict[str, int]:
    """Questions per scorable category of ``data_dir``."""
    wanted = set(only) if only else None
    return {
        c: len(_lines(p))
        for c, p in categories(data_dir).items()
        if scorable(c) and (wanted is None or c in wanted)
    }


def read_replies(path: Path) -> dict[str, Any]:
    """``{"id", "reply"}`` per line; a bad line is an error naming the file and line."""
    replies: dict[str, Any] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise BfclError(f"{path}:{n}: not JSON ({e})") from None
        if not isinstance(row, dict) or "id" not in row or "reply" not in row:
            raise BfclError(f"{path}:{n}: expected an object with 'id' and 'reply'")
        if not isinstance(row["reply"], (str, list)):
            raise BfclError(f"{path}:{n}: 'reply' must be a string or a list of tool calls")
        replies[str(row["id"])] = row["reply"]
    return replies


def prompts(
    data_dir: str | Path,
    only: Iterable[str] | None,
    max_per_category: int | None,
    output_format: str,
) -> dict[str, tuple[str, dict[str, Any], list | None, list[dict[str, str]]]]:
    """Question id -> (category, question, ground truth, chat messages) for the scorable categories: the
    functions are offered in the system prompt with the format instruction the model was trained to follow
    (as the Agent-H and tool-use prompts do), then the question's own turns. ``native``: no tools in the
    system prompt; the caller offers :func:`openai_tools` to the chat template."""
    from agentflan.data.align import FORMAT_INSTRUCTIONS, TOOLS_SYSTEM_PROMPT

    wanted = set(only) if only else None
    out = {}
    for category in categories(data_dir):
        if not scorable(category) or (wanted is not None and category not in wanted):
            continue
        questions, answers = load_category(data_dir, category)
        for q in questions[:max_per_category]:
            turns = (
                q["question"][0] if q["question"] and isinstance(q["question"][0], list) else q["question"]
            )
            system = TOOLS_SYSTEM_PROMPT.format(tools=json.dumps(q["function"], ensure_ascii=False))
            if instruction := FORMAT_INSTRUCTIONS.get(output_format, ""):
                system += "\n" + instruction
            own_system = [t["content"] for t in turns if t["role"] == "system"]
            system_parts = own_system if output_format == "native" else [system, *own_system]
            messages = [{"role": "system", "content": "\n\n".join(system_parts)}] if system_parts else []
            messages += [{"role": t["role"], "content": t["content"]} for t in turns if t["role"] != "system"]
            out[str(q["id"])] = (category, q, answers.get(str(q["id"])), messages)
    return out


# BFCL's own types to JSON Schema, as BFCL's function-calling handlers convert them (GORILLA_TO_OPENAPI).
_OPENAPI_TYPES = {
    "dict": "object", "float": "number", "tuple": "array", "list": "array", "any": "string", "bool": "boolean",
    "byte": "integer", "short": "integer", "long": "integer", "double": "number", "char": "string",
    "ArrayList": "array", "Array": "array", "HashMap": "object", "Hashtable": "object", "Queue": "array",
    "Stack": "array", "Any": "string", "String": "string", "Bigint": "integer",
}  # fmt: skip


def openai_tools(functions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A question's functions as OpenAI tools for a native prompt: JSON Schema types, and dots in names as
    underscores (OpenAI's name pattern; replies are then judged with ``native_prompt``, which expects them so)."""

    def schema(node: Any) -> Any:
        if isinstance(node, Mapping):
            out = {k: schema(v) for k, v in node.items()}
            if isinstance(out.get("type"), str):
                out["type"] = _OPENAPI_TYPES.get(out["type"], out["type"])
            return out
        return [schema(v) for v in node] if isinstance(node, list) else node

    return [
        {"type": "function", "function": {**schema(dict(f)), "name": str(f["name"]).replace(".", "_")}}
        for f in functions
    ]
