"""AgentBench DB on SQLite: protocols, guards, scoring and the measured fidelity of the emulation.

Every episode here is driven by scripted Reply objects (no model), through the loop the contract describes.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter

import pytest

from agentflan.calls import ToolCall
from agentflan.rollout.envs.agentbench_db import (
    AgentBenchDb,
    TaskFileError,
    category_scores,
    compare_results,
    gold_policy,
    never_call_policy,
)
from agentflan.rollout.envs.agentbench_db.mysql_compat import to_sqlite
from agentflan.rollout.envs.agentbench_db.policies import replay_gold
from agentflan.rollout.envs.agentbench_db.sqlite_guard import GuardedDatabase
from agentflan.rollout.types import Reply, Task, Verdict

TASKS = AgentBenchDb().load_tasks()
BY_ID = {t.id: t for t in TASKS}
SELECT_ID, INSERT_ID, UPDATE_ID = "3", "20", "41"


def run(env_factory: AgentBenchDb, task: Task, policy) -> tuple[Verdict, list[dict], str]:
    """The episode loop of rollout/types.py, with a scripted policy in place of a model."""
    env = env_factory.make(task)
    messages = env.reset()
    ending = ""
    while (turn := env.next_turn()) is not None:
        messages += turn
        for _ in range(env.max_steps):
            reply = policy(messages, env.tools())
            messages.append(reply.message())
            obs = env.step(reply)
            messages += obs.messages
            if obs.turn_over or obs.episode_over:
                ending = obs.reason or "answered"
                break
        else:
            env.step_limit_hit()
            ending = "step_limit"
        if ending and ending != "answered":
            break
    return env.verdict(), messages, ending


def scripted(*replies: Reply):
    queue = list(replies)
    return lambda messages, tools: queue.pop(0)


def sql_call(sql: str, k: int = 0) -> Reply:
    return Reply(content="", calls=(ToolCall(name="execute_sql", arguments={"query": sql}, id=f"call_{k}"),))


def commit(answers: list[str]) -> Reply:
    return Reply(
        content="", calls=(ToolCall(name="commit_final_answer", arguments={"answers": answers}, id="c"),)
    )


def text_sql(sql: str) -> Reply:
    return Reply(content=f"Let me look.\nAction: Operation\n```sql\n{sql}\n```")


# --- tasks -----------------------------------------------------------------------------------------------


def test_dev_tasks_load_by_category_and_limit_takes_each_category_in_turn():
    assert Counter(t.category for t in TASKS) == {"SELECT": 20, "INSERT": 20, "UPDATE": 20}
    assert [t.id for t in TASKS] == [str(i) for i in range(60)]
    few = AgentBenchDb(limit=6).load_tasks()
    assert Counter(t.category for t in few) == {"SELECT": 2, "INSERT": 2, "UPDATE": 2}


def test_bad_task_lines_fail_with_file_and_line(tmp_path):
    good = json.dumps(TASKS[0].data)
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(good + "\n{not json\n")
    with pytest.raises(TaskFileError, match=r"bad\.jsonl:2: invalid JSON"):
        AgentBenchDb(bad_json).load_tasks()
    no_hash = dict(BY_ID[INSERT_ID].data)
    del no_hash["answer_md5"]
    missing = tmp_path / "missing.jsonl"
    missing.write_text(good + "\n\n" + json.dumps(no_hash) + "\n")
    with pytest.raises(TaskFileError, match=r"missing\.jsonl:3: a INSERT task needs 'answer_md5'"):
        AgentBenchDb(missing).load_tasks()


# --- the measured emulation ------------------------------------------------------------------------------


def test_gold_replay_reproduces_the_measured_count():
    """Gold SQL replayed on our tables: every INSERT/UPDATE hash equals answer_md5; 5 of 20 SELECT gold
    queries give their label (the 15 others are broken references, see docs/rollout.md). A change in the
    emulation that loses (or wins) a task changes these numbers."""
    rows = [replay_gold(t) for t in TASKS]
    reproduced = Counter(r["category"] for r in rows if r["reproduced"])
    assert reproduced == {"SELECT": 5, "INSERT": 20, "UPDATE": 20}
    assert sorted(int(r["id"]) for r in rows if r["category"] == "SELECT" and r["reproduced"]) == [
        3,
        4,
        7,
        10,
        14,
    ]
    assert all(r["needs_call"] for r in rows)  # no modifying task is already solved by doing nothing


@pytest.mark.parametrize("protocol", ["native", "text"])
def test_gold_policy_passes_every_task(protocol):
    factory = AgentBenchDb(protocol=protocol)
    verdicts = [run(factory, t, gold_policy(t))[0] for t in TASKS]
    assert [v.reason for v in verdicts if not v.passed] == []
    assert category_scores(verdicts) == {
        "SELECT": 1.0,
        "INSERT": 1.0,
        "UPDATE": 1.0,
        "overall_cat_accuracy": 1.0,
    }


@pytest.mark.parametrize(
    ("protocol", "replies", "ending"), [("native", 15, "step_limit"), ("text", 1, "unparseable")]
)
def test_never_calling_scores_zero(protocol, replies, ending):
    factory = AgentBenchDb(protocol=protocol)
    for task in TASKS:
        verdict, messages, end = run(factory, task, never_call_policy)
        assert not verdict.passed, task.id
        assert end == ending and verdict.detail["rounds"] == replies


# --- native protocol -------------------------------------------------------------------------------------


def test_native_sql_error_is_an_observation_and_the_episode_goes_on():
    task = BY_ID[SELECT_ID]
    verdict, messages, ending = run(
        AgentBenchDb(), task, scripted(sql_call("SELEC nonsense"), commit(["26"]))
    )
    errors = [m for m in messages if m["role"] == "tool" and m["tool_call_id"] == "call_0"]
    assert errors[0]["content"].startswith('near "SELEC": syntax error')
    assert verdict.passed and ending == "answered"


def test_native_replies_without_a_call_get_agentbench_notice_and_bad_calls_get_errors():
    env = AgentBenchDb().make(BY_ID[SELECT_ID])
    env.reset(), env.next_turn()
    obs = env.step(Reply(content="thinking"))
    assert obs.messages == [
        {"role": "user", "content": "Internal error: No tool calls found despite finish reason."}
    ]
    assert not obs.episode_over
    calls = (
        ToolCall(name=None, arguments=None, id="a", raw="<tool_call>{", error="unclosed"),
        ToolCall(name="drop_everything", arguments={}, id="b"),
        ToolCall(
            name="execute_sql", arguments={"sql": "SELECT COUNT(*) FROM skyscrapers_in_Columbus"}, id="c"
        ),
    )
    obs = env.step(Reply(content="", calls=calls))
    assert [m["tool_call_id"] for m in obs.messages] == ["a", "b", "c"]
    assert obs.messages[0]["content"].startswith("Error: Failed to parse tool call")
    assert obs.messages[1]["content"] == "Invalid function call. Please call a tool instead."
    assert obs.messages[2]["content"].startswith("[(") and not obs.episode_over


def test_native_step_limit_fails_an_uncommitted_update_even_if_the_table_is_right():
    task = BY_ID[UPDATE_ID]
    gold = task.data["label"][0]
    verdict, _, ending = run(
        AgentBenchDb(max_rounds=3), task, scripted(*[sql_call(gold, k) for k in range(3)])
    )
    assert ending == "step_limit" and not verdict.passed
    assert verdict.detail["table_hash"] == verdict.detail["ground_truth"]  # right table, never committed


# --- text protocol (v0.2) --------------------------------------------------------------------------------


def test_text_prompt_and_answer_follow_v02():
    factory = AgentBenchDb(protocol="text")
    task = BY_ID[SELECT_ID]
    verdict, messages, _ = run(
        factory, task, scripted(text_sql("SELECT 1"), Reply('So.\nAction: Answer\nFinal Answer: ["26"]'))
    )
    assert messages[0]["role"] == "user" and messages[0]["content"].startswith("I will ask you a question")
    assert messages[1] == {"role": "assistant", "content": "Ok."}
    assert messages[2]["content"] == task.data["description"] + "\n" + task.data["add_description"]
    assert messages[4] == {"role": "user", "content": "[(1,)]"}
    assert verdict.passed and verdict.detail["v0.2_match"] is True


def test_text_operation_without_sql_block_ends_the_episode():
    verdict, _, ending = run(
        AgentBenchDb(protocol="text"), BY_ID[SELECT_ID], scripted(Reply("Action: Operation\nSELECT 1"))
    )
    assert ending == "unparseable" and not verdict.passed


def test_text_step_limit_allows_one_answer_after_the_last_operation():
    task = BY_ID[SELECT_ID]
    factory = AgentBenchDb(protocol="text", max_rounds=2)
    ops = [text_sql("SELECT 1"), text_sql("SELECT 2")]
    verdict, _, ending = run(factory, task, scripted(*ops, Reply('x\nFinal Answer: ["26"]')))
    assert ending == "answered" and verdict.passed and verdict.detail["operations"] == 2
    verdict, messages, ending = run(factory, task, scripted(*ops, text_sql("SELECT 3")))
    assert ending == "step_limit" and not verdict.passed
    assert (
        sum(m["role"] == "assistant" for m in messages) == 1 + 3
    )  # "Ok." + three replies, the third not run


def test_text_update_is_hashed_whatever_the_ending():
    """v0.2 computes the hash after the episode, answered or not."""
    task = BY_ID[UPDATE_ID]
    verdict, _, ending = run(
        AgentBenchDb(protocol="text"), task, scripted(text_sql(task.data["label"][0]), Reply("done"))
    )
    assert ending == "unparseable" and verdict.passed


def test_two_episodes_of_one_task_share_nothing():
    factory = AgentBenchDb()
    task = BY_ID[UPDATE_ID]
    first, second = factory.make(task), factory.make(task)
    for env in (first, second):
        env.reset(), env.next_turn()
    first.step(sql_call(task.data["label"][0]))
    first.step(commit([]))
    second.step(commit([]))
    assert first.verdict().passed and not second.verdict().passed
    again = [run(factory, task, gold_policy(task))[0] for _ in range(2)]
    assert again[0] == again[1] and again[0].passed


# --- the guard -------------------------------------------------------------------------------------------


def _db(timeout_s: float = 10.0) -> GuardedDatabase:
    return GuardedDatabase([BY_ID[SELECT_ID].data["table"]], timeout_s=timeout_s)


def test_attach_is_refused_and_creates_no_file(tmp_path):
    target = tmp_path / "x.db"
    db = _db()
    assert "not authorized" in db.execute(f"ATTACH DATABASE '{target}' AS y")
    vacuum = db.execute(f"VACUUM INTO '{tmp_path / 'copy.db'}'")  # VACUUM INTO attaches its target
    assert "denied" in vacuum or "not authorized" in vacuum
    assert "not authorized" in db.execute("SELECT load_extension('/tmp/evil')")
    assert "not authorized" in db.execute("PRAGMA writable_schema = 1")
    assert db.execute("PRAGMA table_info(skyscrapers_in_Columbus)").startswith("[(0, 'Rank'")
    assert os.listdir(tmp_path) == []
    if os.path.exists("/tmp/x.db"):
        pytest.skip("/tmp/x.db existed before this test")
    assert "not authorized" in db.execute("ATTACH DATABASE '/tmp/x.db' AS y")
    assert not os.path.exists("/tmp/x.db")


def test_runaway_recursive_query_stops_within_the_cap():
    db = _db(timeout_s=0.5)
    start = time.monotonic()
    out = db.execute("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r")
    assert time.monotonic() - start < 3.0
    assert out == "Error: SQL execution timed out after 0.5 seconds"
    assert db.execute("SELECT COUNT(*) FROM skyscrapers_in_Columbus") == "[(40,)]"  # still usable


def test_results_are_cut_at_800_characters_like_agentbench():
    db = _db()
    sql = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r LIMIT 300) SELECT n, 'row' FROM r"
    full = str(db.conn.execute(sql).fetchall())
    assert db.execute(sql) == full[:800] + "[TRUNCATED]"
    endless = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n FROM r"
    assert db.execute(endless).endswith("[TRUNCATED]")  # read lazily: an endless result still answers
    assert "too big" in db.execute("SELECT length(randomblob(100000000))")


# --- scoring and the MySQL emulation ---------------------------------------------------------------------


def test_compare_results_follows_agentbench_normalisation():
    assert compare_results(["26.004"], ["26"], "other")  # one number: within 1e-2
    assert not compare_results(["26.02"], ["26"], "other")
    assert compare_results(["b", "a"], ["a", "b", "a"], "other")  # sets
    assert compare_results(["None"], ["none"], "other") and compare_results("[(None,)]", ["0"], "other")
    assert compare_results(["1,429"], ["1429"], "other") and compare_results(["12%"], ["12"], "other")
    assert compare_results(' ["March 19, 1998"]', ["March 19, 1998"], "other")  # v0.2 text answer
    assert not compare_results("[__import__('os').system('touch /tmp/pwned_db')]", ["0"], "other")
    assert not os.path.exists("/tmp/pwned_db")


def test_category_scores_is_the_mean_of_three_categories_absent_ones_zero():
    v = [Verdict(True, "SELECT"), Verdict(False, "SELECT"), Verdict(True, "INSERT")]
    assert category_scores(v) == {"SELECT": 0.5, "INSERT": 1.0, "overall_cat_accuracy": 0.5}


def test_mysql_semantics_on_text_columns():
    db = GuardedDatabase(
        [
            {
                "table_name": "t",
                "table_info": {
                    "columns": [{"name": "n"}, {"name": "s"}],
                    "rows": [["5", "Café"], ["17", "don't"]],
                },
            }
        ]
    )
    assert db.execute("SELECT s FROM t WHERE n < 10") == "[('Café',)]"  # numbers, not '5' < '10' as text
    assert db.execute("SELECT n FROM t WHERE s = 'CAFE'") == "[('5',)]"  # utf8mb4_0900_ai_ci
    assert db.execute("SELECT n FROM t WHERE s LIKE 'caf%'") == "[('5',)]"
    assert db.execute("SELECT n FROM t WHERE s = 'don\\'t'") == "[('17',)]"  # backslash escape
    assert (
        db.execute("SELECT CONCAT(n, '-', s), IF(n > 6, 'big', 'small') FROM t WHERE n = 17")
        == "[(\"17-don't\", 'big')]"
    )
    assert (
        to_sqlite("SELECT 'a < 5' FROM t WHERE x.`n`>=-3", ["n"])
        == "SELECT 'a < 5' FROM t WHERE CAST(x.`n` AS REAL)>=-3"
    )


def test_table_hash_is_capped_and_handles_big_tables():
    import hashlib

    rows = [[str(i), f"v{i}"] for i in range(3000)]
    table = {"table_name": "t", "table_info": {"columns": [{"name": "n"}, {"name": "s"}], "rows": rows}}
    db = GuardedDatabase([table], timeout_s=0.5)
    db.execute("SELECT 1")
    time.sleep(0.6)  # past the last statement's deadline: our own hash query must not be cut by it
    short = sorted(hashlib.md5(f"{n},{s}".encode()).hexdigest()[:5] for n, s in rows)
    assert (
        db.tables_hash() == hashlib.md5(",".join(short).encode()[:1024]).hexdigest()
    )  # group_concat_max_len
    db.execute("DROP TABLE t")
    endless = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n, n FROM r"
    assert db.execute(f"CREATE VIEW t(n, s) AS {endless}") == "[]"
    start = time.monotonic()
    assert db.tables_hash() is None and time.monotonic() - start < 3.0
