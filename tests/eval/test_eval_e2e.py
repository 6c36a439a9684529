"""End to end: a tiny model trained here through Ray Train, evaluated through the CLI."""

from __future__ import annotations

import json

import pytest

from agentflan.cli import main
from agentflan.config import load_config


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory, shared_data):
    from agentflan.data.pipeline import run_data
    from agentflan.train.recipe import run_train

    out = tmp_path_factory.mktemp("e2e")
    overrides = [
        f"output_dir={out}",
        "data.engine=local",
        f"data.inputs=[{{path: {shared_data}/react/fireact_hotpotqa.jsonl, source: react}}, "
        f"{{path: {shared_data}/general/fastchat_dummy_conversation.json, source: sharegpt, kind: general}}]",
        f"data.negatives.tool_pool_files=[{shared_data}/toolbench/G1_query.json]",
        "train.seq_len=256",
        "train.global_batch_size=4",
        "train.max_steps=2",
    ]
    cfg = load_config("pipelines/local.yaml", overrides)
    run_data(cfg)
    summary = run_train(cfg)
    return out, overrides, summary


def test_eval_cli_on_a_trained_model(trained, shared_data, capsys):
    out, overrides, summary = trained
    args = [
        "eval",
        "pipelines/local.yaml",
        *overrides,
        f"model={summary['model_dir']}",
        f"eval.data_dir={shared_data}",
        "eval.max_per_case={a: 2, b: 2, c: 4, d: 4}",
        "eval.max_hotpot=2",
        "eval.max_tool_use_per_source=2",
        "eval.max_new_tokens=8",
    ]
    assert main(args) == 0
    report = json.loads((out / "eval/report.json").read_text())
    per_case = report["agent_h"]["per_case"]
    assert {c: per_case[c]["n"] for c in "abcd"} == {"a": 2, "b": 2, "c": 4, "d": 4}
    for key in ("h_react", "h_general", "h_score", "missed_call_rate", "combined"):
        assert key in report["agent_h"]
    assert report["tool_use"]["overall"]["n"] == 4
    assert set(report["validation_loss"]) >= {"reasoning", "general"}
    assert all(v["loss"] > 0 for v in report["validation_loss"].values())
    assert "## Agent-H" in (out / "eval/report.md").read_text()
    replies = (out / "eval/replies.jsonl").read_text().splitlines()
    assert len(replies) == 2 + 2 + 4 + 4 + 4

    # disjoint from training: no eval query is a user turn of the corpus
    import pyarrow.parquet as pq

    from agentflan.eval.sources import normalize_query

    eval_queries = {
        normalize_query(q) for q in pq.read_table(out / "eval/agent_h.parquet").column("query").to_pylist()
    }
    corpus = pq.read_table(out / "corpus").to_pylist()
    train_queries = {
        normalize_query(m["content"]) for r in corpus for m in r["messages"] if m["role"] == "user"
    }
    assert not eval_queries & train_queries

    # metrics land in the run that trained the model
    from agentflan.tracking import client

    cfg = load_config("pipelines/local.yaml", overrides)
    metrics = client(cfg).get_run(summary["run_id"]).data.metrics
    assert "agent_h.h_score" in metrics and "val_loss.reasoning" in metrics
    assert "mlflow run" in capsys.readouterr().out


def test_eval_without_a_model_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", "pipelines/local.yaml", f"output_dir={tmp_path}"]) == 2
    assert "no model at" in capsys.readouterr().err
