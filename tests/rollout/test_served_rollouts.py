"""Scripted policies behind an OpenAI-compatible stub, end to end through ``agentflan rollout`` with a spec that
has no data section, against the real environments: BFCL multi-turn (an even spread of each category; every one of the 800 entries
is replayed in-process by test_rollout_bfcl) and AgentBench DB (the 60 dev tasks). Every episode of a run is served under one model name; the policies find their task from the conversation
(:mod:`served_policies`). Then the kept trajectories go through ``agentflan data`` with nothing quarantined."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("bfcl_eval", reason="pip install --no-deps bfcl-eval==2026.3.23 mpmath")

from served_policies import GoldServer, as_react  # noqa: E402
from stub_server import StubServer  # noqa: E402

from agentflan.cli import main  # noqa: E402
from agentflan.rollout.envs import bfcl_policies  # noqa: E402
from agentflan.rollout.envs.agentbench_db import AgentBenchDb  # noqa: E402
from agentflan.rollout.envs.agentbench_db import policies as db_policies  # noqa: E402
from agentflan.rollout.envs.bfcl_multi_turn import CATEGORIES, BfclMultiTurn  # noqa: E402
from agentflan.rollout.types import Reply  # noqa: E402


def _spec(tmp_path: Path, base_url: str, extra: str = "") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec = tmp_path / "served.yaml"
    spec.write_text(
        f"output_dir: {tmp_path / 'out'}\n"
        "rollout:\n"
        "  envs: [bfcl_multi_turn, agentbench_db]\n"
        f"  backend: {{kind: openai, model: scripted, base_url: '{base_url}', max_in_flight: 16, max_retries: 3, retry_backoff_s: 0.05}}\n"
        "  max_live: 64\n" + extra
    )
    return spec


def _outputs(tmp_path: Path) -> tuple[dict, list[dict]]:
    out = tmp_path / "out/rollout"
    report = json.loads((out / "report.json").read_text())
    lines = [json.loads(x) for x in (out / "trajectories.jsonl").read_text().splitlines()]
    return report, lines


def _data_round_trip(tmp_path: Path, kept: Path) -> dict:
    """``agentflan data`` on a kept file: its manifest (every row read, nothing quarantined asserted by callers)."""
    data_out = tmp_path / "data"
    assert main([
        "data", "pipelines/local.yaml", f"output_dir={data_out}", "data.engine=local",
        f"data.inputs=[{{path: {kept}, source: teacher}}]",
        "data.negatives.enabled=false", "data.mixture.ratios={}",
    ]) == 0  # fmt: skip
    return json.loads((data_out / "manifest.json").read_text())


def _tool_results_answer_calls(messages: list[dict]) -> bool:
    """Every tool_call of the trajectory has its tool message, and every tool message answers a call."""
    called = [c["id"] for m in messages if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    answered = [m["tool_call_id"] for m in messages if m["role"] == "tool"]
    return bool(called) and sorted(called) == sorted(answered)


def _serve_gold(tmp_path: Path, name: str, work: list, overrides: list[str]) -> tuple[dict, list[dict], Path]:
    """One ``agentflan rollout`` of ``work``'s gold policies behind one model name, keeping what passes."""
    server_policy = GoldServer(work)
    with StubServer() as server:
        server.policy_for = server_policy
        spec = _spec(tmp_path / name, server.base_url)
        assert main(["rollout", str(spec), "rollout.keep=passed", *overrides]) == 0
    assert server_policy.unknown == [] and server_policy.ambiguous == []
    assert all(r.get("tools") for r in server.requests)  # native: tools= offered to the server
    report, lines = _outputs(tmp_path / name)
    return report, lines, tmp_path / name / "out/rollout/kept.jsonl"


# Served per BFCL category: 40 of its 200 entries, evenly spread (rollout.bfcl_multi_turn.limit).
PER_CATEGORY = 40


