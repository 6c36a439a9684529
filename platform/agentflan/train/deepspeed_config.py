"""What the run's config means for DeepSpeed, as plain values: its config dict, the training dtype and the
number of optimizer steps (the schedule's length).

No torch here: the driver, a Tune study and ``agentflan check`` use these without loading it.
"""

from __future__ import annotations

import math
from typing import Any

from agentflan.config import Config


def deepspeed_config(cfg: Config, use_bf16: bool) -> dict[str, Any]:
    """DeepSpeed's config for the run; ``train.deepspeed.overrides`` merged in last, key by key."""
    t = cfg.train
    zero: dict[str, Any] = {"stage": t.deepspeed.zero_stage}
    if t.deepspeed.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum_steps,
        "train_batch_size": t.global_batch_size,
        "gradient_clipping": t.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": use_bf16},
        "zero_allow_untested_optimizer": True,  # a torch AdamW: no FusedAdam build on CPU
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if t.deepspeed.offload_optimizer:
        # DeepSpeed steps an offloaded optimizer with its own CPU Adam (a C++ op it builds on first use).
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        ds["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": t.lr, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": t.weight_decay},
        }
    return _merge(ds, t.deepspeed.overrides)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def total_steps(cfg: Config, n_rows: int) -> int:
    """Optimizer steps of the run: ``train.max_steps``, else ``train.epochs`` over ``n_rows`` packed rows."""
    if cfg.train.max_steps:
        return cfg.train.max_steps
    return max(1, math.ceil(cfg.train.epochs * math.ceil(n_rows / cfg.train.global_batch_size)))


def model_dtype(cfg: Config) -> str:
    """The training dtype's torch name: bf16 on GPU unless float32 is asked for; float32 on CPU unless
    bfloat16 is asked for."""
    m = cfg.train.model
    if m.dtype == "auto":
        return "bfloat16" if cfg.train.scaling.use_gpu else "float32"
    return m.dtype
