"""Helpers shared by the tool-call reader tests (``test_calls*.py``): real records as the read stage leaves them,
their native calls, and parsed calls as (name, arguments)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from agentflan.calls import ToolCall
from agentflan.data.readers import iter_raw_items, parse_item
from agentflan.data.record import Record

FC = "function_calling"


def records(path: Path) -> list[Record]:
    out = []
    for it in iter_raw_items(str(path), path.read_bytes(), 10**7):
        rec, _ = parse_item(it, path.stem)
        out.append(replace(rec, meta={**rec.meta, "kind": "agent"}))
    return out


def native_calls(rec: Record) -> list[list[tuple[str, dict[str, Any]]]]:
    """Each assistant message's calls, as (name, arguments)."""
    return [
        [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in m.tool_calls]
        for m in rec.messages
        if m.role == "assistant" and m.tool_calls
    ]


def read(calls: list[ToolCall]) -> list[tuple[str | None, dict[str, Any] | None]]:
    return [(c.name, c.arguments) for c in calls]
