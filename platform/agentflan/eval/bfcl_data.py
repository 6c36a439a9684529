"""BFCL's data files: the questions and ground truth of a BFCL data folder, replies files, and the prompts
and OpenAI tools that offer a question's functions to a model.

A folder holds ``BFCL_v<N>_<category>.json`` question files and ``possible_answer/`` with the same names
(JSON lines despite the suffix). Only single-turn Python categories are scorable (:func:`scorable`); the
checker that judges replies against these files is :mod:`agentflan.eval.bfcl`, which imports this module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

_FILE = re.compile(r"^BFCL_v\d+_(?P<category>[\w]+)\.json$")


class BfclError(ValueError):
    """A problem with the data folder or the replies file, in one line naming the file and line."""


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


def question_counts(data_dir: str | Path, only: Iterable[str] | None = None) -> dict[str, int]:
    """Questions per scorable category of ``data_dir``."""
    wanted = set(only) if only else None
    return {
        c: len(_lines(p))
        for c, p in categories(data_dir).items()
        if scorable(c) and (wanted is None or c in wanted)
    }


def read_replies(path: Path) -> dict[str, Any]:
    """``{"id", "reply"}`` per line; a bad line is an error naming the file and line. So is a second reply for
    one id: which of the two to score is the caller's choice to make, not ours to guess."""
    replies: dict[str, Any] = {}
    line_of: dict[str, int] = {}
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
        qid = str(row["id"])
        if qid in line_of:
            raise BfclError(f"{path}:{n}: a second reply for id {qid!r} (the first is on line {line_of[qid]})")
        replies[qid], line_of[qid] = row["reply"], n
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