@pytest.mark.slow  # ~20 s: 160 BFCL entries and 60 DB tasks played over HTTP
def test_gold_passes_bfcl_entries_and_every_db_task_and_the_kept_file_is_training_data(tmp_path):
    """One run per BFCL category: across categories some entries open with the same question and tools but
    different ground truth (base / long_context / miss_param 180), which no server could tell apart."""
    kept: list[dict] = []
    bfcl_lines = 0
    for category in CATEGORIES:
        bfcl = BfclMultiTurn(categories=(category,), limit=PER_CATEGORY)
        work = [(bfcl, t, bfcl_policies.gold_policy) for t in bfcl.load_tasks()]
        overrides = [
            "rollout.envs=[bfcl_multi_turn]",
            f"rollout.bfcl_multi_turn.categories=[{category}]",
            f"rollout.bfcl_multi_turn.limit={PER_CATEGORY}",
        ]
        report, lines, kept_file = _serve_gold(tmp_path, category, work, overrides)
        b = report["envs"]["bfcl_multi_turn"]
        assert {c: (iv["n"], iv["value"]) for c, iv in b["categories"].items()} == {
            category: (PER_CATEGORY, 1.0)
        }
        assert b["endings"]["answered"] == PER_CATEGORY and report["model"] == "scripted"
        assert sorted(x["id"] for x in lines) == sorted(t.id for t in bfcl.load_tasks())
        assert all(x["passed"] and _tool_results_answer_calls(x["messages"]) for x in lines)
        bfcl_lines += len(lines)
        kept += [json.loads(x) for x in kept_file.read_text().splitlines()][:3]
    assert bfcl_lines == 4 * PER_CATEGORY

    db = AgentBenchDb(protocol="native")
    work = [(db, t, db_policies.gold_policy) for t in db.load_tasks()]
    report, lines, kept_file = _serve_gold(tmp_path, "db", work, ["rollout.envs=[agentbench_db]"])
    d = report["envs"]["agentbench_db"]
    assert {c: (iv["n"], iv["value"]) for c, iv in d["categories"].items()} == {
        "SELECT": (20, 1.0), "INSERT": (20, 1.0), "UPDATE": (20, 1.0)
    }  # fmt: skip
    assert d["overall_cat_accuracy"] == 1.0 and d["endings"]["answered"] == 60
    assert d["steps"]["max"] == 2  # the gold SQL, then the commit
    assert len(lines) == 60 and all(_tool_results_answer_calls(x["messages"]) for x in lines)
    assert all(x["verdict"]["detail"]["protocol"] == "native" for x in lines)
    assert [m["role"] for m in lines[0]["messages"]][:2] == ["system", "user"]
    assert report["kept"] == 60
    kept += [json.loads(x) for x in kept_file.read_text().splitlines()][:3]

    # kept trajectories of every category and of DB are training data as they are
    sample = tmp_path / "kept_sample.jsonl"
    sample.write_text("".join(json.dumps(r) + "\n" for r in kept))
    manifest = _data_round_trip(tmp_path, sample)
    read = next(s for s in manifest["stages"] if s["in"])
    assert read["in"] == len(kept) == 15 and sum(s["quarantined"] for s in manifest["stages"]) == 0


def test_never_calling_scores_zero_on_bfcl_and_on_db(tmp_path):
    """Served: 10 entries per BFCL category, 6 DB tasks (two per category); in-process, test_rollout_bfcl and
    test_rollout_agentbench_db play every entry and task this way."""
    never = Reply(content="I cannot help with that.")
    extra = "  bfcl_multi_turn: {limit: 10}\n  agentbench_db: {limit: 6}\n"
    with StubServer({"scripted": lambda messages, tools: never}) as server:
        assert main(["rollout", str(_spec(tmp_path, server.base_url, extra))]) == 0
    assert len(server.requests) >= 40 + 6 * 15  # every entry's first turn asked; each DB task 15 rounds
    report, lines = _outputs(tmp_path)
    b, d = report["envs"]["bfcl_multi_turn"], report["envs"]["agentbench_db"]
    assert b["n"] == 40 and b["overall"]["value"] == 0 and b["endings"]["answered"] == 40
    assert all(iv["value"] == 0 for iv in b["categories"].values()) and len(b["categories"]) == 4
    # native DB: AgentBench's "no tool calls" notice each round, 15 rounds, then the episode ends uncommitted
    assert d["n"] == 6 and d["overall"]["value"] == 0 and d["endings"]["step_limit"] == 6
    assert d["steps"]["mean"] == 15
    assert not any(m.get("tool_calls") for x in lines for m in x["messages"])


