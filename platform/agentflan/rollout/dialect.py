"""The prompt dialect of a model trained on text calls (``data.call_format: chat | react``).

Such a model was trained with a plain chat template (``chatml``, ``llama2``, ``agentflan``) that renders no
``tools=`` and no ``tool_calls``: offered natively, its tools would never reach the prompt, and its earlier calls
would vanish from the history. So a request to it is rewritten, at the moment it is sent, into the form the
corpus taught it (:mod:`agentflan.data.align`, the ReAct variant and the format-following samples) and that
eval prompts it with (:func:`agentflan.eval.sources.prompt_messages`):

- the tools offered go into the system prompt, as ``TOOLS_SYSTEM_PROMPT`` lists them, followed by the ReAct
  instruction (``FORMAT_INSTRUCTIONS["react"]``); an environment's own system prompt comes after them;
- an assistant message's ``tool_calls`` are written as ReAct text, ``Thought`` then one ``Action`` /
  ``Action Input`` pair per call (:func:`agentflan.data.react.render_react_calls`, as ``align`` writes the
  calls of native records in their ReAct variant);
- a ``tool`` message stays a ``tool`` turn without its id: the observation side of the template (a ``tool``
  turn in ChatML, a user turn in Llama-2), as ToolBench's observations and those of native records are in the
  corpus's ReAct variant;
- replies are read with the ``react`` syntax. A ``chat``-format model is prompted in ReAct too: the
  chat-aligned form needs a harness asking elicit questions ("Which tool will you use next?") that no
  benchmark asks, while the ReAct share (``data.react_share``) and the format-following samples taught it ReAct.

The trajectory keeps the OpenAI form (``tool_calls`` with ids, ``tool`` messages with ``tool_call_id``); only
the prompt is rewritten. A request that offers no tools (AgentBench DB's ``text`` protocol) is sent as it is,
and its reply is text the environment reads by its own protocol: no calls are read from it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from agentflan.data.align import FORMAT_INSTRUCTIONS, TOOLS_SYSTEM_PROMPT
from agentflan.data.react import parse_step, render_react_calls

TEXT_SYNTAXES = frozenset({"chat", "react"})  # models prompted in this dialect; the rest take tools natively


def is_text(syntax: str | None) -> bool:
    return syntax in TEXT_SYNTAXES


def tools_system_prompt(tools: Sequence[Mapping[str, Any]]) -> str:
    """The tool list and the ReAct instruction, as eval's prompts and the format-following samples write them
    (function schemas without OpenAI's ``{"type": "function"}`` wrapper)."""
    functions = [t.get("function", t) if t.get("type") == "function" else t for t in tools]
    listed = TOOLS_SYSTEM_PROMPT.format(tools=json.dumps(functions, ensure_ascii=False))
    return listed + "\n" + FORMAT_INSTRUCTIONS["react"]


def _assistant_text(m: Mapping[str, Any]) -> str:
    content = m.get("content") or ""
    calls = m.get("tool_calls") or []
    if not calls or parse_step(content) is not None:  # no calls, or the text holds its actions already
        return content
    pairs = []
    for c in calls:
        fn = c.get("function", c)
        args = fn.get("arguments")
        pairs.append((fn.get("name") or "", args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)))
    return render_react_calls(content.strip(), pairs)


def react_messages(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None
) -> list[dict[str, Any]]:
    """``messages`` (OpenAI form) as a text-call model reads them: tools in the system prompt, calls as ReAct
    text, tool results as ``tool`` turns."""
    out: list[dict[str, Any]] = []
    own_system = [m.get("content") or "" for m in messages if m.get("role") == "system"]
    system = [tools_system_prompt(tools)] if tools else []
    if system or own_system:
        out.append({"role": "system", "content": "\n\n".join([*system, *own_system])})
    for m in messages:
        role = m.get("role")
        if role == "system":
            continue
        if role == "assistant":
            out.append({"role": "assistant", "content": _assistant_text(m)})
        elif role == "tool":
            out.append({"role": "tool", "content": m.get("content") or ""})
        else:
            out.append({"role": role, "content": m.get("content") or ""})
    return out


def request(
    syntax: str | None, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None
) -> tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]] | None, str | None]:
    """What a backend sends and how it reads the reply: ``(messages, tools, syntax)``. Native syntaxes (and
    ``None``, eval's raw text) pass through; text syntaxes get the ReAct prompt, no ``tools=``, and replies
    read as ``react`` (not at all when no tools were offered)."""
    if not is_text(syntax):
        return messages, tools, syntax
    if not tools:
        return messages, None, None
    return react_messages(messages, tools), None, "react"
