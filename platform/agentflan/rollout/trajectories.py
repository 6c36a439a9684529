"""Episodes on disk: every one in ``trajectories.jsonl`` (for a reviewer), and the passing ones as
training data (``keep: passed``): OpenAI-messages JSONL, ``{"messages", "tools"}``, which ``data.inputs``
reads as it is. Running a teacher endpoint and keeping what its checker passes is rejection-sampled
trajectory synthesis."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentflan.rollout.engine import EpisodeResult

# Fields of a message the corpus readers take; anything else (a server's extra keys) is left out.
_KEPT_FIELDS = ("role", "content", "tool_calls", "tool_call_id", "name", "reasoning_content")


def write_trajectories(results: Sequence[EpisodeResult], path: Path) -> None:
    with path.open("w") as f:
        for r in results:
            f.write(json.dumps(r.to_dict(), ensure_ascii=False, default=str) + "\n")


def training_record(r: EpisodeResult) -> dict[str, Any]:
    """One episode as an OpenAI-messages record, with its id and the tools it was offered."""
    messages = [{k: m[k] for k in _KEPT_FIELDS if m.get(k) is not None} for m in r.messages]
    for m in messages:
        m.setdefault("content", "")
    return {"id": f"{r.env}:{r.id}", "messages": messages, "tools": r.tools}


def write_kept(results: Sequence[EpisodeResult], path: Path, keep: str) -> int:
    """Write the episodes ``keep`` selects (``passed`` or ``all``); returns how many."""
    chosen = [r for r in results if keep == "all" or (keep == "passed" and r.verdict.passed)]
    with path.open("w") as f:
        for r in chosen:
            f.write(json.dumps(training_record(r), ensure_ascii=False) + "\n")
    return len(chosen)
