"""The training loop each Ray Train worker runs: setup, train, checkpoint, save.

Ray appears only at the edges (rank and device from the train context, ``ray.train.report`` for metrics
and checkpoints, ``ray.train.get_checkpoint`` to resume); the math is plain torch + DeepSpeed.

Device mapping is explicit, because a wrong mapping is the most reported Ray + DeepSpeed failure: with
``use_gpu`` each worker owns exactly one GPU, ``cuda:<local rank>``, set before DeepSpeed initialises.

Loss: the mean over every trained token of the global batch, whatever the split into micro-batches,
accumulation steps and workers (see :mod:`agentflan.train.loss`). The rows of a step are known to every
worker (:func:`agentflan.train.data.step_rows`), so the global token count needs no communication.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from agentflan.config import Config
from agentflan.train.data import step_rows
from agentflan.train.loss import weighted_token_loss
from agentflan.train.model import build_model, model_inputs, tiny_llama_config

CHECKPOINT_TAG = "ds"
STATE_FILE = "agentflan_state.json"


def deepspeed_config(cfg: Config, use_bf16: bool) -> dict[str, Any]:
    t = cfg.train
    zero: dict[str, Any] = {"stage": t.deepspeed.zero_stage}
    if t.deepspeed.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if t.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    ds = {
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
    return _merge(ds, t.deepspeed.overrides)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def total_steps(cfg: Config, n_rows: int) -> int:
    if cfg.train.max_steps:
        return cfg.train.max_steps
    return max(1, math.ceil(cfg.train.epochs * math.ceil(n_rows / cfg.train.global_batch_size)))


def _model(cfg: Config, tokenizer_dir: str):
    from transformers import AutoTokenizer

    m = cfg.train.model
    if m.name_or_path:
        model = build_model(m.name_or_path)
    else:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        config = tiny_llama_config(
            len(tok),
            m.hidden_size,
            m.num_layers,
            m.num_heads,
            max(2048, cfg.train.seq_len),
            tok.bos_token_id,
            tok.eos_token_id,
            tok.pad_token_id,
        )
        model = build_model(config=config, seed=cfg.seed)  # same seed: identical weights on every rank
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if m.lora.enabled:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise RuntimeError("train.model.lora needs peft: pip install 'agentflan[lora]'") from None
        lc = LoraConfig(
            r=m.lora.r,
            lora_alpha=m.lora.alpha,
            lora_dropout=m.lora.dropout,
            target_modules=m.lora.target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lc)
    return model


def _batch(table, indices: list[int], device: torch.device) -> dict[str, torch.Tensor]:
    rows = table.take(indices).to_pydict()
    seq = len(rows["input_ids"][0])
    n_real = torch.tensor(rows["n_real"])
    return {
        "input_ids": torch.tensor(rows["input_ids"], dtype=torch.long, device=device),
        "labels": torch.tensor(rows["labels"], dtype=torch.long, device=device),
        "weights": torch.tensor(rows["weights"], dtype=torch.float32, device=device),
        "position_ids": torch.tensor(rows["position_ids"], dtype=torch.long, device=device),
        "n_real": int(n_real.sum()),
        "slots": len(indices) * seq,
    }


def validation_loss(engine, table, rank: int, world: int, micro: int, device: torch.device) -> float | None:
    """Mean token loss over the packed validation rows, split across workers.

    Every worker runs the same number of forward passes (ZeRO-3 gathers parameters collectively, so a rank
    that stopped early would hang the others): ranks short of rows repeat row 0 and count it with weight 0.
    Validation records carry every trained turn unweighted (see :mod:`agentflan.data.mixture`), so trials
    with different capability weights are scored on the same tokens.
    """
    if table is None or table.num_rows == 0:
        return None
    n = table.num_rows
    per_rank = math.ceil(n / world)
    mine = [rank + world * j for j in range(per_rank)]
    totals = torch.zeros(2, device=device)
    engine.eval()
    with torch.no_grad():
        for k in range(0, per_rank, micro):
            idx = mine[k : k + micro]
            batch = _batch(table, [i if i < n else 0 for i in idx], device)
            logits = engine(**model_inputs(batch)).logits
            for j, i in enumerate(idx):
                if i < n:
                    loss_sum, count = weighted_token_loss(
                        logits[j : j + 1], batch["labels"][j : j + 1], batch["weights"][j : j + 1]
                    )
                    totals += torch.stack([loss_sum.float(), count.float()])
    engine.train()
    if world > 1:
        torch.distributed.all_reduce(totals)
    return totals[0].item() / max(1.0, totals[1].item())


def _save_final(engine, cfg: Config, rank: int, model_dir: Path, tokenizer_dir: str) -> None:
    """Write the trained model with ``save_pretrained`` and its tokenizer (rank 0 writes)."""
    from transformers import AutoTokenizer

    state = engine._zero3_consolidated_16bit_state_dict() if cfg.train.deepspeed.zero_stage == 3 else None
    if rank != 0:
        return
    module = engine.module
    if cfg.train.model.lora.enabled:
        if state is not None:
            module.load_state_dict(state)
            state = None
        module = module.merge_and_unload()
    model_dir.mkdir(parents=True, exist_ok=True)
    module.save_pretrained(model_dir, state_dict=state)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(model_dir)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import deepspeed
    import ray
    import ray.train
    import transformers

    cfg = Config.model_validate(config["cfg"])
    t = cfg.train
    ctx = ray.train.get_context()
    rank, world, local_rank = ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank()
    if t.scaling.use_gpu:
        device = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, int(t.scaling.resources_per_worker.get("CPU", 1))))
    use_bf16 = t.scaling.use_gpu and t.model.dtype != "float32"

    table = ray.get(config["rows_ref"])
    val_table = ray.get(config["val_rows_ref"]) if config.get("val_rows_ref") is not None else None
    n_rows = table.num_rows
    steps = total_steps(cfg, n_rows)
    trained_per_row = table.column("n_trained").to_pylist()

    model = _model(cfg, config["tokenizer_dir"])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=t.lr, weight_decay=t.weight_decay, betas=(0.9, 0.95), fused=t.scaling.use_gpu
    )
    scheduler = transformers.get_cosine_schedule_with_warmup(optimizer, int(t.warmup_ratio * steps), steps)
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg, use_bf16)
    )

    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            engine.load_checkpoint(d, tag=CHECKPOINT_TAG)
            start = json.loads((Path(d) / STATE_FILE).read_text())["step"]
    log_path = Path(config["steps_log"])
    if rank == 0:
        _truncate_log(log_path, start)  # steps after the checkpoint will be trained again: drop their lines
        with (log_path.parent / "attempts.jsonl").open("a") as f:
            f.write(json.dumps({"start_step": start, "world_size": world, "time": time.time()}) + "\n")

    accum = t.grad_accum_steps
    engine.train()
    for step in range(start, steps):
        t0 = time.time()
        micro = step_rows(step, rank, world, t.micro_batch_size, accum, n_rows)
        every = step_rows(step, 0, 1, t.micro_batch_size * world, accum, n_rows)
        global_tokens = max(1, sum(trained_per_row[i] for mb in every for i in mb))
        loss_total = torch.zeros((), device=device)
        real = slots = 0
        for indices in micro:
            batch = _batch(table, indices, device)
            logits = engine(**model_inputs(batch)).logits
            loss_sum, _ = weighted_token_loss(logits, batch["labels"], batch["weights"])
            # DeepSpeed averages gradients over workers: scale by world so the sum is the global mean.
            engine.backward(loss_sum * world / global_tokens, scale_wrt_gas=False)
            engine.step()
            loss_total += loss_sum.detach()
            real += batch["n_real"]
            slots += batch["slots"]
        counts = torch.tensor([float(real), float(slots)], device=device)
        if world > 1:
            torch.distributed.all_reduce(loss_total)
            torch.distributed.all_reduce(counts)
        elapsed = time.time() - t0
        metrics = {
            "step": step + 1,
            "loss": loss_total.item() / global_tokens,
            "lr": scheduler.get_last_lr()[0],
            "tokens_per_s": counts[0].item() / elapsed,
            "real_token_share": counts[0].item() / counts[1].item(),
            "trained_tokens": global_tokens,
        }
        done = step + 1 == steps
        if done or (t.eval_every and (step + 1) % t.eval_every == 0):
            val = validation_loss(engine, val_table, rank, world, t.micro_batch_size, device)
            if val is not None:
                metrics["val_loss"] = val
        if rank == 0:
            with log_path.open("a") as f:
                f.write(json.dumps(metrics) + "\n")
            if config.get("run_id"):
                from agentflan.tracking import log_metrics

                log_metrics(
                    cfg, config["run_id"], {k: v for k, v in metrics.items() if k != "step"}, step + 1
                )
        if (step + 1) % t.checkpoint_every == 0 or done:
            _report_checkpoint(engine, rank, step + 1, metrics)
        elif "val_loss" in metrics:
            # ray.train.report is a barrier across workers (~1.7 s a call here, 5x a tiny model's step):
            # only checkpoints and validation losses go through it; every step goes to MLflow and the log.
            ray.train.report(metrics)

    _save_final(engine, cfg, rank, Path(config["model_dir"]), config["tokenizer_dir"])


def _report_checkpoint(engine, rank: int, step: int, metrics: dict[str, Any]) -> None:
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        engine.save_checkpoint(tmp, tag=CHECKPOINT_TAG, client_state={"step": step})
        if rank == 0:
            (Path(tmp) / STATE_FILE).write_text(json.dumps({"step": step}))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _truncate_log(path: Path, last_step: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = []
    if path.exists():
        kept = [
            line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step
        ]
    path.write_text("".join(line + "\n" for line in kept))
