"""Calls written as Python: ``[f(a=1), g.h(b="x")]`` (BFCL's prompting format, ToolACE's data), read with
:mod:`ast` and never evaluated.

The text is first cleaned the way BFCL's own decoder cleans it (a code fence, backticks, brackets added when
missing), so BFCL's verdicts stay BFCL's. Each element must be a call of a dotted name with keyword arguments.
A name that is not one (``__import__('os').system``) is returned as its source text, with an error: it is a
string, never code. Values are read as literals; anything else is read as BFCL reads it (a bare name as its
string, ``true``/``false``/``null`` as JSON's, arithmetic on numbers computed, a nested call as a call) and the
call gets an error saying its arguments are not literals: a caller that scores the way BFCL does may still use
them, a caller that executes or trains on them should not. Names holding spaces (ToolACE's ``Market Trends
API(...)``) are read when the text opens with ``[``.
"""

from __future__ import annotations

import ast
import operator
import re
from typing import Any

from agentflan.calls.fences import unfence
from agentflan.calls.types import ToolCall

_SPACED_NAME = re.compile(r"(^\[?\s*|,\s*)([A-Za-z_][\w./\- ]*?)\s*\(")  # a call's name, as ToolACE writes it
_LOOKS_LIKE_CALLS = re.compile(r"^\[?\s*[A-Za-z_][\w.]*\s*\(")
_JSON_NAMES = {"true": True, "false": False, "null": None, "None": None}
_OPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}  # fmt: skip
_MAX_SIZE = 10_000  # arithmetic whose result would be bigger than this (strings, lists, digits) is left as text


def _body(text: str) -> str:
    """BFCL's cleaning (``default_decode_ast_prompting``): fence and backticks off, brackets on."""
    body = unfence(text).strip("`\n ").strip()
    if body.startswith("python\n"):
        body = body[len("python\n") :]
    if not body.startswith("["):
        body = "[" + body
    if not body.endswith("]"):
        body = body + "]"
    return body.strip().strip("'")


def _callee(func: ast.expr, aliases: dict[str, str]) -> tuple[str, bool]:
    """The dotted name a call is made on, and whether it is one (else its source text)."""
    parts, node = [], func
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        name = ".".join([node.id, *reversed(parts)])
        return aliases.get(name, name), True
    return ast.unparse(func), False


def _arith(node: ast.BinOp) -> tuple[Any, bool]:
    left, _ = _value(node.left)
    right, _ = _value(node.right)
    op = _OPS.get(type(node.op))
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right))
    seq, count = (left, right) if isinstance(left, (str, list)) else (right, left)
    repeat = isinstance(node.op, ast.Mult) and isinstance(seq, (str, list)) and type(count) is int
    concat = isinstance(node.op, ast.Add) and type(left) is type(right) and isinstance(left, (str, list))
    if op is None or not (numbers or repeat or concat):
        return ast.unparse(node), False
    if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 10**6):  # 9**9**9 is no argument
        return ast.unparse(node), False
    if repeat and len(seq) * max(count, 0) > _MAX_SIZE:
        return ast.unparse(node), False
    try:
        return op(left, right), False
    except Exception:
        return ast.unparse(node), False


def _value(node: ast.AST) -> tuple[Any, bool]:
    """A value as BFCL's decoder reads it, and whether it was a plain literal (what ``ast.literal_eval`` reads
    and JSON can hold)."""
    if isinstance(node, ast.Constant):
        if node.value is Ellipsis:
            return "...", False
        return node.value, not isinstance(node.value, (bytes, complex))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value, exact = _value(node.operand)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return ast.unparse(node), False
        return (-value if isinstance(node.op, ast.USub) else value), exact
    if isinstance(node, (ast.List, ast.Tuple)):
        read = [_value(v) for v in node.elts]
        values = [v for v, _ in read]
        return (values if isinstance(node, ast.List) else tuple(values)), all(e for _, e in read)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            return ast.unparse(node), False
        keys = [_value(k) for k in node.keys]  # type: ignore[arg-type]
        values = [_value(v) for v in node.values]
        try:
            out = {k: v for (k, _), (v, _) in zip(keys, values, strict=True)}
        except TypeError:  # an unhashable key
            return ast.unparse(node), False
        return out, all(e for _, e in keys + values)
    if isinstance(node, ast.Name):
        return _JSON_NAMES.get(node.id, node.id), node.id == "None"
    if isinstance(node, ast.BinOp):
        return _arith(node)
    if isinstance(node, ast.Call) and node.keywords:
        name, _ = _callee(node.func, {})
        return {name: {k.arg: _value(k.value)[0] for k in node.keywords if k.arg is not None}}, False
    return ast.unparse(node), False


