"""BFCL multi-turn environment: scripted policies (no model) through BFCL's own executors and checker."""

from __future__ import annotations

import dataclasses
import gc
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("bfcl_eval", reason="pip install --no-deps bfcl-eval==2026.3.23 mpmath")


from bfcl_play import perturbed, play  # noqa: E402

from agentflan.calls import ToolCall  # noqa: E402
from agentflan.rollout.envs.bfcl_multi_turn import (  # noqa: E402
    CATEGORIES,
    BfclMultiTurn,
    UnsafeCall,
    category_scores,
    live_instances,
    render_call,
)
from agentflan.rollout.envs.bfcl_policies import gold_policy, never_call_policy  # noqa: E402
from agentflan.rollout.types import Reply, Verdict  # noqa: E402

# BFCL's ground truth for this entry calls `tail` at turn 1, but BFCL holds `tail` out until turn 3: the
# environment never executes a function that is not offered in the turn, so replaying that ground truth fails.
CALLS_HELD_OUT_FUNCTION = {"multi_turn_miss_func_49"}


@pytest.fixture(scope="module")
def tasks():
    return BfclMultiTurn().load_tasks()


def _task(tasks, task_id):
    return next(t for t in tasks if t.id == task_id)


def test_tasks_are_the_800_v4_entries_and_limit_is_deterministic(tasks):
    assert len(tasks) == 800
    assert {c: sum(t.category == c for t in tasks) for c in CATEGORIES} == dict.fromkeys(CATEGORIES, 200)
    assert len({t.id for t in tasks}) == 800
    assert all(
        t.env == "bfcl_multi_turn" and len(t.data["question"]) == len(t.data["ground_truth"]) for t in tasks
    )
    json.dumps([t.data for t in tasks[:5]])  # serialisable
    small = BfclMultiTurn(categories=["multi_turn_base", "multi_turn_miss_func"], limit=4).load_tasks()
    assert [t.id for t in small] == [
        t.id for t in BfclMultiTurn(["multi_turn_base", "multi_turn_miss_func"], 4).load_tasks()
    ]
    assert [t.id for t in small] == [f"multi_turn_base_{i}" for i in (0, 50, 100, 150)] + [
        f"multi_turn_miss_func_{i}" for i in (0, 50, 100, 150)
    ]
    with pytest.raises(ValueError, match="unknown categories"):
        BfclMultiTurn(categories=["multi_turn_composite"])


@pytest.mark.slow  # ~6 s: every BFCL multi-turn entry replayed
def test_gold_replay_passes_every_entry(tasks):
    factory = BfclMultiTurn()
    start = time.perf_counter()
    verdicts = {t.id: play(factory.make(t), gold_policy(t))[0] for t in tasks}
    elapsed = time.perf_counter() - start
    failed = {i for i, v in verdicts.items() if not v.passed}
    assert failed == CALLS_HELD_OUT_FUNCTION, {i: verdicts[i].reason for i in failed}
    assert "execution results" in verdicts["multi_turn_miss_func_49"].reason
    scores = category_scores(verdicts.values())
    assert (
        scores["multi_turn_base"]
        == scores["multi_turn_miss_param"]
        == scores["multi_turn_long_context"]
        == 1.0
    )
    assert scores["overall"] == pytest.approx((3 + 199 / 200) / 4)
    assert live_instances() == 0  # every episode's backend instances (and the checker's) are gone
    print(f"gold replay: {len(tasks)} entries in {elapsed:.1f} s")


def test_gold_one_call_per_reply_passes_too(tasks):
    sample = BfclMultiTurn(limit=10).load_tasks()
    for task in sample:
        verdict, messages, _ = play(BfclMultiTurn().make(task), gold_policy(task, calls_per_reply=1))
        calls = sum(len(m.get("tool_calls", [])) for m in messages if m["role"] == "assistant")
        assert calls == sum(len(turn) for turn in task.data["ground_truth"])
        assert verdict.passed, (task.id, verdict.reason)
        assert [len(steps) for steps in verdict.detail["calls"]] == [
            len(t) for t in task.data["ground_truth"]
        ]


def test_never_calling_scores_zero(tasks):
    factory = BfclMultiTurn()
    verdicts = [play(factory.make(t), never_call_policy)[0] for t in tasks]
    assert not any(v.passed for v in verdicts)
    assert category_scores(verdicts) == {**dict.fromkeys(CATEGORIES, 0.0), "overall": 0.0}
    assert {v.detail["error_type"] for v in verdicts} == {"multi_turn:empty_turn_model_response"}
    assert live_instances() == 0


