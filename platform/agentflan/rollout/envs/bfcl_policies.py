"""Scripted BFCL multi-turn policies, with no model: replaying BFCL's ground truth, and never calling.

A policy is ``policy(messages, tools) -> Reply``: it reads where the conversation is from the OpenAI messages
alone (the turn is the number of user messages so far; the step, the assistant replies since the last one), so
the same function can sit behind an OpenAI-compatible stub server.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING

from agentflan.calls import ToolCall
from agentflan.rollout.types import Reply, Task

Policy = Callable[[list[dict[str, Any]], list[dict[str, Any]]], Reply]
DONE = "I have completed the request."


@functools.cache
def _parameters(class_name: str) -> dict[str, list[str]]:
    """Public method -> its parameter names, for one backend class (to name positional ground-truth args)."""
    cls = getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[class_name]), class_name)
    return {
        name: [p for p in inspect.signature(method).parameters if p != "self"]
        for name, method in inspect.getmembers(cls, predicate=inspect.isfunction)
        if not name.startswith("_")
    }


def _parse_call(text: str, parameters: dict[str, list[str]], call_id: str) -> ToolCall:
    """One ground-truth call string (``cd(folder='x')``, ``sort('a.pdf')``) as a JSON-argument ToolCall."""
    node = ast.parse(text, mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"ground truth {text!r} is not a plain call")
    name = node.func.id
    names = parameters.get(name)
    if names is None or len(node.args) > len(names):
        raise ValueError(f"ground truth {text!r}: no backend method takes these arguments")
    arguments = {names[i]: ast.literal_eval(a) for i, a in enumerate(node.args)}
    arguments |= {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
    return ToolCall(name=name.replace(".", "_"), arguments=arguments, id=call_id, raw=text)


def gold_calls(task: Task) -> list[list[ToolCall]]:
    """Per turn, BFCL's ground-truth calls for ``task`` as tool calls (ids ``gold_<turn>_<i>``)."""
    parameters: dict[str, list[str]] = {}
    for class_name in task.data["involved_classes"]:  # a later class wins a shared name, as in BFCL's mapping
        parameters |= _parameters(class_name)
    return [
        [_parse_call(text, parameters, f"gold_{t}_{i}") for i, text in enumerate(turn)]
        for t, turn in enumerate(task.data["ground_truth"])
    ]


def _position(messages: list[dict[str, Any]]) -> tuple[int, int]:
    """(turn, step): user messages so far - 1, and assistant replies since the last user message."""
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users:
        return -1, 0
    return len(users) - 1, sum(1 for m in messages[users[-1] + 1 :] if m.get("role") == "assistant")


def gold_policy(task: Task, calls_per_reply: int | None = None) -> Policy:
    """Replays BFCL's ground truth: in each turn, the turn's ground-truth calls in BFCL's order (all in one reply,
    BFCL's single step per turn, or ``calls_per_reply`` per reply), then a plain-text reply that ends the turn."""
    plan: list[list[Reply]] = []
    for turn in gold_calls(task):
        size = calls_per_reply or max(len(turn), 1)
        plan.append([Reply(content="", calls=tuple(turn[i : i + size])) for i in range(0, len(turn), size)])

    def policy(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Reply:
        turn, step = _position(messages)
        replies = plan[turn] if 0 <= turn < len(plan) else []
        return replies[step] if step < len(replies) else Reply(content=DONE)

    return policy


def never_call_policy(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Reply:
    """Answers every turn in plain text, never calling a tool."""
    return Reply(content="I cannot help with that.")
