"""``agentflan rollout`` end to end against a stub OpenAI server: report, trajectories, MLflow metrics, and
``keep=passed`` trajectories read back by ``agentflan data`` with nothing quarantined."""

from __future__ import annotations

import json

import pytest
from scripted_env import gold_policy
from stub_server import StubServer

from agentflan.cli import main
from agentflan.config import load_config
from agentflan.rollout import run as rollout_run


@pytest.fixture
def counter_as_db(monkeypatch):
    """The scripted counter stands in for `agentbench_db` (its environment lands from another branch)."""
    monkeypatch.setitem(rollout_run.ENVS, "agentbench_db", ("scripted_env", "ConfiguredCounter"))


def test_rollout_writes_report_trajectories_and_kept_data(counter_as_db, tmp_path):
    out = tmp_path / "run"
    with StubServer({"teacher": gold_policy}) as server:
        code = main([
            "rollout", "pipelines/local.yaml", f"output_dir={out}", "rollout.envs=[agentbench_db]",
            f"rollout.backend={{kind: openai, model: teacher, base_url: '{server.base_url}'}}",
            "rollout.keep=passed",
        ])  # fmt: skip
    assert code == 0
    report = json.loads((out / "rollout/report.json").read_text())
    env = report["envs"]["counter"]
    assert env["overall"]["value"] == 1.0 and env["overall"]["n"] == 4
    assert set(env["categories"]) == {"odd", "even"} and env["categories"]["odd"]["n"] == 2
    assert env["endings"]["answered"] == 4 and env["endings"]["env_error"] == 0
    assert env["steps"]["mean"] == 2 and report["kept"] == 4
    assert "| odd | 1.000 |" in (out / "rollout/report.md").read_text()
    lines = [json.loads(x) for x in (out / "rollout/trajectories.jsonl").read_text().splitlines()]
    assert {x["id"] for x in lines} == {"0", "1", "2", "3"}
    assert all(x["passed"] and x["reason"] == "answered" and x["env"] == "counter" for x in lines)
    assert any(m["role"] == "tool" for m in lines[0]["messages"])

    import mlflow

    cfg = load_config("pipelines/local.yaml", [f"output_dir={out}"])
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    run = client.get_run(report["mlflow_run_id"])
    assert run.data.metrics["rollout.counter.odd"] == 1.0 and "rollout.counter.odd.ci_low" in run.data.metrics
    assert cfg.rollout.keep == "none"

    # the kept file is training data as it is
    data_out = tmp_path / "data"
    assert main([
        "data", "pipelines/local.yaml", f"output_dir={data_out}", "data.engine=local",
        f"data.inputs=[{{path: {out / 'rollout/kept.jsonl'}, source: teacher}}]",
        "data.negatives.enabled=false", "data.mixture.ratios={}",
    ]) == 0  # fmt: skip
    manifest = json.loads((data_out / "manifest.json").read_text())
    read = next(s for s in manifest["stages"] if s["in"])
    assert read["in"] == 4 and sum(s["quarantined"] for s in manifest["stages"]) == 0
    assert manifest["rows"]["corpus"] >= 4


def test_rollout_without_envs_is_a_usage_error(tmp_path, capsys):
    assert main(["rollout", "pipelines/local.yaml", f"output_dir={tmp_path}"]) == 2


def test_a_rollout_only_spec_needs_no_inputs(tmp_path):
    spec = tmp_path / "hosted.yaml"
    spec.write_text(
        "rollout:\n  envs: [agentbench_db]\n"
        "  backend: {kind: openai, model: gpt-4o, base_url: 'https://api.openai.com/v1', max_in_flight: 32}\n"
    )
    cfg = load_config(spec)
    assert cfg.data.inputs == [] and cfg.rollout.backend.max_in_flight == 32
    assert main(["data", str(spec), f"output_dir={tmp_path}"]) == 2  # but `agentflan data` needs them
