"""Markdown code fences around a call: shared by the JSON and Python readers (kept apart so that neither
reader imports the other at module level)."""

from __future__ import annotations

import re

_FENCE = re.compile(r"^```[\w+-]*[ \t]*\n?(.*?)\n?[ \t]*```$", re.S)


def unfence(text: str) -> str:
    """The text inside a single Markdown code fence that is the whole text (any language tag), else the text."""
    t = text.strip()
    m = _FENCE.match(t)
    return m.group(1).strip() if m else t
