"""The corpus as training reads it: one split of what the data pipeline wrote, as :class:`Conversation` s.

The train split comes from the run's own ``output_dir``; the validation split from :func:`heldout_dir`
(``data.heldout_from``, a Tune study's base corpus, or the run's own), so every trial of a study is scored on
the same held-out conversations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentflan.config import Config
from agentflan.data.pipeline import corpus_shards, read_corpus
from agentflan.data.record import Message, Record

__all__ = ["Conversation", "corpus_shards", "corpus_split", "heldout_dir"]


@dataclass
class Conversation:
    """One corpus row as training reads it: message dicts and the tools offered (JSON-schema functions)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Conversation:
        """A corpus row (``CORPUS_SCHEMA``; JSON-typed values come as text or already decoded)."""
        tools = [json.loads(t) if isinstance(t, str) else t for t in row["tools"] or []]
        return cls([Message.from_dict(m).to_dict() for m in row["messages"]], tools)

    @classmethod
    def from_record(cls, record: Record) -> Conversation:
        return cls([m.to_dict() for m in record.messages], list(record.tools))

    def texts(self) -> list[str]:
        """Every text in it (contents, reasoning, call arguments, tool schemas): what a tokenizer learns from."""
        out = [json.dumps(t, ensure_ascii=False) for t in self.tools]
        for m in self.messages:
            out += [m["content"], m.get("reasoning") or ""]
            out += [
                c["function"]["name"] + " " + c["function"]["arguments"] for c in m.get("tool_calls") or []
            ]
        return [t for t in out if t]


def corpus_split(output_dir: str | Path, split: str) -> list[Conversation]:
    """One split of the corpus written by the data pipeline, in id order (:func:`read_corpus`'s)."""
    return [Conversation.from_record(r) for r in read_corpus(output_dir, split)]


def heldout_dir(cfg: Config) -> Path:
    """Where the validation split is read from: ``data.heldout_from``, else the run's own corpus."""
    return Path(cfg.data.heldout_from) if cfg.data.heldout_from else Path(cfg.output_dir)
