"""The paper's setup end to end on the CPU, shrinking only the model: `pipelines/llama2_7b_agentflan.yaml`
(ZeRO-3, the agentflan template, micro batch 1, bf16, global batch 32, lr 2e-5, 1 epoch) with
`train.model.name_or_path` at a small Llama checkpoint saved on disk with a SentencePiece tokenizer. The
cluster paths of the spec (inputs, tool pool, eval data, MLflow server, S3 storage) point at local ones, and
the eval sets and the number of steps are capped (1 optimizer step of the 9 an epoch takes: a step is 32 rows
of 4096 tokens, ~26 s here; the schedule over several steps is checked in test_train_ray); nothing else
changes. Then the export is checked the way a user would use it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import agentflan
from agentflan.cli import main
from agentflan.train.templates import render_text

SAMPLE = Path(agentflan.__file__).parent / "sample_data"


def test_paper_spec_on_a_small_llama_checkpoint(ray_session, llama2_checkpoint, tmp_path, capsys, cosine_lr):
    out = tmp_path / "paper"
    args = [
        "run",
        "pipelines/llama2_7b_agentflan.yaml",
        f"output_dir={out}",
        f"data.inputs=[{{path: {SAMPLE}/agentinstruct, source: agentinstruct, kind: agent}}, "
        f"{{path: {SAMPLE}/react/fireact_hotpotqa.jsonl, source: react, kind: agent}}, "
        f"{{path: {SAMPLE}/toolbench, source: toolbench, kind: agent}}, "
        f"{{path: {SAMPLE}/general/fastchat_dummy_conversation.json, source: sharegpt, kind: general}}]",
        f"data.negatives.tool_pool_files=[{SAMPLE}/tools/G1_query.json]",
        "data.negatives.responder={kind: template}",
        f"train.model.name_or_path={llama2_checkpoint}",
        "train.scaling={num_workers: 2, use_gpu: false, resources_per_worker: {CPU: 1}}",
        "train.storage_path=null",
        "train.max_steps=1",
        "mlflow.tracking_uri=null",
        f"eval.data_dir={SAMPLE}",
        "eval.use_gpu=false",
        "eval.num_actors=1",
        "eval.max_per_case={a: 4, b: 4, c: 8, d: 8}",
        "eval.max_hotpot=4",
        "eval.max_tool_use_per_source=4",
        "eval.max_new_tokens=32",
        # The spec's rollouts (BFCL multi-turn and DB) on the eval's CPU actor, a few episodes each.
        "rollout.backend={kind: hf, num_actors: 1, use_gpu: false, batch_size: 16, sampling: {max_new_tokens: 32}}",
        "rollout.bfcl_multi_turn.limit=1",
        "rollout.agentbench_db.limit=2",
        # The spec's general tasks (GSM8K, MMLU) on the shipped samples, a few items each.
        f"eval.general.data_dir={SAMPLE}/general_eval",
        "eval.general.limit=4",
    ]
    assert main(args) == 0, capsys.readouterr().err
    cfg_train = json.loads((out / "train" / "summary.json").read_text())
    assert cfg_train["steps"] == 1
    # The step as logged: a finite loss, the held-out loss at the end, the paper's lr on its schedule (1 step x
    # warmup_ratio 0.03 rounds to no warmup: the cosine from 2e-5, at 0 after the last step).
    steps = [json.loads(x) for x in (out / "train/steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == [1] and cfg_train["final"] == steps[-1]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in steps)
    assert math.isfinite(steps[-1]["val_loss"]) and steps[-1]["val_loss"] > 0
    assert [r["lr"] for r in steps] == pytest.approx([cosine_lr(2e-5, 0, 1, 1)], abs=1e-12)
    # the step was the spec's global batch: 32 packed rows of 4096 slots over the 2 workers
    real = steps[0]["tokens_per_s"] * steps[0]["step_time_s"]
    assert real / steps[0]["real_token_share"] == pytest.approx(32 * 4096, rel=1e-6)
    assert all(r["trained_tokens"] > 0 for r in steps)

    # ZeRO-3: the model was built partitioned, each of the 2 ranks holding about half of it.
    attempt = json.loads((out / "train/attempts.jsonl").read_text().splitlines()[0])
    assert attempt["world_size"] == 2 and attempt["params_on_rank0"] <= attempt["params_total"] * 0.55

    # The export speaks the training format: template, eos at the end-of-turn marker, stop tokens.
    model_dir = out / "model"
    tok = AutoTokenizer.from_pretrained(model_dir)
    messages = [
        {"role": "system", "content": "You can call search."},
        {"role": "user", "content": "Who wrote Hamlet?"},
        {"role": "assistant", "content": "Shakespeare."},
        {"role": "user", "content": "When?"},
    ]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == render_text(
        messages, "agentflan", tok.bos_token, tok.eos_token, add_generation_prompt=True
    )
    assert tok.eos_token == "\u0d3f" and len(tok("\u0d3f", add_special_tokens=False)["input_ids"]) == 1
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [tok.eos_token_id, 2]  # the template's marker, then Llama's </s>
    config = json.loads((model_dir / "config.json").read_text())
    assert config["use_cache"] is True and config["vocab_size"] >= len(tok)

    # A plain transformers script generates from it, with the KV cache on: the same greedy tokens as without.
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        cached = model.generate(**ids, max_new_tokens=12, do_sample=False)
        uncached = model.generate(**ids, max_new_tokens=12, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached) and cached.shape[1] > ids["input_ids"].shape[1]

    report = json.loads((out / "eval/report.json").read_text())
    assert report["quality"]["n"] == sum(report["agent_h"]["per_case"][c]["n"] for c in "abcd") + 8
    assert set(report["validation_loss"]) >= {"reasoning", "understanding"}

    # The rollouts ran as the spec names them: one entry per BFCL category, two DB tasks, every episode with
    # an ending, and their trajectories written.
    rollout = json.loads((out / "rollout/report.json").read_text())
    assert rollout["envs"]["bfcl_multi_turn"]["n"] == 4 and rollout["envs"]["agentbench_db"]["n"] == 2
    for env in rollout["envs"].values():
        assert sum(env["endings"].values()) == env["n"]
    assert len((out / "rollout/trajectories.jsonl").read_text().splitlines()) == 6
