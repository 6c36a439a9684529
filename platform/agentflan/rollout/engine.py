"""The episode loop: every live episode that waits for the model goes to it together, then environments step.

Episodes move through three kinds of work, each a future the loop waits on:

1. **env work** (start, a step, the verdict) runs on that episode's own thread. One thread per episode keeps
   everything an environment holds on the thread that made it (an in-memory SQLite connection refuses any
   other), and a slow or hanging step delays that episode alone: the others keep stepping and generating.
2. **model work**: episodes that are ready are sent to the backend together, as one batch (``hf``: split over
   its actors and generated as batches; ``openai``: concurrent requests). While the HF backend generates, the
   episodes that become ready wait and go together in the next batch (``backend.max_batches``).
3. An exception in an environment ends that episode with ``env_error`` (its verdict is a failure that names
   the exception); a request the backend could not answer ends it with ``backend_error`` or
   ``context_overflow``. Nothing an episode does fails the run.

Each episode follows :mod:`agentflan.rollout.types`: a user turn ends when the environment says so (a reply
without a call, a committed answer), the episode when the last turn is over; ``max_steps`` replies in one turn
end it with ``step_limit`` (the environment is told, and scores it its way).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from agentflan.backends import Backend, BackendFailure
from agentflan.rollout.types import Environment, EnvironmentFactory, Observation, Reply, Task, Verdict


@dataclass
class EpisodeResult:
    """One finished episode: what the report counts and what ``trajectories.jsonl`` holds."""

    env: str
    id: str
    category: str
    reason: str  # an EndReason
    verdict: Verdict
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]  # the tools offered at the last step (a superset where turns add some)
    steps: int = 0
    prompt_tokens: int = 0  # summed over the episode's requests
    completion_tokens: int = 0
    detail: str = ""  # why an env_error / backend_error / context_overflow happened
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        v = self.verdict
        return {
            "env": self.env,
            "id": self.id,
            "category": self.category,
            "passed": v.passed,
            "reason": self.reason,
            "verdict": {"passed": v.passed, "category": v.category, "reason": v.reason, "detail": v.detail},
            "steps": self.steps,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
            "messages": self.messages,
            "tools": self.tools,
        }


@dataclass
class _Episode:
    factory: EnvironmentFactory
    task: Task
    thread: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1))
    env: Environment | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    turn_steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reason: str | None = None  # set when the episode is over (then only the verdict is left)
    detail: str = ""
    started: float = field(default_factory=time.monotonic)

    # --- env work: on the episode's own thread ---

    def start(self) -> None:
        self.env = self.factory.make(self.task)
        self.messages = list(self.env.reset())
        self._next_turn()

    def _next_turn(self) -> None:
        assert self.env is not None
        turn = self.env.next_turn()
        if turn is None:
            self.reason = "answered"
            return
        self.messages += turn
        self.turn_steps = 0
        self.tools = list(self.env.tools())

    def step(self, reply: Reply, context_length: int | None, max_new_tokens: int | None) -> None:
        assert self.env is not None
        self.steps += 1
        self.turn_steps += 1
        self.prompt_tokens += reply.prompt_tokens or 0
        self.completion_tokens += reply.completion_tokens or 0
        self.messages.append(reply.message())
        if _overflowed(reply, context_length, max_new_tokens):
            self.reason = "context_overflow"
            self.detail = "reply cut at the context's end with no call that can be read"
            return
        obs: Observation = self.env.step(reply)
        self.messages += obs.messages
        if obs.episode_over:
            self.reason = obs.reason or "answered"
        elif obs.turn_over:
            self._next_turn()
        elif self.turn_steps >= self.env.max_steps:
            self.env.step_limit_hit()
            self.reason = "step_limit"
        else:
            self.tools = list(self.env.tools())

    def verdict(self) -> Verdict:
        if self.env is None:
            return Verdict(False, self.task.category, f"environment failed to start: {self.detail}")
        return self.env.verdict()

    # --- bookkeeping: on the loop's thread ---

    def fail(self, reason: str, error: BaseException | str) -> None:
        self.reason = reason
        self.detail = error if isinstance(error, str) else f"{type(error).__name__}: {error}"

    def result(self, verdict: Verdict) -> EpisodeResult:
        self.thread.shutdown(wait=False)
        return EpisodeResult(
            env=self.factory.name,
            id=self.task.id,
            category=self.task.category,
            reason=str(self.reason),
            verdict=verdict,
            messages=self.messages,
            tools=self.tools,
            steps=self.steps,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            detail=self.detail,
            seconds=time.monotonic() - self.started,
        )


def _overflowed(reply: Reply, context_length: int | None, max_new_tokens: int | None) -> bool:
    """Cut at the length limit with nothing that can be executed, and cut by the context, not by
    ``max_new_tokens``: the conversation no longer fits, so another step would only be cut again. Where the
    context is unknown (a server), a reply shorter than ``max_new_tokens`` was cut by it; a reply without
    token counts is taken as cut by it."""
    if reply.finish_reason != "length" or any(c.error is None for c in reply.calls):
        return False
    if reply.prompt_tokens is None or reply.completion_tokens is None:
        return True
    if context_length is not None:
        return reply.prompt_tokens + reply.completion_tokens >= context_length
    return max_new_tokens is None or reply.completion_tokens < max_new_tokens


def run_episodes(
    work: Iterable[tuple[EnvironmentFactory, Task]],
    backend: Backend,
    max_live: int = 16,
    on_done: Callable[[EpisodeResult], None] = lambda r: None,
    gather_s: float = 0.05,
) -> list[EpisodeResult]:
    """Run every (environment, task) episode, ``max_live`` at a time; results in the order they finish.
    ``gather_s``: how long an idle model waits for episodes still stepping to join its next batch."""
    queue = deque(work)
    results: list[EpisodeResult] = []
    pending: dict[Future, tuple[str, _Episode]] = {}  # future -> (kind, episode)
    ready: list[_Episode] = []
    batches: dict[int, int] = {}  # open model batch -> replies still to come
    batch_of: dict[Future, int] = {}
    live = 0
    context_length = getattr(backend, "context_length", None)
    max_new_tokens = getattr(backend, "max_new_tokens", None)

    def env_work(ep: _Episode, kind: str, fn: Callable[..., Any], *args: Any) -> None:
        pending[ep.thread.submit(fn, *args)] = (kind, ep)

    def after_env(ep: _Episode) -> None:
        if ep.reason is None:
            ready.append(ep)
        else:
            env_work(ep, "verdict", ep.verdict)

    while queue or pending or ready:
        while queue and live < max_live:
            factory, task = queue.popleft()
            ep = _Episode(factory, task)
            live += 1
            env_work(ep, "start", ep.start)
        if ready and len(batches) < backend.max_batches:
            futures = backend.submit([(list(ep.messages), list(ep.tools) or None) for ep in ready])
            batch = max(batches, default=-1) + 1
            batches[batch] = len(futures)
            for f, ep in zip(futures, ready, strict=True):
                pending[f] = ("model", ep)
                batch_of[f] = batch
            ready = []
        if not pending:
            continue
        done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        stepping = [f for f, (kind, _) in pending.items() if kind != "model" and f not in done]
        if stepping and len(batches) < backend.max_batches:
            # The model is idle: give the episodes still stepping a moment to join the next batch, rather
            # than send one episode now and the rest a whole generation later. A slow step is not waited for.
            done |= wait(stepping, timeout=gather_s, return_when="ALL_COMPLETED")[0]
        for f in done:
            kind, ep = pending.pop(f)
            if kind == "model":
                b = batch_of.pop(f)
                batches[b] -= 1
                if not batches[b]:
                    del batches[b]
                answer = f.result()
                if isinstance(answer, BackendFailure):
                    ep.fail(answer.reason, answer.detail)
                    env_work(ep, "verdict", ep.verdict)
                else:
                    env_work(ep, "step", ep.step, answer, context_length, max_new_tokens)
            elif kind == "verdict":
                if (error := f.exception()) is not None:
                    ep.fail("env_error", error)
                    verdict = Verdict(False, ep.task.category, f"checker raised: {ep.detail}")
                else:
                    verdict = f.result()
                results.append(ep.result(verdict))
                live -= 1
                on_done(results[-1])
            elif (error := f.exception()) is not None:  # start or step raised
                ep.fail("env_error", error)
                results.append(ep.result(Verdict(False, ep.task.category, f"environment error: {ep.detail}")))
                live -= 1
                on_done(results[-1])
            else:
                after_env(ep)
    return results