def test_miss_func_functions_come_back_at_the_turn_bfcl_names(tasks):
    task = _task(tasks, "multi_turn_miss_func_0")
    (turn,) = task.data["missed_function"]  # {"3": ["sort"]}
    env = BfclMultiTurn().make(task)
    env.reset()
    seen = []
    while (messages := env.next_turn()) is not None:
        seen.append(({t["function"]["name"] for t in env.tools()}, messages))
        env.step(Reply(content="ok"))
    env.verdict()
    held = set(task.data["missed_function"][turn])
    assert all(not held & names for names, _ in seen[: int(turn)])
    assert all(held <= names for names, _ in seen[int(turn) :])
    assert seen[int(turn)][1] == [
        {"role": "user", "content": "I have updated some more functions you can choose from. What about now?"}
    ]


def _sentinel_attacks(sentinel):
    run = f"__import__('os').system('touch {sentinel}')"
    return [
        ToolCall(name=f"__import__('os').system('touch {sentinel}')", arguments={}, id="a1"),
        ToolCall(name="__import__('os').system", arguments={"command": f"touch {sentinel}"}, id="a2"),
        ToolCall(name="eval", arguments={"source": run}, id="a3"),
        ToolCall(name="execute_multi_turn_func_call", arguments={"func_call_list": [run]}, id="a4"),
        ToolCall(name="cd", arguments={f"folder={run},x": "a"}, id="a5"),
        ToolCall(name="cd", arguments={"folder": f"'); {run} #"}, id="a6"),
        ToolCall(name="cd", arguments={"folder": f'"); {run}; ("'}, id="a7"),
        ToolCall(name="cd", arguments={"folder": f"ls({run})\\'"}, id="a8"),
        ToolCall(name="cd", arguments={"folder": {"k')+" + run + "+('": [run]}}, id="a9"),
    ]


class _EvilStr(str):
    """A str whose repr is code (no JSON parser makes one; a careless caller might)."""

    def __repr__(self):
        return f"__import__('os').system('touch {self}')"


def test_injection_attempts_never_run(tasks, tmp_path):
    sentinel = tmp_path / "pwned"
    task = _task(tasks, "multi_turn_base_0")
    env = BfclMultiTurn().make(task)
    env.reset()
    env.next_turn()
    attacks = _sentinel_attacks(sentinel)
    attacks.append(ToolCall(name="cd", arguments={"folder": _EvilStr(sentinel)}, id="a10"))
    obs = env.step(Reply(content="", calls=tuple(attacks)))
    out = {m["tool_call_id"]: m["content"] for m in obs.messages}
    assert not sentinel.exists()
    for call_id in ("a1", "a2", "a3", "a4"):
        assert "is not one of the tools offered in this turn" in out[call_id]
    assert "is not an identifier" in out["a5"]
    assert "not a JSON value" in out["a10"]
    for call_id in ("a6", "a7", "a8", "a9"):  # ran as cd() with a strange folder name, which cd refuses
        assert out[call_id].lower().startswith(('{"error"', "error during execution")), out[call_id]
    assert env.verdict().passed is False
    assert live_instances() == 0


def test_a_held_out_function_is_not_run_before_its_turn(tasks):
    task = _task(tasks, "multi_turn_miss_func_0")  # `sort` is held out until turn 3
    env = BfclMultiTurn().make(task)
    env.reset()
    env.next_turn()
    obs = env.step(Reply(content="", calls=(ToolCall(name="sort", arguments={"file_name": "x"}, id="c"),)))
    assert obs.messages[0]["content"].startswith("Error during execution: 'sort' is not one of the tools")
    assert env.verdict().detail["calls"] == [[]]


def test_render_call_maps_underscored_names_and_reprs_values():
    call = ToolCall(name="math_add", arguments={"a": 1, "b": "x'y", "c": [1.5, None, True]}, id="1")
    assert render_call(call, {"math_add": "math.add"}) == 'math.add(a=1,b="x\'y",c=[1.5, None, True])'
    for bad in ({"a": float("nan")}, {"a": (1, 2)}, {"a": {1: 2}}, {"lambda": 1}, {"a b": 1}):
        with pytest.raises(UnsafeCall):
            render_call(dataclasses.replace(call, arguments=bad), {"math_add": "math.add"})


def test_a_reply_that_does_not_decode_ends_the_turn_and_runs_nothing(tasks):
    task = _task(tasks, "multi_turn_base_0")
    env = BfclMultiTurn().make(task)
    env.reset()
    env.next_turn()
    good = ToolCall(name="mkdir", arguments={"dir_name": "made"}, id="g")
    broken = ToolCall(name="cd", arguments=None, id="b", raw='{"folder": ', error="arguments are not JSON")
    obs = env.step(Reply(content="", calls=(good, broken)))
    assert obs.turn_over and not obs.episode_over
    assert [m["tool_call_id"] for m in obs.messages] == ["g"]
    assert "not executed" in obs.messages[0]["content"]
    assert env.verdict().detail["calls"] == [[]]


