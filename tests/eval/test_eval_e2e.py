"""End to end: the session's tiny model trained through Ray Train, evaluated through the CLI."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from agentflan.cli import main
from agentflan.config import load_config
from agentflan.data.pipeline import read_corpus
from agentflan.eval.quality import is_degenerate
from agentflan.eval.stats import wilson
from agentflan.markers import has_react_words, has_tool_phrases

SAMPLE_BFCL = "platform/agentflan/sample_data/eval/bfcl"


def _one_by_one_loss(cfg, model_path, records, heldout_samples):
    """The held-out loss the simple way: every (record, capability) sample alone through the model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentflan.train.loss import weighted_token_loss

    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    out = {}
    for cap, samples in heldout_samples(cfg, AutoTokenizer.from_pretrained(model_path), records).items():
        total, count = 0.0, 0
        for s in samples:
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([s.input_ids]), use_cache=False).logits
            loss_sum, n = weighted_token_loss(logits, torch.tensor([s.labels]), torch.tensor([s.weights]))
            total, count = total + float(loss_sum), count + int(n)
        if count:
            out[cap] = {"loss": total / count, "tokens": count}
    return out


@pytest.fixture(scope="module")
def trained(trained_zero2, small_job):
    """The session's model (tests/conftest.py: 8 steps, 2 Ray Train workers, ZeRO-2), evaluated here in its
    own output dir: (output dir, the overrides it was trained with, run_train's summary)."""
    out = trained_zero2.out
    return out, small_job.overrides(out, *trained_zero2.extra), trained_zero2.summary


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
        "eval.bfcl.max_per_category=2",
        "rollout.agentbench_db.limit=3",  # the default's rollouts (DB tasks), fewer of them
    ]
    assert main(args) == 0
    report = json.loads((out / "eval/report.json").read_text())
    per_case = report["agent_h"]["per_case"]
    assert {c: per_case[c]["n"] for c in "abcd"} == {"a": 2, "b": 2, "c": 4, "d": 4}
    for key in ("h_react", "h_general", "h_score", "missed_call_rate", "combined"):
        assert key in report["agent_h"]
    assert report["tool_use"]["overall"]["n"] == 4
    replies = {
        json.loads(x)["id"]: json.loads(x)["reply"]
        for x in (out / "eval/replies.jsonl").read_text().splitlines()
    }
    assert len(replies) == 2 + 2 + 4 + 4 + 4 + 5 * 2  # Agent-H, tool use, BFCL (5 categories x 2)
    # BFCL: each reply judged by the BFCL rules, per category in the report, the MLflow run and report.md
    from agentflan.eval import bfcl, bfcl_data

    b = report["bfcl"]
    assert {v["category"] for v in b["verdicts"]} == set(b["summary"]) - {"overall"} and b["summary"][
        "overall"
    ]["n"] == 10
    for v in b["verdicts"]:
        category, question, answers, _ = bfcl_data.prompts(SAMPLE_BFCL, None, 2, "react")[v["id"]]
        assert bfcl.judge(category, question, answers, replies[f"bfcl/{v['id']}"]).valid == v["valid"]

    # The numbers, recomputed here from the replies on disk: Agent-H rates and the degenerate count...
    cases = {r["id"]: r["case"] for r in pq.read_table(out / "eval/agent_h.parquet").to_pylist()}
    plain = [replies[i] for i, c in cases.items() if c in "abc"]
    h = report["agent_h"]
    assert h["n_plain"] == len(plain) == 8
    assert h["h_react"] == sum(has_react_words(r) for r in plain) / 8
    assert h["h_general"] == sum(has_tool_phrases(r) for r in plain) / 8
    assert h["intervals"]["h_react"] == wilson(sum(has_react_words(r) for r in plain), 8).to_dict()
    q = report["quality"]
    assert q["degenerate"] == sum(is_degenerate(r) for r in replies.values()) and q["n"] == 16 + 10
    # ...the held-out loss, against a plain one-record-at-a-time loop over the validation split...
    from agentflan.eval.heldout import heldout_records, heldout_samples

    cfg = load_config("pipelines/local.yaml", [*overrides, f"eval.model={summary['model_dir']}"])
    expected = _one_by_one_loss(
        cfg, summary["model_dir"], heldout_records(cfg, read_corpus(out)), heldout_samples
    )
    assert expected.keys() == report["validation_loss"].keys() >= {"reasoning", "general"}
    for cap, v in expected.items():
        assert report["validation_loss"][cap]["tokens"] == v["tokens"]
        assert report["validation_loss"][cap]["loss"] == pytest.approx(v["loss"], rel=1e-4)
    # ...and the report shows them, with their intervals.
    md = (out / "eval/report.md").read_text()
    iv = h["intervals"]["h_react"]
    assert f"| H_ReAct | {h['h_react']:.3f} | [{iv['low']:.3f}, {iv['high']:.3f}] | 8 |" in md
    # the case table: n, then count and rate for ReAct words, tool phrases and calls (the calls column
    # once read a key that does not exist and always showed 0)
    for case, c in report["agent_h"]["per_case"].items():
        (row,) = [x for x in md.splitlines() if x.startswith(f"| {case} | {c['n']} |")]
        cells = [x.strip() for x in row.strip("|").split("|")]
        assert (cells[2], cells[4], cells[6]) == (str(c["react"]), str(c["general"]), str(c["calls"]))
    cap, v = next(iter(report["validation_loss"].items()))
    assert f"| {cap} | {v['loss']:.4f} | {v['tokens']} |" in md
    assert "![Held-out loss per capability](plots/heldout_loss.png)" in md
    assert (out / "eval/plots/heldout_loss.png").stat().st_size > 1000

    # disjoint from training: no eval query is a user turn of the corpus
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
    assert "agent_h.h_score" in metrics and "val_loss.reasoning" in metrics and "bfcl.overall" in metrics
    assert "agent_h.irrelevance_rate" in metrics

    # the default's rollouts ran in the same eval: 3 DB tasks, each with an ending and its trajectory,
    # logged beside the eval metrics
    rollout = json.loads((out / "rollout/report.json").read_text())
    db = rollout["envs"]["agentbench_db"]
    assert db["n"] == 3 and sum(db["endings"].values()) == 3
    trajectories = [json.loads(x) for x in (out / "rollout/trajectories.jsonl").read_text().splitlines()]
    assert len(trajectories) == 3 and all(any(m["role"] == "user" for m in t["messages"]) for t in trajectories)
    assert metrics["rollout.agentbench_db.overall"] == db["overall"]["value"]

    # and the contamination of each eval set by the corpus (eval/contamination.md; docs/contamination.md)
    c = report["contamination"]["sets"]
    assert (c["agent_h"]["n"], c["tool_use"]["n"], c["bfcl"]["n"]) == (12, 4, 10)
    for name in ("agent_h", "tool_use", "bfcl", "agentbench_db"):
        assert metrics[f"contamination.{name}.share"] == c[name]["share"]
    assert "| agent_h | yes | 12 |" in (out / "eval/contamination.md").read_text()

    # general capability: lm-eval on the shipped GSM8K / MMLU sample (4 items each), after the agent evals
    general = report["general"]["tasks"]
    assert {t: r["n"] for t, r in general.items()} == {"agentflan_gsm8k": 4, "agentflan_mmlu_abstract_algebra": 4}
    mmlu = general["agentflan_mmlu_abstract_algebra"]
    assert f"| agentflan_mmlu_abstract_algebra | acc | 4 | {mmlu['value']:.3f} |" in md
    assert metrics["general.agentflan_mmlu_abstract_algebra"] == mmlu["value"]
    assert "general.agentflan_gsm8k.ci_high" in metrics
    assert "mlflow run" in capsys.readouterr().out


def test_eval_without_a_model_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", "pipelines/local.yaml", f"output_dir={tmp_path}"]) == 2
    assert "no model at" in capsys.readouterr().err
