"""Decode a model's reply into the calls BFCL's checker reads: ``[{name: {param: value}}]`` (:data:`Call`).

A reply is a list of OpenAI ``tool_calls`` (native function calling), or a text holding JSON calls
(``{"name", "arguments"}``, lists of them, OpenAI ``tool_calls`` objects, Hermes ``<tool_call>`` tags),
Python-style calls (BFCL's prompting format: ``[func(a=1, b="x")]``, keyword arguments, dotted names) or a
ReAct ``Action`` / ``Action Input`` step. Kept apart from the checker (:mod:`agentflan.eval.bfcl`) because
it is the one part that knows reply formats; the checker only sees decoded calls.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from agentflan.data.react import parse_step

Call = dict[str, dict[str, Any]]  # {function name: {parameter: value}}, BFCL's decoded form
_TOOL_CALL_TAG = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


class DecodeError(ValueError):
    """The reply holds no call in any format we read."""


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
