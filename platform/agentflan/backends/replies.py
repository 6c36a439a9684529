"""Model text and server answers as :class:`~agentflan.rollout.types.Reply` objects, calls parsed once."""

from __future__ import annotations

import json
import re

from agentflan.calls import from_openai, parse_calls
from agentflan.data.react import parse_step
from agentflan.rollout.types import Reply

# Calls are carried in the text of the reply: once parsed into ``tool_calls``, the call text is taken out of
# ``content``, or the next prompt would render each call twice (the chat template for native syntaxes; the
# prompt dialect, :mod:`agentflan.rollout.dialect`, for ``react``, which keeps the thought as the content).
_HERMES_CALL = re.compile(r"<tool_call>.*?(?:</tool_call>|$)", re.S)


def reply_from_text(
    text: str,
    syntax: str | None,
    finish_reason: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
) -> Reply:
    """``syntax`` None: the text as it is, no calls read (eval scores the raw text with its own rules)."""
    if syntax is None:
        return Reply(text, (), None, finish_reason, prompt_tokens, completion_tokens)
    calls = tuple(parse_calls(text, syntax))
    content = text
    if calls and syntax == "hermes":
        content = _HERMES_CALL.sub("", text).strip()
    elif calls and syntax == "llama31" and all(c.error is None for c in calls):
        content = ""
    elif calls and syntax == "react" and all(c.error is None for c in calls):
        step = parse_step(text)  # the thought: the prompt dialect writes the calls back after it
        content = step.thought if step is not None else text
    return Reply(content, calls, None, finish_reason, prompt_tokens, completion_tokens)


def reply_from_server(
    content: str,
    tool_calls: list[dict] | None,
    syntax: str | None,
    reasoning: str | None = None,
    finish_reason: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
) -> Reply:
    """A server's answer: its ``tool_calls`` when it parsed any, else calls read from the text (a server with
    no tool parser for this model returns the calls as text)."""
    if tool_calls and syntax is None:  # raw text wanted: the calls as Hermes tags, which eval's scorers read
        tags = "".join(
            f"\n<tool_call>\n{json.dumps({'name': c.name, 'arguments': c.arguments})}\n</tool_call>"
            for c in from_openai(tool_calls)
        )
        return Reply(content + tags, (), reasoning, finish_reason, prompt_tokens, completion_tokens)
    if tool_calls:
        return Reply(
            content,
            tuple(from_openai(tool_calls)),
            reasoning,
            finish_reason,
            prompt_tokens,
            completion_tokens,
        )
    r = reply_from_text(content, syntax, finish_reason, prompt_tokens, completion_tokens)
    return Reply(r.content, r.calls, reasoning, finish_reason, prompt_tokens, completion_tokens)