def _call(node: ast.Call, call_id: str, source: str, text: str, aliases: dict[str, str]) -> ToolCall:
    raw = ast.get_source_segment(source, node) or ast.unparse(node)
    for alias, name in aliases.items():
        raw = raw.replace(f"{alias}(", f"{name}(", 1) if raw.startswith(f"{alias}(") else raw
    found = text.find(raw)
    span = (found, found + len(raw)) if found != -1 else None
    name, plain = _callee(node.func, aliases)
    read = {k.arg: _value(k.value) for k in node.keywords if k.arg is not None}
    arguments = {k: v for k, (v, _) in read.items()}
    error, code = None, None
    if not plain:
        error, code = f"{name!r} is not a function name", "bad_call"
    elif not all(exact for _, exact in read.values()) or any(k.arg is None for k in node.keywords):
        error, code = f"arguments of {name!r} are not literals", "bad_call_arguments"
    elif node.args:
        error, code = f"{name!r} has positional arguments", "bad_call_arguments"
    return ToolCall(name, arguments, call_id, raw, error, syntax="python", error_code=code, span=span,
                    raw_arguments=", ".join(ast.unparse(k) for k in node.keywords))  # fmt: skip


def parse_python(text: str, id_prefix: str = "call_") -> list[ToolCall]:
    """Every call of a Python call list. A text that is not Python, or holds no call, is no call (a reply in
    prose); one that starts like a call list but does not parse is one error."""
    body, aliases = _body(text), {}

    def alias(m: re.Match[str]) -> str:
        if all(part.isidentifier() for part in m.group(2).split(".")):
            return m.group(0)
        aliases[f"_call_{len(aliases)}"] = m.group(2)
        return f"{m.group(1)}_call_{len(aliases) - 1}("

    source = body
    try:
        tree = ast.parse(body, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as first:
        source = _SPACED_NAME.sub(alias, body) if unfence(text).startswith("[") else body
        try:
            tree = ast.parse(source, mode="eval").body
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            if not _LOOKS_LIKE_CALLS.match(unfence(text)):
                return []
            msg = getattr(first, "msg", type(first).__name__)
            return [ToolCall(None, None, f"{id_prefix}0", text.strip(), f"not a list of calls ({msg})",
                             syntax="python", error_code="bad_call")]  # fmt: skip
    elements = [tree] if isinstance(tree, ast.Call) else getattr(tree, "elts", None)
    if not elements or not any(isinstance(e, ast.Call) for e in elements):
        return []
    calls = []
    for k, node in enumerate(elements):
        call_id = f"{id_prefix}{k}"
        if not isinstance(node, ast.Call):
            calls.append(ToolCall(None, None, call_id, ast.unparse(node), f"{ast.unparse(node)[:60]!r} is not a call",
                                  syntax="python", error_code="bad_call"))  # fmt: skip
            continue
        try:
            calls.append(_call(node, call_id, source, text, aliases))
        except (RecursionError, MemoryError, ValueError, TypeError) as e:
            calls.append(ToolCall(None, None, call_id, ast.unparse(node), f"unreadable call ({type(e).__name__})",
                                  syntax="python", error_code="bad_call"))  # fmt: skip
    return calls
