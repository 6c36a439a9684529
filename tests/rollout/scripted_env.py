"""A tiny environment for engine tests: reach a target number with ``add`` calls, then answer in plain text.

Task data: ``target`` (int), ``turns`` (user turns, default 1), and test switches: ``crash_on_step`` (raise
in that step), ``slow_s`` (sleep in every step). Verdict: passed when the total equals the target at the end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from agentflan.calls import ToolCall
from agentflan.rollout.types import Observation, Reply, Task, Verdict

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add an amount to the running total.",
        "parameters": {"type": "object", "properties": {"amount": {"type": "integer"}}, "required": ["amount"]},
    },
}


class CounterEnv:
    max_steps = 6

    def __init__(self, task: Task) -> None:
        self.task = task
        self.total = 0
        self.turns_left = int(task.data.get("turns", 1))
        self.step_limited = False
        self.steps = 0
        self.thread = threading.get_ident()  # every call must come from the thread that made the env

    def _same_thread(self) -> None:
        assert threading.get_ident() == self.thread, "environment used from another thread"

    def reset(self) -> list[dict[str, Any]]:
        return [{"role": "system", "content": "You keep a running total with the add tool."}]

    def tools(self) -> list[dict[str, Any]]:
        return [ADD]

    def next_turn(self) -> list[dict[str, Any]] | None:
        self._same_thread()
        if self.turns_left == 0:
            return None
        self.turns_left -= 1
        return [{"role": "user", "content": f"Make the total {self.task.data['target']}."}]

    def step(self, reply: Reply) -> Observation:
        self._same_thread()
        self.steps += 1
        if self.task.data.get("crash_on_step") == self.steps:
            raise RuntimeError("the executor fell over")
        time.sleep(self.task.data.get("slow_s", 0))
        if not reply.calls:
            return Observation(turn_over=True)
        out = []
        for c in reply.calls:
            if c.error or c.name != "add":
                text = f"error: {c.error or f'unknown tool {c.name}'}"
            else:
                self.total += int(c.arguments["amount"])
                text = str(self.total)
            out.append({"role": "tool", "tool_call_id": c.id, "content": text})
        return Observation(messages=out)

    def step_limit_hit(self) -> None:
        self.step_limited = True

    def verdict(self) -> Verdict:
        passed = self.total == self.task.data["target"] and not self.step_limited
        return Verdict(passed, self.task.category, "" if passed else f"total {self.total}", {"total": self.total})


class Counter:
    name = "counter"

    def __init__(self, tasks: Sequence[dict[str, Any]]) -> None:
        self.tasks = [Task("counter", str(i), t.get("category", "plain"), t) for i, t in enumerate(tasks)]

    def load_tasks(self) -> list[Task]:
        return self.tasks

    def make(self, task: Task) -> CounterEnv:
        return CounterEnv(task)


def gold_policy(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Reply:
    """Add what is missing in one call, then answer."""
    target = int(next(m for m in messages if m["role"] == "user")["content"].split()[-1].rstrip("."))
    totals = [int(m["content"]) for m in messages if m["role"] == "tool" and m["content"].isdigit()]
    total = totals[-1] if totals else 0
    last = messages[-1]
    if last["role"] == "tool" or total == target and last["role"] != "user":
        return Reply(f"The total is {total}.")
    n = sum(1 for m in messages if m["role"] == "assistant")
    return Reply("", (ToolCall("add", {"amount": target - total}, f"call_{n}"),))


def never_call_policy(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Reply:
    return Reply("I cannot do that.")


def looping_policy(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Reply:
    n = sum(1 for m in messages if m["role"] == "assistant")
    return Reply("", (ToolCall("add", {"amount": 0}, f"call_{n}"),))


class ConfiguredCounter(Counter):
    """Stands in for a named environment in CLI tests: takes whatever keys its config section has."""

    def __init__(self, **config: Any) -> None:
        self.config = config
        super().__init__([{"target": i + 1, "category": "even" if i % 2 else "odd"} for i in range(4)])
