"""The training loop each worker runs, in four parts: :func:`setup`, :func:`train_step`, :func:`save_checkpoint`
and :func:`save_model`.

Two entries drive them: :func:`train_loop_per_worker` on a Ray Train worker, and :func:`train_single_process`
for one process without Ray (tests, benchmarks, debugging on one GPU). Ray appears only in the first (rank and
device from the train context, ``ray.train.report`` for metrics and checkpoints, ``ray.train.get_checkpoint``
to resume); the math is plain torch + DeepSpeed.

Device mapping is explicit, because a wrong mapping is the most reported Ray + DeepSpeed failure: with
``use_gpu`` each worker owns exactly one GPU, ``cuda:<local rank>``, set before DeepSpeed initialises.

Loss: the mean over every trained token of the global batch, whatever the split into micro-batches,
accumulation steps and workers (see :mod:`agentflan.train.loss`). The rows of a step are known to every
worker (:func:`agentflan.train.data.step_rows`), so the global token count needs no communication.

Loading: the model is built in the training dtype (bf16 on GPU), directly on the worker's device; under ZeRO-3
inside ``deepspeed.zero.Init`` (through ``HfDeepSpeedConfig``), so it is partitioned as it is built and no
rank ever holds the whole model.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from agentflan.config import Config
from agentflan.train.batches import PackedBatches, Prefetcher
from agentflan.train.data import step_rows
from agentflan.train.loss import CausalLMWithLoss, resolve_loss_implementation
from agentflan.train.model import (
    build_model,
    compile_layers,
    freed_memory_returned,
    load_partitioned,
    resolve_attn_implementation,
    set_gradient_checkpointing,
    tiny_llama_config,
)
from agentflan.train.shards import PackedShards, worker_rows

CHECKPOINT_TAG = "ds"
STATE_FILE = "agentflan_state.json"


def deepspeed_config(cfg: Config, use_bf16: bool) -> dict[str, Any]:
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
    if cfg.train.max_steps:
        return cfg.train.max_steps
    return max(1, math.ceil(cfg.train.epochs * math.ceil(n_rows / cfg.train.global_batch_size)))


def model_dtype(cfg: Config) -> torch.dtype:
    """bf16 on GPU unless float32 is asked for; float32 on CPU unless bfloat16 is asked for."""
    m = cfg.train.model
    if m.dtype == "auto":
        return torch.bfloat16 if cfg.train.scaling.use_gpu else torch.float32
    return getattr(torch, m.dtype)


@dataclass
class TrainState:
    """Everything :func:`train_step` needs; built once by :func:`setup`."""

    cfg: Config
    engine: Any  # deepspeed.DeepSpeedEngine wrapping a CausalLMWithLoss
    scheduler: Any
    rows: PackedBatches
    val_rows: PackedBatches | None
    device: torch.device
    rank: int
    world: int
    steps: int
    attn_implementation: str
    loss: str
    params_total: int = 0  # the model's parameters
    params_local: int = 0  # the ones this rank holds (about params_total / world under ZeRO-3)
    start_step: int = 0
    prefetcher: Prefetcher | None = None
    keep: list[Any] = field(default_factory=list)  # objects that must outlive setup (HfDeepSpeedConfig)


def setup(
    cfg: Config,
    rows: pa.Table | PackedShards,
    val_rows: pa.Table | PackedShards | None,
    tokenizer_dir: str,
    rank: int,
    world: int,
    local_rank: int,
) -> TrainState:
    """Device, model (in its dtype, partitioned under ZeRO-3), loss wrapper, optimizer, schedule, engine."""
    import deepspeed
    import transformers

    t = cfg.train
    if t.scaling.use_gpu:
        device = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, int(t.scaling.resources_per_worker.get("CPU", 1))))
    dtype = model_dtype(cfg)
    ds_config = deepspeed_config(cfg, use_bf16=dtype == torch.bfloat16)
    attn = resolve_attn_implementation(t.model.attn_implementation, device)
    loss = resolve_loss_implementation(t.loss, device, t.deepspeed.zero_stage)
    packed = PackedBatches(rows, pin=device.type == "cuda")
    steps = total_steps(cfg, packed.n_rows)

    keep: list[Any] = []
    if t.deepspeed.zero_stage == 3:
        # DeepSpeed's config checks the batch sizes against its world size: join the process group first.
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    with freed_memory_returned():
        model = _model(cfg, tokenizer_dir, dtype, attn, device, ds_config, keep)
    set_gradient_checkpointing(model, t.model.gradient_checkpointing)
    if t.model.compile:
        compile_layers(model)
    module = CausalLMWithLoss(model, loss, t.loss_chunk_tokens, attn)

    params = [p for p in module.parameters() if p.requires_grad]
    warmup = int(t.warmup_ratio * steps)
    if "optimizer" in ds_config:  # offloaded: DeepSpeed builds its CPU Adam, we give the schedule
        optimizer = None
    else:
        optimizer = torch.optim.AdamW(
            params, lr=t.lr, weight_decay=t.weight_decay, betas=(0.9, 0.95), fused=device.type == "cuda"
        )
    engine, _, _, scheduler = deepspeed.initialize(
        model=module,
        model_parameters=params,
        optimizer=optimizer,
        lr_scheduler=lambda opt: transformers.get_cosine_schedule_with_warmup(opt, warmup, steps),
        config=ds_config,
    )
    params_total, params_local = parameter_counts(engine.module)
    return TrainState(
        cfg=cfg,
        engine=engine,
        scheduler=scheduler,
        rows=packed,
        val_rows=PackedBatches(val_rows) if val_rows is not None and len(val_rows) else None,
        device=device,
        rank=rank,
        world=world,
        steps=steps,
        attn_implementation=attn,
        loss=loss,
        params_total=params_total,
        params_local=params_local,
        keep=keep,
    )


def parameter_counts(module: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, the ones held on this rank): under ZeRO-3 a parameter keeps only its partition
    (``ds_tensor``) between uses, and ``ds_numel`` is its full size."""
    total = local = 0
    for p in module.parameters():
        total += getattr(p, "ds_numel", p.numel())
        local += p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
    return total, local


