"""Read raw files into canonical records, quarantining what cannot be read.

Reading happens in two steps so that Ray Data can spread the work and every error can name its place:

1. :func:`iter_raw_items` splits one file's bytes into raw items, each with its line number: a line of a
   JSONL file, an element of a JSON array (its line found while scanning the array), a parquet row.
   Bytes that are not UTF-8, JSON that does not parse and oversized records become items that carry an
   ``error`` instead of text.
2. :func:`parse_item` turns one raw item into a :class:`Record`, detecting its schema from its keys:

   ===================  =====================================================================
   ``conversations``    ShareGPT, AgentInstruct and ToolLLaMA (``from``/``value``, ``loss``)
   ``messages``         OpenAI style (``role``/``content``, ``function_call``/``tool_calls``)
   ``conversation``     the Agent-FLAN release (``role``/``content``, ``loss`` on some turns only)
   ``answer_generation`` a raw ToolBench DFS answer tree (its ``train_messages``)
   ===================  =====================================================================

Function-calling datasets (OpenAI ``tools``/``tool_calls``, LLaMA-Factory's ``function_call`` turns, glaive,
typed content parts, xLAM, Hermes, ToolACE) are recognised first (:mod:`agentflan.data.function_calling`) and
keep their calls native (``Message.tool_calls``); the aligner writes them in the configured call format. A
raw ToolBench answer's OpenAI function calls, inside ``answer_generation``, become ReAct text as before.
"""

from __future__ import annotations

import ast
import glob
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agentflan.calls import from_openai
from agentflan.data import function_calling
from agentflan.data.react import parse_step, render_react_calls
from agentflan.data.record import Message, Record, validate_messages
from agentflan.data.stage import Quarantine

_ROLE_ALIASES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "function": "tool",
    "tool": "tool",
    "observation": "tool",
}
_TOOLLLAMA_APIS = re.compile(r"Specifically, you have access to the following APIs:\s*(\[.*\])\s*$", re.S)


class RecordError(Quarantine):
    """A raw item that cannot become a record (``invalid_json``, ``bad_message``, ...)."""


def expand_inputs(path: str) -> list[str]:
    """A file, a directory (its json/jsonl/parquet files) or a glob; sorted for determinism."""
    if "://" in path:
        return [path]
    p = Path(path)
    if p.is_dir():
        files = [str(f) for f in sorted(p.rglob("*")) if f.suffix in (".json", ".jsonl", ".parquet")]
    elif any(ch in path for ch in "*?["):
        files = sorted(glob.glob(path, recursive=True))
    else:
        files = [path]
    return files


def _item(path: str, line: int, raw: str, error: str = "") -> dict[str, Any]:
    return {"path": path, "line": line, "raw": raw, "error": error}


def _decode(data: bytes) -> tuple[str, str]:
    """Decode UTF-8; on failure return the text with bad bytes escaped, and the error."""
    try:
        return data.decode("utf-8"), ""
    except UnicodeDecodeError as e:
        return (
            data.decode("utf-8", errors="backslashreplace"),
            f"not_utf8: byte 0x{data[e.start]:02x} at offset {e.start} is not valid UTF-8",
        )


def _too_large(n: int, limit: int) -> str:
    return f"too_large: record is {n / 1e6:.1f} MB, over data.max_record_bytes ({limit / 1e6:.1f} MB)"


def _jsonl_items(path: str, data: bytes, limit: int, first_line: int = 1) -> Iterator[dict[str, Any]]:
    for i, line in enumerate(data.split(b"\n"), start=first_line):
        if not line.strip():
            continue
        text, err = _decode(line)
        if not err and len(line) > limit:
            err = _too_large(len(line), limit)
        yield _item(path, i, text, err)


def _json_items(
    path: str, data: bytes, limit: int, stripe: tuple[int, int] | None = None
) -> Iterator[dict[str, Any]]:
    """Elements of a top-level JSON array (or one top-level object), with their line numbers. ``stripe``
    ``(k, n)``: only the elements whose index is ``k`` modulo ``n`` (one of ``n`` tasks reading the array)."""
    text, err = _decode(data)
    if err:
        yield _item(path, 1, text, err.replace(": ", ": the file's ", 1))
        return
    start = len(text) - len(text.lstrip())
    if text[start : start + 1] != "[":
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            if text.count("\n") > 1:  # a .json file that is really JSON lines
                yield from _jsonl_items(path, data, limit)
                return
            yield _item(path, e.lineno, text, f"invalid_json: {e.msg} at line {e.lineno}, column {e.colno}")
            return
        yield _item(path, text.count("\n", 0, start) + 1, text)
        return
    decoder = json.JSONDecoder()
    pos, line, counted, index = start + 1, 1, 0, 0
    ws = re.compile(r"[\s,]*")
    while True:
        pos = ws.match(text, pos).end()
        if pos >= len(text) or text[pos] == "]":
            return
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            _, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            if stripe is None or stripe[0] == index % stripe[1]:  # the rest of the file: one owner
                yield _item(
                    path, e.lineno, text[pos:], f"invalid_json: {e.msg} at line {e.lineno}, column {e.colno}"
                )
            return
        if stripe is None or stripe[0] == index % stripe[1]:
            raw = text[pos:end]
            yield _item(path, line, raw, _too_large(len(raw.encode()), limit) if len(raw) > limit else "")
        pos, index = end, index + 1


