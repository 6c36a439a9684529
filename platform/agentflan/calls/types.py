"""The call type every reader returns (kept apart so the readers and the rollout contract share it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# The text forms a model writes calls in. "hermes" and "llama31" are what our native tool-calling templates
# teach (agentflan.train.tool_templates); "react" and "chat" what data.call_format react / chat teach; "json"
# and "python" what a prompt may ask for (eval.output_format json; BFCL's Python format); "glaive" what
# glaive-function-calling data holds.
CallSyntax = Literal["hermes", "llama31", "json", "python", "react", "glaive", "chat"]
SYNTAXES: tuple[str, ...] = CallSyntax.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ToolCall:
    """One call found in a reply. Every call is returned, in order, each with an id; a call that cannot be
    read is still returned, with ``error`` set, so a rollout can hand the error back as an observation.

    ``error is None`` means the call can be executed as it stands: ``name`` is a string and ``arguments`` a
    dict. With ``error`` set, ``name`` and ``arguments`` hold what could still be read (a scorer may use them;
    an executor must not)."""

    name: str | None  # the tool name as written (None when not even a name could be read)
    arguments: dict[str, Any] | None  # parsed JSON object; None when they do not parse as one
    id: str  # the server's id, or a deterministic one (call_<index>) when the syntax has none
    raw: str = ""  # the text the call was read from
    error: str | None = None  # why it cannot be executed as it stands
    syntax: str = ""  # the CallSyntax it was read in, or "openai" (a server's tool_calls)
    error_code: str | None = None  # with error: "bad_call" (no usable call or name) or "bad_call_arguments"
    raw_arguments: Any = None  # the arguments as written, before decoding (text, or a JSON value)
    span: tuple[int, int] | None = None  # where the call, markup included, lies in the reply text

    @property
    def ok(self) -> bool:
        return self.error is None
