"""``pipelines/local_native.yaml``, the whole job with native tool calls (data, train, eval), cut short: the
corpus other trainers read, the exported tool-calling template, and native prompts in the eval."""

from __future__ import annotations

import json

import pytest

from agentflan.cli import main
from agentflan.train.tool_templates import JINJA_TEMPLATES


@pytest.fixture(scope="module")
def native_run(ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("native")
    code = main(
        [
            "run",
            "pipelines/local_native.yaml",
            f"output_dir={out}",
            "data.engine=local",
            "train.max_steps=2",
            "train.seq_len=512",
            "eval.max_per_case={a: 2, b: 4, c: 4, d: 4}",
            "eval.max_hotpot=2",
            "eval.max_tool_use_per_source=4",
            "eval.max_new_tokens=16",
            "eval.bfcl.max_per_category=2",
            "eval.general.tasks=[]",  # lm-eval's general tasks do not depend on the call format (test_two_nodes)
            "rollout.agentbench_db.limit=2",
        ]
    )
    assert code == 0
    return out


def test_the_native_job_runs_end_to_end(native_run):
    from datasets import load_dataset
    from transformers import AutoTokenizer

    from agentflan.data.pipeline import corpus_files

    corpus = load_dataset("parquet", data_files=corpus_files(native_run), split="train")
    with_calls = [r for r in corpus if any(m["tool_calls"] for m in r["messages"])]
    assert len(with_calls) > 100  # ReAct, ToolBench and the function-calling sets, all as native calls
    tok = AutoTokenizer.from_pretrained(native_run / "model")
    assert tok.chat_template == JINJA_TEMPLATES["hermes"].source  # one template, training to inference
    row = with_calls[0]
    text = tok.apply_chat_template(row["messages"], tools=row["tools"], tokenize=False)
    assert "<tool_call>" in text and "<tools>" in text

    report = json.loads((native_run / "eval" / "report.json").read_text())
    assert report["bfcl"]["summary"]["simple_python"]["n"] == 2
    assert report["tool_use_set"]["output_format"] == "native"
    assert report["tool_use"]["overall"]["n"] == 8  # 4 per source, offered through the chat template
    assert set(report["validation_loss"]) >= {"reasoning", "retrieval", "understanding"}
    rollout = json.loads((native_run / "rollout" / "report.json").read_text())
    assert rollout["envs"]["agentbench_db"]["n"] == 2  # DB tasks played with native tools after the eval