def _model(
    cfg: Config,
    tokenizer_dir: str,
    dtype: torch.dtype,
    attn: str,
    device: torch.device,
    ds_config: dict[str, Any],
    keep: list[Any],
):
    """The model to train, built partitioned under ZeRO-3: a checkpoint by :func:`load_partitioned` (each rank
    reads its slices), a config inside transformers' ``zero.Init`` (while the ``HfDeepSpeedConfig`` put in
    ``keep`` lives; it also lets transformers resize partitioned embeddings)."""
    from transformers import AutoTokenizer
    from transformers.integrations import HfDeepSpeedConfig

    m = cfg.train.model
    zero3 = cfg.train.deepspeed.zero_stage == 3
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if zero3:
        # before the load: without it a checkpoint with tied embeddings (one saved copy) misses lm_head
        keep.append(HfDeepSpeedConfig(ds_config))
    if zero3 and m.name_or_path:
        model = load_partitioned(m.name_or_path, ds_config, dtype, attn)
    if not m.name_or_path:
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
        # same seed: identical weights on every rank
        model = build_model(
            config=config, seed=cfg.seed, dtype=dtype, attn_implementation=attn, device=device
        )
    elif not zero3:
        model = build_model(m.name_or_path, dtype=dtype, attn_implementation=attn)
    if len(tok) > model.config.vocab_size:
        # the named template's markers were added to the tokenizer (adapt_tokenizer): new rows at the mean of
        # the old ones; under ZeRO-3 transformers gathers the partitioned embeddings to resize them
        model.resize_token_embeddings(len(tok), pad_to_multiple_of=64, mean_resizing=True)
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


