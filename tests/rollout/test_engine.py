"""The episode loop against scripted environments and scripted policies (no model): batching, endings,
isolation, and the OpenAI backend against a stub server."""

from __future__ import annotations

import time
from concurrent.futures import Future

import pytest
from scripted_env import Counter, gold_policy, looping_policy, never_call_policy
from stub_server import ContextOverflow, StubServer

from agentflan.backends import BackendFailure, make_backend
from agentflan.config import BackendConfig
from agentflan.rollout.engine import run_episodes
from agentflan.rollout.types import Reply


class PolicyBackend:
    """Answers in this process with a policy; records the size of every batch it is given."""

    context_length = None
    syntax = None

    def __init__(self, policy, max_batches: int = 1, delay_s: float = 0.0) -> None:
        self.policy, self.max_batches, self.delay_s = policy, max_batches, delay_s
        self.batches: list[int] = []

    def submit(self, requests):
        self.batches.append(len(requests))
        time.sleep(self.delay_s)
        out = []
        for messages, tools in requests:
            f: Future = Future()
            f.set_result(self.policy(list(messages), list(tools or [])))
            out.append(f)
        return out

    def close(self) -> None:
        pass


def run(tasks, policy, max_live=16, **kw):
    env = Counter(tasks)
    results = run_episodes([(env, t) for t in env.load_tasks()], PolicyBackend(policy, **kw), max_live)
    return {r.id: r for r in results}


def test_every_waiting_episode_goes_to_the_model_together():
    backend = PolicyBackend(gold_policy)
    env = Counter([{"target": i + 1} for i in range(16)])
    results = run_episodes([(env, t) for t in env.load_tasks()], backend, max_live=16)
    assert all(r.verdict.passed and r.reason == "answered" for r in results)
    assert all(r.steps == 2 for r in results)  # a call, then the answer
    # 16 episodes x 2 steps in 2 batches of 16 (env starts finish at slightly different times: allow a split)
    assert sum(backend.batches) == 32 and len(backend.batches) <= 4 and max(backend.batches) >= 8


def test_one_at_a_time_when_max_live_is_one():
    backend = PolicyBackend(gold_policy)
    env = Counter([{"target": 3}, {"target": 4}])
    run_episodes([(env, t) for t in env.load_tasks()], backend, max_live=1)
    assert backend.batches == [1, 1, 1, 1]


def test_messages_hold_calls_and_tool_results():
    [r] = run([{"target": 5}], gold_policy).values()
    roles = [m["role"] for m in r.messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    call = r.messages[2]["tool_calls"][0]
    assert call["function"] == {"name": "add", "arguments": '{"amount": 5}'}
    assert r.messages[3] == {"role": "tool", "tool_call_id": call["id"], "content": "5"}
    assert r.tools and r.tools[0]["function"]["name"] == "add"


def test_multi_turn_episode_plays_every_turn():
    [r] = run([{"target": 2, "turns": 3}], gold_policy).values()
    assert r.reason == "answered" and [m["role"] for m in r.messages].count("user") == 3


def test_a_crashing_environment_fails_its_episode_only():
    results = run([{"target": 1}, {"target": 2, "crash_on_step": 1}, {"target": 3}], gold_policy)
    assert results["1"].reason == "env_error" and not results["1"].verdict.passed
    assert "RuntimeError: the executor fell over" in results["1"].detail
    assert results["0"].verdict.passed and results["2"].verdict.passed


def test_step_limit_ends_the_episode_and_the_environment_is_told():
    [r] = run([{"target": 1}], looping_policy).values()
    assert r.reason == "step_limit" and r.steps == 6 and not r.verdict.passed


def test_never_calling_scores_zero():
    results = run([{"target": 1}, {"target": 2}], never_call_policy)
    assert all(r.reason == "answered" and not r.verdict.passed for r in results.values())


def test_a_reply_cut_at_the_context_with_nothing_to_execute_is_an_overflow():
    [r] = run([{"target": 1}], lambda m, t: Reply("Let me think about", finish_reason="length")).values()
    assert r.reason == "context_overflow"


def test_a_slow_episode_does_not_hold_the_others_back():
    """One episode's step sleeps 1 s; the 7 others finish long before it (its step runs on its own thread)."""
    order = []
    env = Counter([{"target": 1, "slow_s": 1.0}] + [{"target": 1}] * 7)
    results = run_episodes(
        [(env, t) for t in env.load_tasks()], PolicyBackend(gold_policy), 8, lambda r: order.append(r.id)
    )
    assert order[-1] == "0" and all(r.verdict.passed for r in results)


def test_the_same_task_twice_at_once_gives_the_same_verdict():
    env = Counter([{"target": 7}])
    [task] = env.load_tasks()
    results = run_episodes([(env, task)] * 4, PolicyBackend(gold_policy), 4)
    assert [r.verdict.detail for r in results] == [{"total": 7}] * 4


# --- the openai backend, against a stub OpenAI-compatible server ---


def openai_backend(server: StubServer, model: str, **kw):
    cfg = BackendConfig(kind="openai", model=model, base_url=server.base_url, retry_backoff_s=0.01, **kw)
    return make_backend(cfg, "hermes")


@pytest.mark.parametrize(("policy", "passed"), [("gold", True), ("never", False)])
def test_scripted_policies_through_the_openai_backend(policy, passed):
    with StubServer({"gold": gold_policy, "never": never_call_policy}, delay_s=0.05) as server:
        backend = openai_backend(server, policy, max_in_flight=8)
        env = Counter([{"target": i} for i in range(1, 13)])
        results = run_episodes([(env, t) for t in env.load_tasks()], backend, 12)
        backend.close()
    assert [r.verdict.passed for r in results] == [passed] * 12
    assert 1 < server.max_in_flight <= 8  # concurrent, never above max_in_flight
    sent = server.requests[0]
    assert sent["tools"][0]["function"]["name"] == "add" and sent["temperature"] == 0
    if passed:  # the server's tool_calls came back as calls, and the tool results went out again
        assert any(m["role"] == "tool" for req in server.requests for m in req["messages"])


def test_server_context_errors_and_outages_end_episodes_with_their_reason():
    def policy(messages, tools):
        raise ContextOverflow

    with StubServer({"m": policy}) as server:
        backend = openai_backend(server, "m")
        [answer] = [f.result() for f in backend.submit([([{"role": "user", "content": "hi"}], None)])]
        env = Counter([{"target": 1}])
        [r] = run_episodes([(env, t) for t in env.load_tasks()], backend, 1)
    assert isinstance(answer, BackendFailure) and answer.reason == "context_overflow"
    assert r.reason == "context_overflow" and "maximum context length" in r.detail
    down = make_backend(BackendConfig(kind="openai", model="m", base_url="http://127.0.0.1:9/v1", max_retries=0), None)
    [r] = run_episodes([(env, env.load_tasks()[0])], down, 1)
    assert r.reason == "backend_error" and not r.verdict.passed
