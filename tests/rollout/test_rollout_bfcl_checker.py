"""BFCL multi-turn verdicts against BFCL's own checker: gold and perturbed trajectories (a call dropped, an
argument changed) are scored by our environment and by ``multi_turn_checker`` on the same messages."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("bfcl_eval", reason="pip install --no-deps bfcl-eval==2026.3.23 mpmath")

from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils  # noqa: E402
from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker  # noqa: E402
from bfcl_play import perturbed, play  # noqa: E402

from agentflan.rollout.envs.bfcl_multi_turn import (  # noqa: E402
    BfclMultiTurn,
    live_instances,
)
from agentflan.rollout.envs.bfcl_policies import gold_policy  # noqa: E402


def _bfcl_convert_to_function_call(function_call_list):
    """Verbatim from bfcl_eval/model_handler/utils.py (that module needs tree_sitter, so it is not imported)."""
    if type(function_call_list) == dict:  # noqa: E721
        function_call_list = [function_call_list]
    execution_list = []
    for function_call in function_call_list:
        for key, value in function_call.items():
            if type(value) == str:  # noqa: E721
                value = json.loads(value)
            execution_list.append(f"{key}({','.join([f'{k}={repr(v)}' for k, v in value.items()])})")
    return execution_list


def _bfcl_verdict(task, messages, n, model_name="reference") -> bool:
    """BFCL's own scoring of the same trajectory: the assistant messages' tool_calls per turn and step, in
    BFCL's FC result form, decoded and checked as eval_runner._evaluate_single_multi_turn_entry does."""
    result: list[list] = []
    for m in messages:
        if m["role"] == "user":
            result.append([])
        elif m["role"] == "assistant":
            calls = [{c["function"]["name"]: c["function"]["arguments"]} for c in m.get("tool_calls", [])]
            result[-1].append(calls or m["content"])
    if len(result) != len(task.data["ground_truth"]):
        return False
    decoded = []
    for turn in result:
        steps = []
        for step in turn:
            try:
                calls = _bfcl_convert_to_function_call(step)
            except Exception:
                continue
            if calls:
                steps.append(calls)
        decoded.append(steps)
    entry = {k: task.data[k] for k in ("id", "initial_config", "involved_classes")}
    name = f"{model_name}_{n}"
    try:
        return multi_turn_checker(decoded, task.data["ground_truth"], entry, task.category, name)["valid"]
    finally:
        for key in [k for k in list(multi_turn_utils.__dict__) if k.startswith(name + "_")]:
            del multi_turn_utils.__dict__[key]


def test_verdicts_match_bfcl_checker_on_perturbed_trajectories():
    sample = BfclMultiTurn(limit=25).load_tasks()
    rows = []
    for n, (task, how) in enumerate((t, h) for t in sample for h in ("gold", "drop", "change")):
        policy = gold_policy(task) if how == "gold" else perturbed(task, how)
        verdict, messages, _ = play(BfclMultiTurn().make(task), policy)
        rows.append((task.id, how, verdict.passed, _bfcl_verdict(task, messages, n)))
    mismatched = [r for r in rows if r[2] != r[3]]
    assert not mismatched, mismatched
    assert all(ours for _, how, ours, _ in rows if how == "gold")
    assert sum(not ours for _, how, ours, _ in rows if how != "gold") >= len(sample)  # the changes do fail
    assert live_instances() == 0
