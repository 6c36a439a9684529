"""Words that give away a tool call in a reply that should be plain.

Shared by the negative-sample check (a responder's reply with these is rejected) and by Agent-H, which
scores exactly these two families: ReAct words (H_ReAct) and phrases announcing a tool (H_General).
"""

from __future__ import annotations

import re

# ReAct format words: "Thought:", "Action:", "Action Input:", "Observation:" (optionally numbered).
REACT_WORDS = re.compile(r"\b(?:Thought|Action Input|Action|Observation)(?:\s+\d+)?\s*:", re.I)

# Phrases that announce a tool call in prose (H_General).
GENERAL_TOOL_PHRASES = re.compile(
    r"\b(?:I\s+(?:will|'ll|need to|am going to|should|must|can)\s+(?:use|call|invoke|query|run|search|look up)\b"
    r"|let me (?:use|call|invoke|query|search|look up)\b"
    r"|(?:calling|invoking|using) the (?:\w+ )?(?:tool|function|api)\b"
    r"|call the (?:\w+ )?(?:tool|function|api)\b)",
    re.I,
)


def has_react_words(text: str) -> bool:
    return REACT_WORDS.search(text) is not None


def has_tool_phrases(text: str) -> bool:
    return GENERAL_TOOL_PHRASES.search(text) is not None
