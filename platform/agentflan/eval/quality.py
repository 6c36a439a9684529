"""Is the model saying anything? Degenerate replies, and when Agent-H stops meaning anything.

Agent-H counts replies that contain ReAct words or tool phrases. A model that only emits ``the the the`` (or
nothing) contains neither, so it scores a perfect H_Score of 1.0 while being useless. Before any Agent-H number
is read, the report checks the replies themselves:

- a reply is **degenerate** when it has no word at all, or when its most frequent word 3-gram covers more
  than half of its words (``I to the the the the``), or, for replies of 6+ words, one word does;
- the model is **too weak for Agent-H** when at least :data:`TOO_WEAK_SHARE` of all replies are degenerate:
  the report then prints no H_Score verdict but says why.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

TOO_WEAK_SHARE = 0.5
_WORD = re.compile(r"\w+|[^\w\s]")


def is_degenerate(reply: str | Sequence[str]) -> bool:
    text = reply if isinstance(reply, str) else "\n".join(reply)
    words = [w.lower() for w in _WORD.findall(text)]
    if not words:
        return True
    if len(words) >= 6 and Counter(words).most_common(1)[0][1] * 2 > len(words):
        return True
    grams = list(zip(words, words[1:], words[2:], strict=False))
    if not grams:
        return False
    top, count = Counter(grams).most_common(1)[0]
    if count < 2:
        return False
    covered = {i + k for i, g in enumerate(grams) if g == top for k in range(3)}
    return len(covered) * 2 > len(words)


def degenerate_count(replies: Sequence[str | Sequence[str]]) -> int:
    return sum(is_degenerate(r) for r in replies)


def too_weak(degenerate: int, n: int) -> bool:
    return n > 0 and degenerate / n >= TOO_WEAK_SHARE