def _always_pwd(messages, tools):
    return Reply(content="", calls=(ToolCall(name="pwd", arguments={}, id=f"p{len(messages)}"),))


def test_step_limit_force_quits_as_bfcl_does(tasks):
    task = _task(tasks, "multi_turn_base_0")
    env = BfclMultiTurn().make(task)
    assert env.max_steps == 21  # BFCL asks again after 20 call steps; a call in that reply force-quits
    verdict, messages, ending = play(env, _always_pwd)
    assert ending == "step_limit"
    assert sum(m["role"] == "assistant" for m in messages) == 21
    assert sum(m["role"] == "user" for m in messages) == 1  # the later turns are never played
    assert not verdict.passed and verdict.detail["error_type"] == "multi_turn:force_terminated"
    assert verdict.detail["force_quit"] is True

    # 20 call steps then a plain reply: no force-quit
    def twenty_then_stop(messages, tools):
        since_user = len(messages) - max(i for i, m in enumerate(messages) if m["role"] == "user")
        return _always_pwd(messages, tools) if since_user <= 40 else Reply(content="done")

    verdict, messages, ending = play(BfclMultiTurn().make(task), twenty_then_stop)
    assert ending == "answered" and verdict.detail["turns"] == len(task.data["question"])
    assert verdict.detail["force_quit"] is False

    # BFCL still scores an entry force-quit in its last turn (all turns were played): extra pwd()s are harmless
    gold = gold_policy(task)
    last = len(task.data["question"]) - 1

    def gold_then_loop_at_the_end(messages, tools):
        turn = sum(m["role"] == "user" for m in messages) - 1
        reply = gold(messages, tools)
        return _always_pwd(messages, tools) if turn == last and not reply.calls else reply

    verdict, _, ending = play(BfclMultiTurn().make(task), gold_then_loop_at_the_end)
    assert ending == "step_limit" and verdict.detail["force_quit"] is True
    assert verdict.passed, verdict.reason

    # a smaller limit from the factory
    verdict, messages, ending = play(BfclMultiTurn(max_steps=3).make(task), _always_pwd)
    assert ending == "step_limit" and sum(m["role"] == "assistant" for m in messages) == 4


def test_the_same_entry_twice_at_once_gives_the_same_verdicts(tasks):
    task = _task(tasks, "multi_turn_base_3")
    policies = {"gold": gold_policy(task), "drop": perturbed(task, "drop"), "never": never_call_policy}
    runs = {k: play(BfclMultiTurn().make(task), p) for k, p in policies.items()}
    alone = {k: run[0] for k, run in runs.items()}
    assert alone["gold"].passed and not alone["drop"].passed

    # interleaved step by step in one thread: shared backend state would show at once
    envs = [BfclMultiTurn().make(task) for _ in range(2)]
    logs = [e.reset() for e in envs]
    while True:
        turns = [e.next_turn() for e in envs]
        if turns[0] is None:
            assert turns[1] is None
            break
        for log, turn in zip(logs, turns, strict=True):
            log += turn
        open_ = [True, True]
        while any(open_):
            for i, (env, log) in enumerate(zip(envs, logs, strict=True)):
                if open_[i]:
                    reply = policies["gold"](log, env.tools())
                    log.append(reply.message())
                    obs = env.step(reply)
                    log += obs.messages
                    open_[i] = not obs.turn_over
    assert logs == [runs["gold"][1]] * 2  # each saw only its own state (the tool results tell)
    assert [e.verdict() for e in envs] == [alone["gold"]] * 2

    # and in threads, many at once
    barrier = threading.Barrier(6)

    def run(kind: str) -> tuple[Verdict, list]:
        barrier.wait()
        return play(BfclMultiTurn().make(task), policies[kind])[:2]

    kinds = ["gold", "drop", "never"] * 2
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(run, kinds))
    assert results == [runs[k][:2] for k in kinds]
    assert live_instances() == 0


def test_category_scores_is_the_unweighted_mean_of_categories():
    verdicts = [Verdict(True, "a"), Verdict(False, "a"), Verdict(True, "b")] + [Verdict(False, "c")] * 8
    assert category_scores(verdicts) == {"a": 0.5, "b": 1.0, "c": 0.0, "overall": 0.5}
    assert category_scores([]) == {}


def test_an_episode_dropped_before_its_verdict_leaves_no_instances(tasks):
    env = BfclMultiTurn().make(_task(tasks, "multi_turn_long_context_0"))
    env.reset()
    env.next_turn()
    env.step(_always_pwd([], []))
    assert live_instances() > 0
    del env
    gc.collect()
    assert live_instances() == 0
