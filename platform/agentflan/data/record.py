"""The canonical record every stage reads and writes.

A record is one conversation in OpenAI-style ``messages`` (roles ``system``, ``user``, ``assistant``,
``tool``), where each message also says whether it is trained on (``loss``), which Agent-FLAN capability it
teaches (``capability``) and how much its tokens count (``weight``, used by the ``loss_weight`` strategy).

In flight between stages a record is a *row* of flat columns (see :data:`ROW_SCHEMA`): messages, tools and
meta travel as JSON strings, so every Ray Data block has the same Arrow schema whatever the source looked
like. Rows that a stage drops are not deleted: they become *tombstones* (``status`` ``filtered`` or
``quarantined`` with the stage and reason), so the counts in the manifest are taken from rows that exist,
not from counters that could drift.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import pyarrow as pa

Role = Literal[
    "system",  # instructions and the tools on offer
    "user",  # the human, and the short "elicit" turns that ask for the next piece of an aligned step
    "assistant",  # the model; the only role that is ever trained on
    "tool",  # an observation returned by a tool or environment
]
ROLES: tuple[str, ...] = get_args(Role)

Capability = Literal[
    "reasoning",  # the Thought of a step, and the final answer
    "retrieval",  # choosing which tool to call
    "understanding",  # filling in the tool's arguments
    "instruction_following",  # producing a required output format (ReAct or JSON)
    "general",  # plain chat replies, including the plain replies of negative samples
    "tool_call",  # a native call message: thought, names and arguments weighed apart (Message.part_weights)
    "none",  # messages that are not trained on
]
CAPABILITIES: tuple[str, ...] = get_args(Capability)
TRAINED_CAPABILITIES: tuple[str, ...] = tuple(c for c in CAPABILITIES if c not in ("none", "tool_call"))
# The parts of a native call message and the capability each one teaches (weights per part, see decompose).
CALL_PARTS: dict[str, str] = {"reasoning": "reasoning", "names": "retrieval", "arguments": "understanding"}

Status = Literal["ok", "filtered", "quarantined"]


@dataclass
class Message:
    """One message. Besides the text, an assistant message may carry native calls (OpenAI's ``tool_calls``:
    ``[{"id", "type": "function", "function": {"name", "arguments"}}]``, the arguments a JSON object as text)
    and a ``reasoning`` text; a tool message carries the ``tool_call_id`` and ``name`` of the call it answers.
    ``part_weights`` weighs the parts of a native call message apart: ``reasoning`` (its thought: the content
    and reasoning), ``names`` (the function names) and ``arguments`` (retrieval and understanding)."""

    role: Role
    content: str
    loss: bool = False
    capability: Capability = "none"
    weight: float = 1.0
    name: str | None = None  # the tool's name on a tool message
    tool_calls: list[dict[str, Any]] | None = None
    reasoning: str | None = None
    tool_call_id: str | None = None
    part_weights: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "role": self.role,
            "content": self.content,
            "loss": self.loss,
            "capability": self.capability,
            "weight": self.weight,
            "name": self.name,
        }
        # Native fields only where present: records without them keep their old form (and fingerprint).
        for key in ("tool_calls", "reasoning", "tool_call_id", "part_weights"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Message:
        calls = d.get("tool_calls")
        return cls(
            role=d["role"],
            content=d["content"] if d.get("content") is not None else "",
            loss=bool(d.get("loss", False)),
            capability=d.get("capability") or "none",
            weight=float(d.get("weight", 1.0)),
            name=d.get("name"),
            tool_calls=[_call_with_text_arguments(c) for c in calls] if calls else None,
            reasoning=d.get("reasoning"),
            tool_call_id=d.get("tool_call_id"),
            part_weights=(
                {k: float(v) for k, v in d["part_weights"].items() if v is not None}
                if d.get("part_weights")
                else None
            ),
        )


def _call_with_text_arguments(call: dict[str, Any]) -> dict[str, Any]:
    """A call as stored in flight: arguments as JSON text (the corpus column decodes them to an object)."""
    fn = dict(call["function"])
    if not isinstance(fn.get("arguments"), str):
        fn["arguments"] = json.dumps(fn.get("arguments") or {}, ensure_ascii=False)
    return {"id": call.get("id"), "type": call.get("type") or "function", "function": fn}


@dataclass
class Record:
    id: str
    source: str
    messages: list[Message]
    tools: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    # Which mixture bucket the record is sampled from: a source name, "general", "negatives" or
    # "format_following".
    bucket: str = ""
    # "file:line" of the raw input it came from (for generated records: their seed's).
    origin: str = ""

    def to_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "bucket": self.bucket or self.source,
            "messages": json.dumps([m.to_dict() for m in self.messages], ensure_ascii=False),
            "tools": json.dumps(self.tools, ensure_ascii=False),
            "meta": json.dumps(self.meta, ensure_ascii=False, sort_keys=True),
            "status": "ok",
            "stage": "",
            "reason": "",
            "origin": self.origin,
            "raw": "",
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Record:
        return cls(
            id=row["id"],
            source=row["source"],
            bucket=row["bucket"],
            messages=[Message.from_dict(m) for m in json.loads(row["messages"])],
            tools=json.loads(row["tools"]),
            meta=json.loads(row["meta"]),
            origin=row.get("origin") or "",
        )


# Columns of a row in flight. Every stage reads and writes exactly these.
ROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("bucket", pa.string()),
        ("messages", pa.string()),
        ("tools", pa.string()),
        ("meta", pa.string()),
        ("status", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("origin", pa.string()),  # "file:line" the record was read from
        ("raw", pa.string()),  # the raw input, kept on quarantined rows so nothing is lost
    ]
)

# The corpus as written to disk: messages become a real nested column so that
# ``datasets.load_dataset("parquet", ...)`` yields lists of dicts.
# JSON-valued fields (a tool's schema, a call's arguments) are Arrow's JSON extension type on disk: `datasets`
# reads them back as Python objects (its Json feature), which is what `apply_chat_template(messages,
# tools=...)` and the trainers built on it (TRL, axolotl, LLaMA-Factory) take. In flight they are JSON text.
CALL_TYPE = pa.struct(
    [
        ("id", pa.string()),
        ("type", pa.string()),
        ("function", pa.struct([("name", pa.string()), ("arguments", pa.json_())])),
    ]
)
MESSAGE_TYPE = pa.struct(
    [
        ("role", pa.string()),
        ("content", pa.string()),
        ("loss", pa.bool_()),
        ("capability", pa.string()),
        ("weight", pa.float32()),
        ("name", pa.string()),
        ("tool_calls", pa.list_(CALL_TYPE)),
        ("reasoning", pa.string()),
        ("tool_call_id", pa.string()),
        ("part_weights", pa.struct([(part, pa.float32()) for part in CALL_PARTS])),
    ]
)
CORPUS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("bucket", pa.string()),
        ("split", pa.string()),
        ("messages", pa.list_(MESSAGE_TYPE)),
        ("tools", pa.list_(pa.json_())),
        ("meta", pa.string()),
    ]
)


def storage_type(t: pa.DataType) -> pa.DataType:
    """``t`` with every extension type (JSON) replaced by its storage (text): the in-flight form."""
    if isinstance(t, pa.BaseExtensionType):
        return t.storage_type
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, storage_type(f.type)) for f in t])
    if pa.types.is_list(t):
        return pa.list_(storage_type(t.value_type))
    return t


def storage_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([pa.field(f.name, storage_type(f.type)) for f in schema])


QUARANTINE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("origin", pa.string()),
        ("raw", pa.string()),
    ]
)


def tombstone(row: dict[str, Any], stage: str, status: Status, reason: str, keep_raw: bool) -> dict[str, Any]:
    """Turn a row into a dropped-row marker.

    Filtered rows drop their content (the filter's reason says why they are not wanted); quarantined rows
    keep the raw input (or the record as it was) so a human can fix and re-run it.
    """
    raw = row.get("raw") or ""
    if keep_raw and not raw:
        raw = json.dumps(
            {"id": row.get("id"), "messages": row.get("messages"), "tools": row.get("tools")},
            ensure_ascii=False,
        )
    return {
        **row,
        "messages": "[]" if not keep_raw else row.get("messages", "[]"),
        "status": status,
        "stage": stage,
        "reason": reason,
        "raw": raw if keep_raw else "",
    }


def validate_messages(messages: list[Message]) -> tuple[str, str] | None:
    """Return (reason code, detail) if a conversation is unusable, else None.

    Checked once after reading, so later stages can trust roles and content.
    """
    if not messages:
        return "no_messages", "the conversation is empty"
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            return "bad_message", f"message {i}: unknown role {m.role!r} (expected one of {', '.join(ROLES)})"
        if not isinstance(m.content, str):
            return "bad_message", f"message {i}: content is {type(m.content).__name__}, expected a string"
        if not m.content.strip() and not (m.role == "assistant" and (m.tool_calls or m.reasoning)):
            return "empty_content", f"message {i} ({m.role}) has empty content"
    if not any(m.role == "assistant" for m in messages):
        return "no_assistant_message", "no assistant message"
    if not any(m.role == "user" for m in messages):
        return "no_user_message", "no user message"
    return None
