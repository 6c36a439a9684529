"""The contract between the episode loop, the model backends and the environments.

Kept apart so that an environment can be written and tested without any model (a scripted policy builds
:class:`Reply` objects by hand), and the loop without any benchmark (verl's agent loop keeps the episode
apart from the server that generates and from the tools that execute, for the same reason).

One episode = one task of one environment::

    env = ENV.make(task)                  # fresh state: nothing shared with any other episode
    messages = env.reset()                # system prompt (if any); tools come from env.tools()
    while (turn := env.next_turn()) is not None:      # user turns (BFCL has several; DB has one)
        messages += turn
        for step in range(env.max_steps):             # BFCL: 20 per turn; DB: 15 rounds
            reply = backend.generate(messages, tools=env.tools())   # batched across live episodes
            messages.append(reply.message())
            obs = env.step(reply)          # executes reply.calls (or reads reply.content: text protocols)
            messages += obs.messages       # tool messages (native) or a user message (text protocols)
            if obs.turn_over or obs.episode_over: break
        else: ending = "step_limit"        # the environment is told through env.step_limit_hit()
    verdict = env.verdict()                # the benchmark's own checker, on the final state
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from agentflan.calls import ToolCall

# Why an episode ended. Every episode ends with exactly one of these; the report counts them.
EndReason = Literal[
    "answered",  # the model finished its last user turn (replied without a call, or committed an answer)
    "step_limit",  # max_steps replies in one user turn without finishing it
    "unparseable",  # the environment gave up on replies it could not read (where its protocol says so)
    "context_overflow",  # the conversation no longer fits the model's context (or the server said so)
    "env_error",  # the environment raised: that episode ends, the others go on
    "backend_error",  # the model could not be reached after the backend's retries
]
END_REASONS: tuple[str, ...] = EndReason.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Reply:
    """One model reply. ``calls`` are already parsed, by :mod:`agentflan.calls` for the template in use
    (or read from a server's ``tool_calls``); an unparseable call is a ToolCall with ``error`` set."""

    content: str
    calls: tuple[ToolCall, ...] = ()
    reasoning: str | None = None
    finish_reason: str | None = None  # "length": the reply was cut at max_new_tokens / the context
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def message(self) -> dict[str, Any]:
        """The assistant message in OpenAI form (``tool_calls`` with ids, arguments as JSON text)."""
        import json

        msg: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning:
            msg["reasoning_content"] = self.reasoning
        good = [c for c in self.calls if c.error is None and c.arguments is not None]
        if good:
            msg["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)},
                }
                for c in good
            ]
        return msg


@dataclass
class Observation:
    """What the environment returns for one reply."""

    messages: list[dict[str, Any]] = field(default_factory=list)  # role "tool" (with tool_call_id) or "user"
    turn_over: bool = False  # this user turn is finished (e.g. the model replied without a call)
    episode_over: bool = False  # the whole episode is finished (e.g. DB: an answer was committed)
    reason: str | None = None  # an EndReason when episode_over ends it early ("unparseable", ...)


@dataclass(frozen=True)
class Verdict:
    """The checker's judgement of one finished episode."""

    passed: bool
    category: str  # BFCL: multi_turn_base / miss_func / ...; DB: SELECT / INSERT / UPDATE (AgentBench's type)
    reason: str = ""  # why it failed (the checker's own words where it has them)
    detail: dict[str, Any] = field(default_factory=dict)  # anything the report or a reviewer needs


@dataclass(frozen=True)
class Task:
    """One benchmark item, as loaded from the benchmark's own files (JSON-serialisable ``data``)."""

    env: str
    id: str
    category: str
    data: dict[str, Any]


class Environment(Protocol):
    """One episode's environment. Made fresh per episode (``make(task)``); holds all of that episode's state,
    so parallel or repeated episodes of the same task never share anything."""

    max_steps: int  # replies allowed per user turn

    def reset(self) -> list[dict[str, Any]]:
        """Messages that open the conversation (a system prompt), before the first user turn."""
        ...

    def tools(self) -> list[dict[str, Any]]:
        """The OpenAI tool schemas offered now (they may change between turns: BFCL miss_func)."""
        ...

    def next_turn(self) -> list[dict[str, Any]] | None:
        """The next user turn's messages, or None when every turn has been played."""
        ...

    def step(self, reply: Reply) -> Observation:
        """Act on one reply: execute its calls (never trusting them) and say whether the turn is over."""
        ...

    def step_limit_hit(self) -> None:
        """The loop stopped this turn at max_steps (BFCL counts it against the entry)."""
        ...

    def verdict(self) -> Verdict:
        """Score the episode with the benchmark's checker. Called once, after the last turn."""
        ...


class EnvironmentFactory(Protocol):
    """An environment kind: loads its tasks and makes one fresh environment per episode."""

    name: str  # "bfcl_multi_turn" | "agentbench_db"

    def load_tasks(self) -> Sequence[Task]: ...

    def make(self, task: Task) -> Environment: ...
