"""Scripted policies as a server sees them: one model name for every episode, so a policy finds its task from
the conversation alone.

A task is found by its transcript: the user turns and tool results so far, and the names of the tools offered
(what the environment wrote; the assistant's own text and where the tools are shown depend on the prompt
dialect, these do not). The index is built by
playing each task's gold policy once in-process; a served gold episode then sees exactly those transcripts.
``ambiguous`` records any request whose candidate tasks would reply differently (none should).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from agentflan.data.react import render_react_calls
from agentflan.rollout.types import EnvironmentFactory, Reply, Task

Policy = Callable[[list[dict[str, Any]], list[dict[str, Any]]], Reply]


def offered(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> tuple[str, ...]:
    """The names of the tools offered: natively (``tools=``), or listed in the system prompt (ReAct dialect)."""
    if tools:
        return tuple(sorted(t["function"]["name"] for t in tools))
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    if system.startswith("You can call the following tools:\n"):
        return tuple(sorted(f["name"] for f in json.loads(system.split("\n")[1])))
    return ()


def transcript_key(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> tuple:
    said = tuple((m["role"], m.get("content") or "") for m in messages if m["role"] in ("user", "tool"))
    return said, offered(messages, tools)


def play(env: Any, policy: Policy) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """One episode without a model (the loop of :mod:`agentflan.rollout.types`): every request it made
    (the conversation so far and the tools offered)."""
    messages, over, requests = list(env.reset()), False, []
    while not over and (turn := env.next_turn()) is not None:
        messages += turn
        for _ in range(env.max_steps):
            requests.append((list(messages), list(env.tools())))
            reply = policy(messages, env.tools())
            messages.append(reply.message())
            obs = env.step(reply)
            messages += obs.messages
            over = obs.episode_over
            if obs.turn_over or obs.episode_over:
                break
        else:
            env.step_limit_hit()
            over = True
    env.verdict()
    return requests


class GoldServer:
    """``policy_for`` for :class:`stub_server.StubServer`: every task's gold policy behind one model name."""

    def __init__(
        self,
        work: Iterable[tuple[EnvironmentFactory, Task, Callable[[Task], Policy]]],
        serve_as: Callable[[Policy], Policy] = lambda p: p,
    ) -> None:
        """``serve_as`` rewrites each gold policy for serving (:func:`as_react`); the index is built with the
        policy itself, since the transcripts (user turns, tool results) are the same either way."""
        self.policies: dict[str, Policy] = {}
        self.index: dict[tuple, set[str]] = {}
        self.ambiguous: list[tuple[str, ...]] = []
        self.unknown: list[list[dict[str, Any]]] = []  # conversations no task's gold reaches
        for factory, task, gold in work:
            key = f"{factory.name}:{task.id}"
            self.policies[key] = gold(task)
            for messages, tools in play(factory.make(task), self.policies[key]):
                self.index.setdefault(transcript_key(messages, tools), set()).add(key)
            self.policies[key] = serve_as(self.policies[key])

    def __call__(self, model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Reply:
        candidates = sorted(self.index.get(transcript_key(messages, tools), ()))
        if not candidates:
            self.unknown.append(messages)
            return Reply(content="I do not know this conversation.")
        replies = [self.policies[c](messages, tools) for c in candidates]
        if len({json.dumps(r.message(), sort_keys=True) for r in replies}) > 1:
            self.ambiguous.append(tuple(candidates))
        return replies[0]


def as_react(policy: Callable[..., Reply]) -> Callable[..., Reply]:
    """A policy that writes its calls as ReAct text (a model trained with ``call_format: react | chat``)."""

    def react(*args: Any) -> Reply:
        reply = policy(*args)
        if not reply.calls:
            return Reply(content=reply.content)
        pairs = [(c.name, json.dumps(c.arguments, ensure_ascii=False)) for c in reply.calls]
        return Reply(content=render_react_calls("I will call the tools for this step.", pairs))

    return react
