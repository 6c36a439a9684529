"""An episode of a BFCL multi-turn environment played by a scripted policy, without a model: the episode loop of
agentflan.rollout.types, and a gold policy with one change, shared by the BFCL environment tests."""

from __future__ import annotations

import dataclasses

from agentflan.rollout.envs.bfcl_policies import gold_calls
from agentflan.rollout.types import Reply


def play(env, policy):
    """The episode loop of agentflan.rollout.types, without a model."""
    messages = env.reset()
    ending = "answered"
    while (turn := env.next_turn()) is not None:
        messages += turn
        for _ in range(env.max_steps):
            reply = policy(messages, env.tools())
            messages.append(reply.message())
            obs = env.step(reply)
            messages += obs.messages
            if obs.episode_over:
                ending = obs.reason or ending
            if obs.turn_over or obs.episode_over:
                break
        else:
            ending = "step_limit"
            env.step_limit_hit()
    return env.verdict(), messages, ending


def perturbed(task, how: str):
    """Gold with one change: the first turn with calls loses its last call, or the first call with arguments
    gets its first argument changed."""
    turns = [list(t) for t in gold_calls(task)]
    if how == "drop":
        turns[next(i for i, calls in enumerate(turns) if calls)].pop()
    else:
        t, i, call = next(
            (t, i, c) for t, calls in enumerate(turns) for i, c in enumerate(calls) if c.arguments
        )
        key = next(iter(call.arguments))
        value = call.arguments[key]
        if isinstance(value, bool):
            new = not value
        elif isinstance(value, (int, float)):
            new = value + 1
        else:
            new = value + "_x" if isinstance(value, str) else [*value, "x"] if isinstance(value, list) else {}
        turns[t][i] = dataclasses.replace(call, arguments={**call.arguments, key: new})

    def policy(messages, tools):
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        turn, step = len(users) - 1, sum(m["role"] == "assistant" for m in messages[users[-1] :])
        return (
            Reply(content="", calls=tuple(turns[turn])) if step == 0 and turns[turn] else Reply(content="ok")
        )

    return policy
