"""The training math without Ray: the DeepSpeed config the spec makes (pure functions), and the lr schedule
of a run trained in this process (``train_single_process``, world size 1: no worker group to start)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentflan.config import load_config
from agentflan.train.deepspeed_config import deepspeed_config


def ds(*overrides: str, use_bf16: bool = False) -> dict:
    return deepspeed_config(load_config("pipelines/local.yaml", list(overrides)), use_bf16=use_bf16)


def test_deepspeed_config_from_the_spec():
    cfg = load_config("pipelines/local.yaml", ["train.global_batch_size=8", "train.micro_batch_size=2"])
    c = deepspeed_config(cfg, use_bf16=False)
    t = cfg.train
    assert c["train_batch_size"] == 8 and c["train_micro_batch_size_per_gpu"] == 2
    assert c["gradient_accumulation_steps"] == t.grad_accum_steps == 8 // (2 * t.scaling.num_workers)
    assert c["gradient_clipping"] == t.max_grad_norm
    assert c["zero_optimization"] == {"stage": 2}
    assert c["bf16"] == {"enabled": False} and "optimizer" not in c  # our torch AdamW steps
    assert ds(use_bf16=True)["bf16"] == {"enabled": True}
    # ZeRO-3 gathers the 16-bit weights for the export
    assert ds("train.deepspeed.zero_stage=3")["zero_optimization"] == {
        "stage": 3,
        "stage3_gather_16bit_weights_on_model_save": True,
    }


def test_offload_optimizer_hands_the_optimizer_to_deepspeed():
    """Offloaded, DeepSpeed steps its own CPU Adam: the config names it with the spec's lr, betas and weight
    decay (setup then passes no optimizer of its own)."""
    c = ds("train.deepspeed.offload_optimizer=true", "train.lr=5e-4", "train.weight_decay=0.1")
    assert c["zero_optimization"] == {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": True}}
    assert c["optimizer"] == {
        "type": "AdamW",
        "params": {"lr": 5e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1},
    }
    # under ZeRO-3 the offload sits beside the gather flag
    z3 = ds("train.deepspeed.offload_optimizer=true", "train.deepspeed.zero_stage=3")["zero_optimization"]
    assert z3["offload_optimizer"]["device"] == "cpu" and z3["stage3_gather_16bit_weights_on_model_save"]


def test_overrides_merge_last_and_nested():
    """``train.deepspeed.overrides`` is merged into the generated config last: nested keys replace only
    themselves, keys the generator does not write are added, a non-mapping replaces a mapping whole."""
    c = ds(
        "train.deepspeed.offload_optimizer=true",
        "train.deepspeed.overrides={zero_optimization: {reduce_bucket_size: 1000, offload_optimizer: "
        "{pin_memory: false}}, gradient_clipping: 0.5, optimizer: {params: {eps: 1.0e-6}}, "
        "flops_profiler: {enabled: true}}",
    )
    assert c["zero_optimization"] == {
        "stage": 2,
        "reduce_bucket_size": 1000,
        "offload_optimizer": {"device": "cpu", "pin_memory": False},
    }
    assert c["gradient_clipping"] == 0.5
    assert c["optimizer"]["type"] == "AdamW" and c["optimizer"]["params"]["eps"] == 1e-6
    assert c["optimizer"]["params"]["betas"] == [0.9, 0.95]  # siblings of a merged key stay
    assert c["flops_profiler"] == {"enabled": True}
    assert ds("train.deepspeed.overrides={bf16: false}")["bf16"] is False
    # the spec's own values are not touched by a merge (the generated config is a new dict every time)
    assert ds()["zero_optimization"] == {"stage": 2}


@pytest.mark.slow  # 8 steps in this process (~12 s on a busy 2-core machine)
def test_lr_warms_up_then_follows_the_cosine(small_job, tmp_path, train_in_process, cosine_lr):
    """8 steps with warmup_ratio 0.25: 2 warmup steps (lr/2, lr), then a half cosine to 0 at step 8; every
    step's logged lr (the optimizer's param group after the step) is the schedule's."""
    cfg = small_job.fresh(
        tmp_path / "run",
        "train.max_steps=8",
        "train.warmup_ratio=0.25",
        "train.lr=1e-3",
        "train.scaling.num_workers=1",
        "train.save_final=false",
        "train.checkpoint_every=100",
    )
    logged = train_in_process(cfg)
    lrs = [r["lr"] for r in logged]
    assert lrs == pytest.approx([cosine_lr(1e-3, 2, 8, s) for s in range(1, 9)], rel=1e-6, abs=1e-12)
    assert lrs[:2] == pytest.approx([5e-4, 1e-3]) and lrs[-1] == pytest.approx(0, abs=1e-12)
    assert lrs[2] < lrs[1] and all(a > b for a, b in zip(lrs[2:], lrs[3:], strict=False))
    on_disk = [
        json.loads(x)["lr"] for x in (Path(cfg.output_dir) / "train/steps.jsonl").read_text().splitlines()
    ]
    assert on_disk == lrs
    assert not (Path(cfg.output_dir) / "model").exists()  # save_final: false


def test_deepspeed_builds_its_cpu_op_with_this_interpreters_ninja(monkeypatch):
    """A venv used without activating it must not alternate between the system's ninja and its own: the two
    versions read each other's build log as invalid and rebuild DeepSpeed's CPU comm op every switch."""
    import os
    import shutil
    import sys

    from agentflan.train.strategy import use_interpreter_ninja

    bin_dir = str(Path(sys.executable).parent)
    assert (Path(bin_dir) / "ninja").exists()  # pip's ninja, a DeepSpeed dependency, beside this interpreter
    monkeypatch.setenv(
        "PATH", os.pathsep.join(["/usr/bin", "/bin", bin_dir])
    )  # as an unactivated venv has it
    use_interpreter_ninja()
    use_interpreter_ninja()  # once is enough: PATH does not grow
    assert os.environ["PATH"].split(os.pathsep) == [bin_dir, "/usr/bin", "/bin", bin_dir]
    assert shutil.which("ninja") == str(Path(bin_dir) / "ninja")
