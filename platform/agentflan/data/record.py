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
    "none",  # messages that are not trained on
]
CAPABILITIES: tuple[str, ...] = get_args(Capability)
TRAINED_CAPABILITIES: tuple[str, ...] = tuple(c for c in CAPABILITIES if c != "none")

Status = Literal["ok", "filtered", "quarantined"]


@dataclass
class Message:
    role: Role
    content: str
    loss: bool = False
    capability: Capability = "none"
    weight: float = 1.0
    name: str | None = None  # the tool's name on a tool message

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "content": self.content,
            "loss": self.loss,
            "capability": self.capability,
            "weight": self.weight,
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Message:
        return cls(
            role=d["role"],
            content=d["content"],
            loss=bool(d.get("loss", False)),
            capability=d.get("capability") or "none",
            weight=float(d.get("weight", 1.0)),
            name=d.get("name"),
        )


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
MESSAGE_TYPE = pa.struct(
    [
        ("role", pa.string()),
        ("content", pa.string()),
        ("loss", pa.bool_()),
        ("capability", pa.string()),
        ("weight", pa.float32()),
        ("name", pa.string()),
    ]
)
CORPUS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("bucket", pa.string()),
        ("split", pa.string()),
        ("messages", pa.list_(MESSAGE_TYPE)),
        ("tools", pa.string()),
        ("meta", pa.string()),
    ]
)
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
        if not m.content.strip():
            return "empty_content", f"message {i} ({m.role}) has empty content"
    if not any(m.role == "assistant" for m in messages):
        return "no_assistant_message", "no assistant message"
    if not any(m.role == "user" for m in messages):
        return "no_user_message", "no user message"
    return None
