"""Single-process training runs the same loop as a Ray Train worker, in this process: it resumes from its
newest checkpoint, keeps ``train.keep_checkpoints`` of them, checkpoints the last step, and cleans up so the
next run in the same process starts as the first did."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import agentflan
import agentflan.train.loop as loop
from agentflan.config import load_config
from agentflan.data.pipeline import run_data
from agentflan.train.data import prepare
from agentflan.train.loop import train_single_process
from agentflan.train.shards import PackedShards

REPO = Path(__file__).resolve().parents[2]
SAMPLE = Path(agentflan.__file__).parent / "sample_data"
STEPS = 4
# What a distributed launcher sets: a run of one must leave none of it behind, or every process started later
# from this one (a Ray node, a job driver) inherits a rank, and accelerate (lm-eval) takes itself for a rank of
# a distributed run that has no MASTER_ADDR.
LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def make_cfg(out: Path):
    return load_config(
        REPO / "pipelines/local.yaml",
        [
            f"output_dir={out}",
            "data.engine=local",
            f"data.inputs=[{{path: {SAMPLE}/react/fireact_hotpotqa.jsonl, source: react, kind: agent}}, "
            f"{{path: {SAMPLE}/general/fastchat_dummy_conversation.json, source: sharegpt, kind: general}}]",
            f"data.negatives.tool_pool_files=[{SAMPLE}/tools/G1_query.json]",
            "data.validation_fraction=0.2",
            "train.seq_len=256",
            "train.scaling.num_workers=1",
            "train.global_batch_size=4",
            "train.micro_batch_size=2",
            f"train.max_steps={STEPS}",
            "train.checkpoint_every=1",
            "train.keep_checkpoints=2",
            "train.lr=1e-3",
        ],
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    run_data(make_cfg(out))
    return out


def run(cfg) -> list[dict]:
    out = Path(cfg.output_dir)
    return train_single_process(
        cfg,
        PackedShards(out / "train/packed_train"),
        PackedShards(out / "train/packed_validation"),
        str(out / "train/tokenizer"),
        out,
    )


def fresh(corpus: Path, out: Path):
    import shutil

    shutil.copytree(corpus, out)
    cfg = make_cfg(out)
    prepare(cfg)
    return cfg


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).state_dict()


@pytest.mark.slow  # ~6 s: two training runs
def test_resumes_from_its_checkpoint_and_keeps_the_newest(corpus, tmp_path, monkeypatch):
    for key in LAUNCHER_ENV:
        monkeypatch.delenv(key, raising=False)
    whole = fresh(corpus, tmp_path / "whole")
    uninterrupted = run(whole)
    assert [k for k in LAUNCHER_ENV if k in os.environ] == []
    assert [m["step"] for m in uninterrupted] == list(range(1, STEPS + 1))
    ckpts = Path(whole.output_dir) / "train/checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [f"step_{STEPS - 1}", f"step_{STEPS}"]  # keep = 2

    broken = fresh(corpus, tmp_path / "broken")
    real_step = loop.train_step

    def crash_at_third(state, step):
        if step == 2:
            raise RuntimeError("worker died")
        return real_step(state, step)

    monkeypatch.setattr(loop, "train_step", crash_at_third)
    with pytest.raises(RuntimeError, match="worker died"):
        run(broken)
    assert [k for k in LAUNCHER_ENV if k in os.environ] == []  # cleaned up after a failure too
    monkeypatch.setattr(loop, "train_step", real_step)
    resumed = run(broken)  # in the same process: the first run cleaned up after itself

    out = Path(broken.output_dir)
    assert [m["step"] for m in resumed] == [3, 4]
    attempts = [json.loads(x)["start_step"] for x in (out / "train/attempts.jsonl").read_text().splitlines()]
    assert attempts == [0, 2]
    logged = [json.loads(x) for x in (out / "train/steps.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2, 3, 4]
    assert [m["loss"] for m in logged] == pytest.approx([m["loss"] for m in uninterrupted], rel=1e-5)
    assert [m["lr"] for m in logged] == pytest.approx([m["lr"] for m in uninterrupted], rel=1e-6)
    assert sorted(p.name for p in (out / "train/checkpoints").iterdir()) == ["step_3", "step_4"]
    a, b = weights(Path(whole.output_dir) / "model"), weights(out / "model")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