def _micro_batch_plan(state: TrainState):
    """(step, indices) of every micro-batch this rank runs, from the resume step to the end."""
    t = state.cfg.train
    for step in range(state.start_step, state.steps):
        yield from step_rows(
            step,
            state.rank,
            state.world,
            t.micro_batch_size,
            t.grad_accum_steps,
            state.rows.n_rows,
            state.cfg.seed,
        )


def train_step(state: TrainState, step: int) -> dict[str, Any]:
    """One optimizer step (``grad_accum_steps`` micro-batches); returns its metrics (all ranks agree)."""
    t = state.cfg.train
    if state.prefetcher is None:
        state.prefetcher = Prefetcher(state.rows, _micro_batch_plan(state), state.device)
    engine, world, device = state.engine, state.world, state.device
    t0 = time.perf_counter()
    every = step_rows(
        step, 0, 1, t.micro_batch_size * world, t.grad_accum_steps, state.rows.n_rows, state.cfg.seed
    )
    global_tokens = max(1, state.rows.trained_tokens([i for mb in every for i in mb]))
    loss_total = torch.zeros((), device=device)
    real = slots = 0
    data_wait = 0.0
    for _ in range(t.grad_accum_steps):
        batch, waited = state.prefetcher.next()
        data_wait += waited
        loss_sum, _ = engine(**batch.model_kwargs())
        # DeepSpeed averages gradients over workers: scale by world so the sum is the global mean.
        engine.backward(loss_sum * world / global_tokens, scale_wrt_gas=False)
        engine.step()
        loss_total += loss_sum.detach().float()
        real += batch.n_real
        slots += batch.slots
    counts = torch.tensor([float(real), float(slots)], device=device)
    if world > 1:
        torch.distributed.all_reduce(loss_total)
        torch.distributed.all_reduce(counts)
    loss_value = loss_total.item() / global_tokens  # .item() waits for the step: the timing below is real
    elapsed = time.perf_counter() - t0
    metrics: dict[str, Any] = {
        "step": step + 1,
        "loss": loss_value,
        "lr": state.scheduler.get_last_lr()[0],
        "tokens_per_s": counts[0].item() / elapsed,
        "real_token_share": counts[0].item() / counts[1].item(),
        "trained_tokens": global_tokens,
        "step_time_s": elapsed,
        "data_wait_s": data_wait,
    }
    if device.type == "cuda":
        metrics["gpu_peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    done = step + 1 == state.steps
    if done or (t.eval_every and (step + 1) % t.eval_every == 0):
        val = validation_loss(state)
        if val is not None:
            metrics["val_loss"] = val
    return metrics


def validation_loss(state: TrainState) -> float | None:
    """Mean token loss over the packed validation rows, split across workers.

    Every worker runs the same number of forward passes (ZeRO-3 gathers parameters collectively, so a rank
    that stopped early would hang the others): ranks short of rows repeat row 0 with its labels masked.
    Validation records carry every trained turn unweighted (see :mod:`agentflan.data.mixture`), so trials
    with different capability weights are scored on the same tokens.
    """
    rows = state.val_rows
    if rows is None:
        return None
    n, world, micro = rows.n_rows, state.world, state.cfg.train.micro_batch_size
    per_rank = math.ceil(n / world)
    mine = [state.rank + world * j for j in range(per_rank)]
    totals = torch.zeros(2, device=state.device)
    state.engine.eval()
    with torch.no_grad():
        for k in range(0, per_rank, micro):
            idx = mine[k : k + micro]
            batch = rows.batch(
                [i if i < n else 0 for i in idx], ignore=[j for j, i in enumerate(idx) if i >= n]
            )
            loss_sum, count = state.engine(**batch.to(state.device).model_kwargs())
            totals += torch.stack([loss_sum.float(), count.float()])
    state.engine.train()
    if world > 1:
        torch.distributed.all_reduce(totals)
    return totals[0].item() / max(1.0, totals[1].item())


def save_checkpoint(state: TrainState, directory: str, step: int) -> None:
    """DeepSpeed's checkpoint (sharded model and optimizer state, collective) plus the step it ends."""
    state.engine.save_checkpoint(directory, tag=CHECKPOINT_TAG, client_state={"step": step})
    if state.rank == 0:
        (Path(directory) / STATE_FILE).write_text(json.dumps({"step": step}))


def load_checkpoint(state: TrainState, directory: str) -> None:
    """Resume: weights, optimizer, schedule, and the data position (it is the step, see step_rows)."""
    state.engine.load_checkpoint(directory, tag=CHECKPOINT_TAG)
    state.start_step = json.loads((Path(directory) / STATE_FILE).read_text())["step"]
    state.prefetcher = None


def save_model(state: TrainState, model_dir: Path, tokenizer_dir: str) -> None:
    """Write the trained model with ``save_pretrained``, its tokenizer and generation config (rank 0 writes).

    Under ZeRO-3 the 16-bit weights are gathered from every rank's shards first (``save_16bit_model``, a
    collective). The config keeps the KV cache on."""
    from transformers import AutoTokenizer

    engine = state.engine
    state_dict = None
    if state.cfg.train.deepspeed.zero_stage == 3:
        # DeepSpeed's public export: every rank takes part in gathering the 16-bit weights, rank 0 writes
        # them (layer by layer, never the whole model on any other rank); read back memory-mapped.
        gathered = model_dir.parent / f".{model_dir.name}.zero3"
        engine.save_16bit_model(str(gathered), "weights.pt")
        if state.rank == 0:
            loaded = torch.load(gathered / "weights.pt", map_location="cpu", weights_only=True, mmap=True)
            state_dict = {k.removeprefix("model."): v for k, v in loaded.items()}
    if state.rank != 0:
        return
    model = engine.module.model
    if state.cfg.train.model.lora.enabled:
        if state_dict is not None:
            model = _whole_peft_model(model, state_dict)
            state_dict = None
        model = model.merge_and_unload()
    model_dir.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model.config.use_cache = True  # off only inside training (model_inputs); generation wants the cache
    model.generation_config = generation_config(model, tok)
    model.save_pretrained(model_dir, state_dict=state_dict)
    tok.save_pretrained(model_dir)
    if state.cfg.train.deepspeed.zero_stage == 3:
        import shutil

        shutil.rmtree(model_dir.parent / f".{model_dir.name}.zero3", ignore_errors=True)


def _whole_peft_model(partitioned, state_dict: dict[str, torch.Tensor]):
    """Rank 0 under ZeRO-3 with LoRA: the trained model, whole, to merge the adapters into. The training
    model's parameters are empty partitions, so a copy is built outside ``zero.Init`` (the end of training:
    transformers' ZeRO-3 switch is turned off for good) with the same adapters, and the gathered 16-bit
    weights are loaded into it."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    dtype = next(iter(state_dict.values())).dtype
    base = AutoModelForCausalLM.from_config(partitioned.get_base_model().config, dtype=dtype)
    whole = get_peft_model(base, partitioned.peft_config["default"])
    whole.load_state_dict(state_dict)
    return whole


def generation_config(model, tok):
    """Greedy by default, stopping at the template's end-of-turn marker (the tokenizer's eos) and at the base
    model's own eos, padding with the tokenizer's pad: what ``generate`` on the export needs to stop where a
    trained reply stops."""
    from transformers import GenerationConfig

    base_eos = model.config.eos_token_id
    base_eos = base_eos if isinstance(base_eos, list) else [base_eos]
    stops = list(dict.fromkeys(i for i in [tok.eos_token_id, *base_eos] if i is not None))
    return GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=stops[0] if len(stops) == 1 else stops,
        pad_token_id=tok.pad_token_id,
        do_sample=False,
    )


def _log_step(cfg: Config, metrics: dict[str, Any], log_path: Path, run_id: str | None) -> None:
    with log_path.open("a") as f:
        f.write(json.dumps(metrics) + "\n")
    if run_id:
        from agentflan.tracking import log_metrics

        log_metrics(cfg, run_id, {k: v for k, v in metrics.items() if k != "step"}, metrics["step"])


def _start_log(log_path: Path, state: TrainState) -> None:
    """Rank 0: drop the log lines after the resume step, and record the attempt (where it started, the world,
    how many parameters rank 0 holds: about 1/world of them under ZeRO-3)."""
    _truncate_log(log_path, state.start_step)  # steps after the checkpoint will be trained again
    attempt = {
        "start_step": state.start_step,
        "world_size": state.world,
        "params_total": state.params_total,
        "params_on_rank0": state.params_local,
        "attn_implementation": state.attn_implementation,
        "loss": state.loss,
        "time": time.time(),
    }
    with (log_path.parent / "attempts.jsonl").open("a") as f:
        f.write(json.dumps(attempt) + "\n")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train entry: rows read from the shards, rank from the train context, reports to Ray."""
    import ray.train

    cfg = Config.model_validate(config["cfg"])
    t = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    state = setup(
        cfg,
        worker_rows(config, "rows"),
        worker_rows(config, "val_rows"),
        config["tokenizer_dir"],
        rank,
        world,
        ctx.get_local_rank(),
    )
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            load_checkpoint(state, d)
    log_path = Path(config["steps_log"])
    if rank == 0:
        _start_log(log_path, state)

    for step in range(state.start_step, state.steps):
        metrics = train_step(state, step)
        if rank == 0:
            _log_step(cfg, metrics, log_path, config.get("run_id"))
        done = step + 1 == state.steps
        if (step + 1) % t.checkpoint_every == 0 or (done and t.save_final):
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(state, tmp, step + 1)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        elif "val_loss" in metrics or done:
            # ray.train.report is a barrier across workers (~1.7 s a call here, 5x a tiny model's step):
            # only checkpoints, validation losses and the end go through it; every step goes to MLflow and
            # the log.
            ray.train.report(metrics)
    if t.save_final:
        save_model(state, Path(config["model_dir"]), config["tokenizer_dir"])