def test_a_react_model_sees_its_tools_in_the_prompt_and_passes_both_envs(tmp_path):
    """rollout.call_format react (a model trained with call_format chat | react): BFCL's tools go into the
    system prompt, calls come back as ReAct text; AgentBench DB plays v0.2's text protocol."""
    bfcl, db = BfclMultiTurn(limit=3), AgentBenchDb(protocol="text", limit=6)
    work = [(bfcl, t, bfcl_policies.gold_policy) for t in bfcl.load_tasks()]
    work += [(db, t, db_policies.gold_policy) for t in db.load_tasks()]
    server_policy = GoldServer(work, serve_as=as_react)
    extra = "  call_format: react\n  bfcl_multi_turn: {limit: 3}\n  agentbench_db: {limit: 6}\n"
    with StubServer() as server:
        server.policy_for = server_policy
        assert main(["rollout", str(_spec(tmp_path, server.base_url, extra)), "rollout.keep=passed"]) == 0
    assert server_policy.unknown == [] and server_policy.ambiguous == []
    assert not any("tools" in r for r in server.requests)  # never offered natively

    report, lines = _outputs(tmp_path)
    assert report["envs"]["bfcl_multi_turn"]["overall"]["value"] == 1.0
    assert report["envs"]["bfcl_multi_turn"]["overall"]["n"] == 12
    assert report["envs"]["agentbench_db"]["overall"]["value"] == 1.0
    assert report["envs"]["agentbench_db"]["overall"]["n"] == 6
    assert all(x["verdict"]["detail"]["protocol"] == "text" for x in lines if x["env"] == "agentbench_db")

    # what the model saw: the entry's tools listed in the system prompt, its earlier calls as ReAct text
    bfcl_requests = [r for r in server.requests if r["messages"][0]["role"] == "system"]
    first = bfcl_requests[0]["messages"][0]["content"]
    assert first.startswith("You can call the following tools:\n[{") and "Action Input: <arguments>" in first
    entry = next(x for x in lines if x["env"] == "bfcl_multi_turn")
    names = {t["function"]["name"] for t in entry["tools"]}
    assert any(all(f'"name": "{n}"' in r["messages"][0]["content"] for n in names) for r in bfcl_requests)
    later = [m for r in bfcl_requests for m in r["messages"] if m["role"] == "assistant" and m["content"]]
    assert any("\nAction: " in m["content"] and "\nAction Input: {" in m["content"] for m in later)
    assert not any("tool_calls" in m or "tool_call_id" in m for r in server.requests for m in r["messages"])
    # the trajectory keeps the OpenAI form: calls with ids, the thought as content, tool results with ids
    assert all(_tool_results_answer_calls(x["messages"]) for x in lines if x["env"] == "bfcl_multi_turn")
    db_text = next(x for x in lines if x["env"] == "agentbench_db")
    assert any("Action: Operation\n```sql" in m["content"] for m in db_text["messages"][3:])

    kept = tmp_path / "out/rollout/kept.jsonl"
    manifest = _data_round_trip(tmp_path, kept)
    read = next(s for s in manifest["stages"] if s["in"])
    assert read["in"] == 18 and sum(s["quarantined"] for s in manifest["stages"]) == 0
