"""Scripted policies for end-to-end tests: no model, the same replies every time.

A policy is ``policy(messages, tools) -> Reply``: it sees the conversation so far and the tools offered, as a
server would, so the lead can serve it behind an OpenAI-compatible stub. With tools offered it speaks the
``native`` protocol (calls); without, v0.2's ``text`` protocol (``Action: ...`` lines).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from agentflan.calls import ToolCall
from agentflan.rollout.envs.agentbench_db.scoring import MODIFYING
from agentflan.rollout.types import Reply, Task

Policy = Callable[[list[dict[str, Any]], list[dict[str, Any]]], Reply]


def gold_sql(task: Task) -> str | None:
    """The task's reference SQL: ``sql.query`` where given, else (INSERT / UPDATE rows of the dev set) the
    statement in ``label``."""
    entry = task.data
    sql = entry.get("sql")
    if isinstance(sql, dict) and isinstance(sql.get("query"), str):
        return sql["query"]
    label = entry.get("label")
    if entry["type"][0] in MODIFYING and isinstance(label, list) and label and isinstance(label[0], str):
        return label[0]
    return None


def gold_answer(task: Task) -> list[str]:
    """What the gold policy commits: the label for SELECT; anything for a modifying task (it is not read)."""
    if task.data["type"][0] in MODIFYING:
        return []
    return [str(v) for v in task.data["label"]]


def _acted(messages: list[dict[str, Any]], native: bool) -> bool:
    for m in messages:
        if m.get("role") != "assistant":
            continue
        if native and m.get("tool_calls"):
            return True
        if not native and "Action: Operation" in (m.get("content") or ""):
            return True
    return False


def gold_policy(task: Task) -> Policy:
    """Replays the gold SQL once, then commits the gold answer."""
    sql, answers = gold_sql(task), gold_answer(task)

    def policy(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Reply:
        native = bool(tools)
        if sql is not None and not _acted(messages, native):
            if native:
                call = ToolCall(name="execute_sql", arguments={"query": sql}, id="call_gold_sql")
                return Reply(content="I will run the reference query.", calls=(call,))
            return Reply(content=f"I will run the reference query.\nAction: Operation\n```sql\n{sql}\n```")
        if native:
            call = ToolCall(name="commit_final_answer", arguments={"answers": answers}, id="call_gold_answer")
            return Reply(content="Committing the answer.", calls=(call,))
        return Reply(
            content=f"Done.\nAction: Answer\nFinal Answer: {json.dumps(answers, ensure_ascii=False)}"
        )

    return policy


def never_call_policy(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Reply:
    """Replies in prose, never calling a tool nor writing an action."""
    return Reply(content="I am not able to look at the database, sorry.")


def replay_gold(task: Task, timeout_s: float = 10.0) -> dict[str, Any]:
    """Run the task's gold SQL on a fresh copy of its table and check what AgentBench would check: the rows
    against ``label`` (SELECT) or the table's hash against ``answer_md5`` (INSERT / UPDATE).

    This measures the emulation: a gold statement that fails here either fails on MySQL too (a broken
    reference) or shows a MySQL/SQLite difference (see docs/rollout.md)."""
    from agentflan.rollout.envs.agentbench_db.scoring import compare_results, expected_hash
    from agentflan.rollout.envs.agentbench_db.sqlite_guard import GuardedDatabase
    from agentflan.rollout.envs.agentbench_db.tasks import tables_of

    sql, kind = gold_sql(task), task.data["type"][0]
    db = GuardedDatabase(tables_of(task.data), timeout_s=timeout_s)
    try:
        before = db.tables_hash()
        result = db.execute(sql) if sql is not None else "no gold SQL"
        if kind in MODIFYING:
            want = expected_hash(task.data["answer_md5"]) if task.data.get("answer_md5") else None
            got = db.tables_hash()
            reproduced = want is not None and got is not None and compare_results(got, want, kind)
            needs_call = before != want
        else:
            reproduced = compare_results(result, task.data["label"], kind)
            needs_call = True
    finally:
        db.close()
    return {
        "id": task.id,
        "category": task.category,
        "type": kind,
        "sql": sql,
        "result": result,
        "reproduced": reproduced,
        "needs_call": needs_call,
    }
