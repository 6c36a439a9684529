"""The training loop, one for every entry: :func:`setup`, :func:`train_step`, checkpoints, the export, and
:func:`cleanup`, driven by :func:`fit`.

Two entries run it: :func:`train_loop_per_worker` on a Ray Train worker (checkpoints to and from Ray Train),
and :func:`train_single_process` in this process, world size 1, without Ray (checkpoints under the output
dir): both resume from their latest checkpoint, keep ``train.keep_checkpoints`` and checkpoint the last step
with ``train.save_final``. Ray appears only in the first entry and in
:class:`~agentflan.train.checkpoint.RayCheckpoints`; DeepSpeed only behind
:class:`~agentflan.train.strategy.DeepSpeedStrategy`.

Loss: the mean over every trained token of the global batch, whatever the split into micro-batches,
accumulation steps and workers (see :mod:`agentflan.train.loss`). The rows of a step are known to every
worker (:func:`agentflan.train.sampling.step_rows`), so the global token count needs no communication.

Loading: the model is built in the training dtype (bf16 on GPU), directly on the worker's device; under ZeRO-3
partitioned as it is built (:func:`agentflan.train.model.training_model`): a checkpoint by
:func:`~agentflan.train.zero3_loading.load_partitioned`, each rank reading only its own slices, a config inside
transformers' ``zero.Init``. No rank ever holds the whole model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from agentflan.config import Config
from agentflan.train.batches import PackedBatches, Prefetcher
from agentflan.train.checkpoint import (
    Checkpoints,
    LocalCheckpoints,
    RayCheckpoints,
    load_checkpoint,
    save_checkpoint,
)
from agentflan.train.deepspeed_config import total_steps
from agentflan.train.export import save_model
from agentflan.train.heldout import heldout_loss
from agentflan.train.loss import CausalLMWithLoss, resolve_loss_implementation
from agentflan.train.model import (
    compile_layers,
    freed_memory_returned,
    resolve_attn_implementation,
    set_gradient_checkpointing,
    training_model,
)
from agentflan.train.sampling import step_rows
from agentflan.train.shards import PackedShards, worker_rows
from agentflan.train.step_log import StepLog
from agentflan.train.strategy import DeepSpeedStrategy, parameter_counts


@dataclass
class TrainState:
    """Everything :func:`train_step` needs; built once by :func:`setup`."""

    cfg: Config
    strategy: DeepSpeedStrategy
    rows: PackedBatches
    val_rows: PackedBatches | None
    tokenizer_dir: str
    steps: int
    attn_implementation: str
    loss: str
    params_total: int = 0  # the model's parameters
    params_local: int = 0  # the ones this rank holds (about params_total / world under ZeRO-3)
    start_step: int = 0
    prefetcher: Prefetcher | None = None

    @property
    def rank(self) -> int:
        return self.strategy.rank

    @property
    def world(self) -> int:
        return self.strategy.world

    @property
    def device(self) -> torch.device:
        return self.strategy.device

    @property
    def engine(self) -> Any:
        return self.strategy.engine


def setup(
    cfg: Config,
    rows: pa.Table | PackedShards,
    val_rows: pa.Table | PackedShards | None,
    tokenizer_dir: str,
    rank: int,
    world: int,
    local_rank: int,
    single_process: bool = False,
) -> TrainState:
    """Device and process group, model (in its dtype, partitioned under ZeRO-3), loss wrapper, optimizer,
    schedule, engine. ``single_process``: no Ray Train set up a process group, make one of one."""
    from transformers import AutoTokenizer

    t = cfg.train
    strategy = DeepSpeedStrategy(cfg, rank, world, local_rank)
    if single_process or t.deepspeed.zero_stage == 3:
        strategy.init_distributed(single_process)
    device = strategy.device
    attn = resolve_attn_implementation(t.model.attn_implementation, device)
    loss = resolve_loss_implementation(t.loss, device, t.deepspeed.zero_stage)
    packed = PackedBatches(rows, pin=device.type == "cuda")
    steps = total_steps(cfg, packed.n_rows)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    specials = (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    with freed_memory_returned():
        model, strategy.hf_ds_config = training_model(
            cfg, len(tok), specials, strategy.dtype, attn, device, strategy.ds_config
        )
    set_gradient_checkpointing(model, t.model.gradient_checkpointing)
    if t.model.compile:
        compile_layers(model)
    engine = strategy.prepare(CausalLMWithLoss(model, loss, t.loss_chunk_tokens, attn), steps)
    params_total, params_local = parameter_counts(engine.module)
    return TrainState(
        cfg=cfg,
        strategy=strategy,
        rows=packed,
        val_rows=PackedBatches(val_rows) if val_rows is not None and len(val_rows) else None,
        tokenizer_dir=tokenizer_dir,
        steps=steps,
        attn_implementation=attn,
        loss=loss,
        params_total=params_total,
        params_local=params_local,
    )


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
    strategy, world, device = state.strategy, state.world, state.device
    t0 = time.perf_counter()
    every = step_rows(
        step, 0, 1, t.micro_batch_size * world, t.grad_accum_steps, state.rows.n_rows, state.cfg.seed
    )
    global_tokens = max(1, state.rows.trained_tokens([i for mb in every for i in mb]))
    loss_total = torch.zeros((), device=device)
    real = slots = 0
    data_wait = 0.0
    clock = PhaseClock(device)
    for _ in range(t.grad_accum_steps):
        batch, waited = state.prefetcher.next()
        data_wait += waited
        clock.mark()
        loss_sum, _ = strategy.engine(**batch.model_kwargs())
        clock.mark("forward_s")
        # DeepSpeed averages gradients over workers: scale by world so the sum is the global mean.
        strategy.backward(loss_sum * world / global_tokens)
        clock.mark("backward_s")
        strategy.step()  # the optimizer steps at the last micro-batch; ZeRO's reductions happen here and in backward
        clock.mark("optimizer_s")
        loss_total += loss_sum.detach().float()
        real += batch.n_real
        slots += batch.slots
    counts = torch.tensor([float(real), float(slots)], device=device)
    strategy.all_reduce(loss_total)
    strategy.all_reduce(counts)
    loss_value = loss_total.item() / global_tokens  # .item() waits for the step: the timing below is real
    elapsed = time.perf_counter() - t0
    metrics: dict[str, Any] = {
        "step": step + 1,
        "loss": loss_value,
        "lr": strategy.lr(),
        "tokens_per_s": counts[0].item() / elapsed,
        "real_token_share": counts[0].item() / counts[1].item(),
        "trained_tokens": global_tokens,
        "step_time_s": elapsed,
        "data_wait_s": data_wait,
        **clock.totals(),
    }
    if device.type == "cuda":
        metrics["gpu_peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    done = step + 1 == state.steps
    if done or (t.eval_every and (step + 1) % t.eval_every == 0):
        val = validation_loss(state)
        if val is not None:
            metrics["val_loss"] = val
    return metrics


class PhaseClock:
    """Seconds spent in each phase of a step (forward, backward, optimizer), summed over its micro-batches.

    On a GPU it records CUDA events on the current stream and reads them once, after the step has synced
    (``loss.item()``), so it adds no synchronisation; a phase's time is the stream's time between its marks,
    host stalls included (an offloaded optimizer's CPU work shows in ``optimizer_s``). On a CPU, wall time."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str | None, Any]] = []

    def mark(self, phase: str | None = None) -> None:
        """End ``phase`` (None: only start timing) and start the next one."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        else:
            event = time.perf_counter()
        self.marks.append((phase, event))

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for (_, start), (phase, end) in zip(self.marks, self.marks[1:], strict=False):
            if phase is None:
                continue
            seconds = start.elapsed_time(end) / 1e3 if self.cuda else end - start
            out[phase] = out.get(phase, 0.0) + seconds
        return out


def validation_loss(state: TrainState) -> float | None:
    """Mean token loss over the packed validation rows, split across workers (:func:`heldout_loss`).

    Validation records carry every trained turn unweighted (see :mod:`agentflan.data.mixture`), so trials
    with different capability weights are scored on the same tokens."""
    if state.val_rows is None:
        return None
    state.engine.eval()
    loss, _ = heldout_loss(
        state.engine, state.val_rows, state.cfg.train.micro_batch_size, state.device, state.rank, state.world
    )
    state.engine.train()
    return loss


def fit(
    state: TrainState, checkpoints: Checkpoints, log: StepLog | None, model_dir: Path
) -> list[dict[str, Any]]:
    """Resume from the latest checkpoint, train to the last step, checkpoint every ``train.checkpoint_every``
    steps and (with ``train.save_final``) the last one, then export the model. ``log`` is rank 0's. Returns
    the metrics of the steps trained here."""
    t = state.cfg.train
    with checkpoints.latest() as directory:
        if directory is not None:
            state.start_step = load_checkpoint(state.strategy, directory)
            state.prefetcher = None
    if log is not None:
        log.start(
            state.start_step,
            world_size=state.world,
            params_total=state.params_total,
            params_on_rank0=state.params_local,  # about 1/world of them under ZeRO-3
            attn_implementation=state.attn_implementation,
            loss=state.loss,
        )
    trained = []
    for step in range(state.start_step, state.steps):
        metrics = train_step(state, step)
        if log is not None:
            log.log(metrics)
        done = step + 1 == state.steps
        save = (step + 1) % t.checkpoint_every == 0 or (done and t.save_final)
        checkpoints.report(metrics, _saver(state, step + 1) if save else None, done)
        trained.append(metrics)
    if t.save_final:
        save_model(state.strategy, model_dir, state.tokenizer_dir)
    return trained


def _saver(state: TrainState, step: int):
    return lambda directory: save_checkpoint(state.strategy, directory, step)


def cleanup(state: TrainState) -> None:
    """Release what :func:`setup` took (the engine, transformers' ZeRO-3 switch), so the next run in this
    process starts clean."""
    state.prefetcher = None
    state.strategy.cleanup()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train entry: rows read from the shards, rank from the train context, reports to Ray."""
    import ray.train

    cfg = Config.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    state = setup(
        cfg,
        worker_rows(config, "rows"),
        worker_rows(config, "val_rows"),
        config["tokenizer_dir"],
        rank,
        ctx.get_world_size(),
        ctx.get_local_rank(),
    )
    log = StepLog(cfg, Path(config["steps_log"]), config.get("run_id")) if rank == 0 else None
    try:
        fit(state, RayCheckpoints(), log, Path(config["model_dir"]))
    finally:
        cleanup(state)


def local_checkpoint_dir(output_dir: Path) -> Path:
    """Where :func:`train_single_process` keeps its checkpoints by default."""
    return Path(output_dir) / "train" / "checkpoints"


def train_single_process(
    cfg: Config,
    rows: pa.Table | PackedShards,
    val_rows: pa.Table | PackedShards | None,
    tokenizer_dir: str,
    output_dir: Path,
    run_id: str | None = None,
    checkpoints: Checkpoints | None = None,
) -> list[dict[str, Any]]:
    """The same loop in this process, world size 1, without Ray Train: what a one-worker CPU Tune trial
    (:mod:`agentflan.tune.trial`), tests and benchmarks call.

    Writes ``train/steps.jsonl`` and (with ``train.save_final``) ``model/`` under ``output_dir``; a checkpoint
    every ``train.checkpoint_every`` steps (and at the last, with ``train.save_final``) under
    ``train/checkpoints/step_N``, the newest ``train.keep_checkpoints`` kept; started again, it resumes from
    the newest. ``checkpoints`` replaces that home (a Tune trial's also reports to Tune). Returns the metrics
    of the steps trained in this call."""
    output_dir = Path(output_dir)
    state = setup(cfg, rows, val_rows, tokenizer_dir, rank=0, world=1, local_rank=0, single_process=True)
    if checkpoints is None:
        checkpoints = LocalCheckpoints(local_checkpoint_dir(output_dir), cfg.train.keep_checkpoints)
    try:
        return fit(
            state,
            checkpoints,
            StepLog(cfg, output_dir / "train" / "steps.jsonl", run_id),
            output_dir / "model",
        )
    finally:
        cleanup(state)
