"""Tool calls read from model output: the one parser every caller uses (data, eval, BFCL, rollouts).

Placeholder: only the call type is fixed here; the parser is being written (issue 23).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    """One call found in a reply. Every call is returned, in order, each with an id; a call that cannot be
    read is still returned, with ``error`` set, so a rollout can hand the error back as an observation."""

    name: str | None  # the tool name as written (None when not even a name could be read)
    arguments: dict[str, Any] | None  # parsed JSON object; None when they do not parse as one
    id: str  # the server's id, or a deterministic one (call_<index>) when the syntax has none
    raw: str = ""  # the text the call was read from
    error: str | None = None  # why it cannot be executed as it stands