def train_single_process(
    cfg: Config,
    rows: pa.Table | PackedShards,
    val_rows: pa.Table | PackedShards | None,
    tokenizer_dir: str,
    output_dir: Path,
    run_id: str | None = None,
) -> list[dict[str, Any]]:
    """The same loop in this process, world size 1, without Ray: what tests and benchmarks call.

    Writes ``train/steps.jsonl`` and (with ``train.save_final``) ``model/`` under ``output_dir``; a checkpoint
    every ``train.checkpoint_every`` steps under ``train/checkpoints/step_N``. Returns the step metrics."""
    import deepspeed

    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cfg.train.scaling.use_gpu else "gloo")
    state = setup(cfg, rows, val_rows, tokenizer_dir, rank=0, world=1, local_rank=0)
    log_path = output_dir / "train" / "steps.jsonl"
    _start_log(log_path, state)
    logged = []
    for step in range(state.steps):
        metrics = train_step(state, step)
        _log_step(cfg, metrics, log_path, run_id)
        logged.append(metrics)
        if (step + 1) % cfg.train.checkpoint_every == 0:
            save_checkpoint(state, str(output_dir / "train" / "checkpoints" / f"step_{step + 1}"), step + 1)
    if cfg.train.save_final:
        save_model(state, output_dir / "model", tokenizer_dir)
    return logged


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _truncate_log(path: Path, last_step: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = []
    if path.exists():
        kept = [
            line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step
        ]
    path.write_text("".join(line + "\n" for line in kept))