def _parquet_items(path: str, data: Any, first_line: int = 1) -> Iterator[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = data if isinstance(data, pa.Table) else pq.read_table(pa.BufferReader(data))
    for batch in table.to_batches(max_chunksize=1024):
        for row in batch.to_pylist():
            yield _item(path, first_line, json.dumps(row, ensure_ascii=False, default=str))
            first_line += 1


def iter_raw_items(
    path: str,
    data: Any,
    max_record_bytes: int,
    first_line: int = 1,
    stripe: tuple[int, int] | None = None,
) -> Iterator[dict[str, Any]]:
    """Split one file (or one part of it, :mod:`agentflan.data.splits`) into raw items (see the module
    docstring). ``data`` is the bytes; for parquet row groups read apart, their table. ``first_line`` is the
    line number of the first byte (row) of ``data``; ``stripe`` picks one task's elements of a JSON array."""
    if path.endswith(".parquet"):
        yield from _parquet_items(path, data, first_line)
    elif path.endswith((".jsonl", ".ndjson")):
        yield from _jsonl_items(path, data, max_record_bytes, first_line)
    else:
        yield from _json_items(path, data, max_record_bytes, stripe)


def read_bytes(path: str) -> bytes:
    """Local paths directly; s3://, gs:// and the like through pyarrow's filesystems."""
    if "://" in path:
        import pyarrow.fs as pafs

        fs, inner = pafs.FileSystem.from_uri(path)
        with fs.open_input_stream(inner) as f:
            return f.read()
    return Path(path).read_bytes()


# ---------------------------------------------------------------- schema detection and conversion


def _loss(value: Any, role: str) -> bool:
    """A message's loss flag: as given, else trained iff it is an assistant turn."""
    return bool(value) if value is not None else role == "assistant"


def _tools_from_system(text: str) -> list[dict[str, Any]]:
    """ToolLLaMA writes the API list into the system prompt as a Python literal."""
    m = _TOOLLLAMA_APIS.search(text)
    if not m:
        return []
    try:
        tools = ast.literal_eval(m.group(1))
    except (ValueError, SyntaxError):
        return []
    return [t for t in tools if isinstance(t, dict)]


def _from_conversations(turns: list[Any]) -> list[Message]:
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise RecordError("bad_message", f"message {i}: expected an object, got {type(t).__name__}")
        who = t.get("from")
        if who is None:
            raise RecordError("bad_message", f"message {i}: missing key 'from'")
        role = _ROLE_ALIASES.get(str(who).lower())
        if role is None:
            raise RecordError("bad_message", f"message {i}: unknown role {who!r}")
        if "value" not in t:
            raise RecordError("bad_message", f"message {i}: missing key 'value'")
        content = t["value"]
        if not isinstance(content, str):
            raise RecordError(
                "bad_message", f"message {i}: value is {type(content).__name__}, expected a string"
            )
        out.append(Message(role=role, content=content, loss=_loss(t.get("loss"), role)))  # type: ignore[arg-type]
    return out


def _calls_text(content: str | None, tool_calls: list[Any], i: int) -> str:
    """OpenAI calls (``tool_calls``, or a ``function_call``) as ReAct text: every call, one ``Action`` /
    ``Action Input`` pair each, the arguments as written."""
    calls = from_openai(tool_calls, f"call_{i}_")
    if any(c.name is None for c in calls):
        raise RecordError("bad_message", f"message {i}: tool call without a function name")
    args = [c.raw_arguments if isinstance(c.raw_arguments, str) or c.raw_arguments is None else
            json.dumps(c.raw_arguments, ensure_ascii=False) for c in calls]  # fmt: skip
    return render_react_calls((content or "").strip(), [(c.name, a or "{}") for c, a in zip(calls, args, strict=True)])  # type: ignore[misc]


def _from_messages(turns: list[Any]) -> list[Message]:
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise RecordError("bad_message", f"message {i}: expected an object, got {type(t).__name__}")
        if "role" not in t:
            raise RecordError("bad_message", f"message {i}: missing key 'role'")
        role = _ROLE_ALIASES.get(str(t["role"]).lower())
        if role is None:
            raise RecordError("bad_message", f"message {i}: unknown role {t['role']!r}")
        content = t.get("content")
        calls = t.get("tool_calls") or ([{"function": t["function_call"]}] if t.get("function_call") else [])
        if role == "assistant" and calls:
            content = _calls_text(content, calls, i)
        if content is None:
            raise RecordError("bad_message", f"message {i}: missing key 'content'")
        if not isinstance(content, str):
            raise RecordError(
                "bad_message", f"message {i}: content is {type(content).__name__}, expected a string"
            )
        name = t.get("name") if role == "tool" else None
        out.append(Message(role=role, content=content, loss=_loss(t.get("loss"), role), name=name))  # type: ignore[arg-type]
    return out


def detect_format(obj: Any) -> str:
    """Name the schema of one raw record (see module docstring); raise if none fits."""
    if not isinstance(obj, dict):
        raise RecordError("unrecognised_schema", f"expected a JSON object, got {type(obj).__name__}")
    if "answer_generation" in obj:
        return "toolbench_dfs"
    for key, fmt in (
        ("conversations", "conversations"),
        ("messages", "messages"),
        ("conversation", "agentflan"),
    ):
        if key in obj:
            if not isinstance(obj[key], list):
                raise RecordError("bad_message", f"'{key}' is {type(obj[key]).__name__}, expected a list")
            return fmt
    keys = ", ".join(sorted(obj)[:8]) or "none"
    raise RecordError(
        "unrecognised_schema",
        f"none of the keys 'conversations', 'messages', 'conversation', 'answer_generation' (found: {keys})",
    )


def _dfs_messages(obj: dict[str, Any]) -> tuple[list[Message], list[dict[str, Any]], dict[str, Any]]:
    ag = obj["answer_generation"]
    if not isinstance(ag, dict):
        raise RecordError("unrecognised_schema", "'answer_generation' is not an object")
    chains = ag.get("train_messages") or []
    if not chains or not isinstance(chains, list):
        raise RecordError("bad_message", "answer_generation has no train_messages")
    # train_messages holds one prefix per step; the longest is the whole successful chain.
    messages = _from_messages(max(chains, key=len))
    meta = {"finish_type": ag.get("finish_type"), "valid_data": ag.get("valid_data")}
    return messages, list(ag.get("function") or []), meta


def parse_item(item: dict[str, Any], source: str) -> tuple[Record, str]:
    """Turn a raw item into a record; returns (record, format). Raises RecordError with the reason."""
    if item["error"]:
        code, _, detail = item["error"].partition(": ")
        raise RecordError(code, detail)
    try:
        obj = json.loads(item["raw"])
    except json.JSONDecodeError as e:
        raise RecordError("invalid_json", f"{e.msg} at column {e.colno}") from None
    tools: list[dict[str, Any]] = []
    meta: dict[str, Any] = {}
    fc_format = function_calling.detect(obj) if isinstance(obj, dict) else None
    fmt = fc_format or detect_format(obj)
    if fc_format:
        try:
            messages, tools = function_calling.read(fc_format, obj)
        except function_calling.CallError as e:
            raise RecordError(e.code, e.detail) from None
        except (KeyError, TypeError, AttributeError) as e:
            raise RecordError("bad_message", f"{fc_format} record: {type(e).__name__}: {e}") from None
    elif fmt == "toolbench_dfs":
        messages, tools, meta = _dfs_messages(obj)
    elif fmt == "conversations":
        messages = _from_conversations(obj["conversations"])
    else:
        messages = _from_messages(obj["messages" if fmt == "messages" else "conversation"])
    if not tools and not fc_format and isinstance(obj.get("tools"), list):
        tools = obj["tools"]
    if not tools:
        for m in messages:
            if m.role == "system":
                tools = _tools_from_system(m.content)
                break
    problem = validate_messages(messages)
    if problem:
        raise RecordError(*problem)
    # Ids are "<file stem>:<native id>" (or ":L<line>"), unique across files that share native ids.
    native_id = obj.get("id")
    stem = Path(item["path"]).stem
    has_id = isinstance(native_id, (str, int)) and str(native_id) != ""
    rid = f"{stem}:{native_id}" if has_id else f"{stem}:L{item['line']}"
    # The origin (file:line) is kept beside the record, not in meta: meta is part of the fingerprint, and the
    # fingerprint must not depend on where the input files happen to lie.
    meta.update({"format": fmt, "file": stem})
    origin = f"{item['path']}:{item['line']}"
    return Record(id=rid, source=source, messages=messages, tools=tools, meta=meta, origin=origin), fmt


def is_agent_record(record: Record) -> bool:
    """An agent trajectory offers tools, makes native calls or has an assistant turn with a ReAct action."""
    if record.tools or any(m.tool_calls for m in record.messages):
        return True
    return any(m.role == "assistant" and parse_step(m.content) is not None for m in record.messages)
