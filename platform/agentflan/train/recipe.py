"""The fine-tuning recipe: corpus -> packed rows -> Ray Train (DeepSpeed) -> saved model, tracked in MLflow.

Read top to bottom: :func:`run_train` makes sure the corpus exists, tokenizes and packs it once into
parquet shards, opens the MLflow run, starts a ``TorchTrainer`` whose workers run
:func:`agentflan.train.loop.train_loop_per_worker` (each reads the rows of its steps from the shards, on the
shared ``output_dir``), and closes the run FINISHED or FAILED. A one-worker CPU Tune trial runs the same
loop in its own process instead (``in_process``), without a worker group.

Resuming: Ray Train keeps checkpoints under ``<storage>/<name>``; a run started again with the same spec
and output dir finds the latest one (``ray.train.get_checkpoint``) and continues from its step. Workers
that die mid-run are restarted from the last checkpoint up to ``train.max_failures`` times.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentflan.config import Config
from agentflan.console import count
from agentflan.train.data import prepare

if TYPE_CHECKING:  # torch loads with the checkpoints: not on the driver of a study
    from agentflan.train.checkpoint import Checkpoints


def storage_path(cfg: Config) -> str:
    return cfg.train.storage_path or str((Path(cfg.output_dir) / "ray").resolve())


def trainer_name(cfg: Config) -> str:
    return f"{cfg.name}-train"


def run_train(
    cfg: Config,
    progress: Callable[[str], None] = lambda s: None,
    *,
    tags: dict[str, str] | None = None,
    callbacks: list[Any] | None = None,
    in_process: Checkpoints | None = None,
) -> dict[str, Any]:
    """Train; returns a summary (final step metrics, model path or None without ``train.save_final``, MLflow
    run id).

    ``tags`` go on the MLflow run (a Tune trial adds its parent run); ``callbacks`` on Ray Train's
    ``RunConfig`` (a Tune trial adds ``TuneReportCallback``, which forwards every report to Tune).
    ``in_process``: train here, world size 1, without a Ray Train worker group, checkpointing through it (a
    one-worker CPU Tune trial, whose own process is a Ray worker already: see :mod:`agentflan.tune.trial`).
    """
    from agentflan import tracking
    from agentflan.ray_utils import ensure_ray
    from agentflan.train.deepspeed_config import total_steps
    from agentflan.train.shards import shard_rows

    out = Path(cfg.output_dir).resolve()
    t = cfg.train
    progress("train: tokenizing and packing the corpus")
    packed = prepare(cfg)
    n_rows = shard_rows(packed.train)
    ensure_ray()
    run_id = tracking.start_run(cfg, f"{cfg.name}-train", tags={"agentflan.stage": "train", **(tags or {})})
    manifest = out / "manifest.json"
    if manifest.exists():
        tracking.client(cfg).log_artifact(run_id, str(manifest))
    tracking.log_json(cfg, run_id, packed.stats, "packing_stats.json")
    model_dir = out / "model"
    steps_log = out / "train" / "steps.jsonl"
    loop_config = {
        "cfg": cfg.model_dump(mode="json"),
        "rows_dir": str(packed.train.resolve()),  # workers read the rows of their steps, not the table
        "val_rows_dir": str(packed.validation.resolve()),
        "tokenizer_dir": str(packed.tokenizer_dir),
        "model_dir": str(model_dir),
        "steps_log": str(steps_log),
        "run_id": run_id,
    }
    steps_total = total_steps(cfg, n_rows)
    workers = "this process" if in_process is not None else f"{t.scaling.num_workers} workers"
    progress(
        f"train: {workers}, ZeRO-{t.deepspeed.zero_stage}, {n_rows} rows of {t.seq_len}, {steps_total} steps"
    )
    with tracking.run_status(cfg, run_id), _watch_steps(steps_log, steps_total, progress):
        if in_process is not None:  # the rows read as a Ray Train worker reads them (worker_rows)
            from agentflan.train.loop import train_single_process
            from agentflan.train.shards import worker_rows

            rows, val_rows = worker_rows(loop_config, "rows"), worker_rows(loop_config, "val_rows")
            train_single_process(cfg, rows, val_rows, loop_config["tokenizer_dir"], out, run_id, in_process)
        else:
            _fit_on_ray(cfg, loop_config, callbacks)
        if t.save_final:  # without it no model is written: log no path that does not exist
            tracking.client(cfg).set_tag(run_id, "agentflan.model_dir", str(model_dir))
            tracking.client(cfg).log_param(run_id, "model_path", str(model_dir))
    steps = [json.loads(line) for line in steps_log.read_text().splitlines()]
    _log_plots(cfg, run_id, steps_log, manifest)
    summary = {
        "run_id": run_id,
        "model_dir": str(model_dir) if t.save_final else None,
        "steps": len(steps),
        "final": steps[-1] if steps else {},
        "packing": packed.stats,
    }
    (out / "train" / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _fit_on_ray(cfg: Config, loop_config: dict[str, Any], callbacks: list[Any] | None) -> None:
    """The Ray Train fit: ``train.scaling`` workers running the loop, Ray Train keeping the checkpoints and
    restarting the group up to ``train.max_failures`` times."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from agentflan.train.loop import train_loop_per_worker

    t = cfg.train
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=t.scaling.num_workers,
            use_gpu=t.scaling.use_gpu,
            resources_per_worker=dict(t.scaling.resources_per_worker),
        ),
        run_config=RunConfig(
            name=trainer_name(cfg),
            storage_path=storage_path(cfg),
            checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
            failure_config=FailureConfig(max_failures=t.max_failures),
            callbacks=callbacks,
        ),
    )
    result = trainer.fit()
    if result.error:
        raise result.error


def _log_plots(cfg: Config, run_id: str, steps_log: Path, manifest: Path) -> None:
    """Loss curves and the mixture's composition, as PNGs in ``train/plots`` and in the MLflow run."""
    from agentflan import plots, tracking

    out = Path(cfg.output_dir) / "train" / "plots"
    made = []
    if steps_log.exists() and steps_log.read_text().strip():
        made.append(plots.loss_curves(steps_log, out / "loss.png"))
    if manifest.exists():
        made.append(plots.mixture_composition(json.loads(manifest.read_text()), out / "mixture.png"))
    for path in made:
        tracking.client(cfg).log_artifact(run_id, str(path), "plots")


@contextlib.contextmanager
def _watch_steps(steps_log: Path, total: int, progress: Callable[[str], None]) -> Iterator[None]:
    """Move the console's training bar from the steps log rank 0 writes (the driver sees no worker)."""
    stop = threading.Event()

    def poll() -> None:
        while True:
            last = _last_step(steps_log)
            if last:
                info = {
                    "loss": last["loss"],
                    **({"val_loss": last["val_loss"]} if "val_loss" in last else {}),
                }
                count(progress, "train", last["step"], total, unit="steps", **info)
            if stop.wait(1.0):
                return

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _last_step(steps_log: Path) -> dict[str, Any] | None:
    try:
        lines = [line for line in steps_log.read_text().splitlines() if line.strip()]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None
