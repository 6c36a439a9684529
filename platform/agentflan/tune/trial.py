"""One Tune trial: re-mix the decomposed corpus, train, evaluate, report.

Training, two ways, one loop (:func:`agentflan.train.loop.fit`):

* **Ray Train inside the trial** (the Train V2 pattern): the trial is a plain function that builds a
  ``TorchTrainer`` whose ``RunConfig`` carries ``TuneReportCallback``, so every ``ray.train.report`` of
  rank 0 (validation steps, checkpoints, the last step) reaches Tune as a trial result, where ASHA can stop
  the trial.
* **In the trial's own process** when a trial trains on one CPU worker (:func:`trains_in_trial`): the trial is
  a Ray worker already, holding that worker's resources too (:func:`trial_bundle`), so it trains there, world
  size 1, and reports the same results to Tune itself (:class:`TuneReports`). A worker group would only add
  a process start and its imports (~10 s of a ~20 s CPU trial here).

After training the trial evaluates its model and reports the final metrics once more.

A trial writes under ``<study>/trials/<trial id>/`` (corpus, packed rows, model, eval report). Its MLflow
run is the training run, a child of the study's parent run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentflan.config import Config
from agentflan.tune.space import SearchSpace, apply, resolve, trial_values


@dataclass(frozen=True)
class StudyContext:
    """What every trial needs from the study (passed with ``tune.with_parameters``)."""

    spec: dict[str, Any]  # the pipeline config (JSON), base of every trial
    space: dict[str, Any]  # the search space (JSON)
    base_dir: str  # the decomposed corpus and the held-out split every trial shares
    study_dir: str
    tokenizer_dir: str | None  # the study's tokenizer when the spec trains one (embedded default)
    parent_run_id: str
    tracking_uri: str


def trial_config(ctx: StudyContext, values: dict[str, Any], trial_id: str) -> Config:
    """The pipeline config of one trial: the spec, the trial's values, and what the study pins."""
    spec = Config.model_validate(ctx.spec)
    space = SearchSpace.model_validate(ctx.space)
    overrides = resolve(trial_values(space, values), spec)
    t = spec.tune
    pinned: dict[str, Any] = {
        "name": f"{space.name}-{trial_id}",
        "output_dir": str(Path(ctx.study_dir) / "trials" / trial_id),
        "data.split_seed": spec.data.split_seed if spec.data.split_seed is not None else spec.seed,
        "data.heldout_from": ctx.base_dir,
        "train.keep_checkpoints": 1,
        "mlflow.tracking_uri": ctx.tracking_uri,
    }
    if ctx.tokenizer_dir:
        pinned["train.model.tokenizer"] = ctx.tokenizer_dir
    if space.scheduler.kind == "asha" and spec.train.eval_every is None:
        pinned["train.eval_every"] = space.scheduler.eval_every
    if t.num_workers:
        pinned["train.scaling.num_workers"] = t.num_workers
    if t.resources_per_worker:
        pinned["train.scaling.resources_per_worker"] = t.resources_per_worker
    # A CPU trial evaluates in its own process, on the CPU it holds (tune.trial_resources): an actor would need
    # a CPU outside the trial's bundle, which the next trial's trainers may hold, and leave the trial pending.
    if not spec.eval.use_gpu:
        pinned["eval.num_actors"] = 0
    if not spec.rollout.backend.use_gpu:
        pinned["rollout.backend.num_actors"] = 0
    return apply(spec, {**overrides, **pinned})


def _one_cpu_worker(num_workers: int, use_gpu: bool) -> bool:
    return num_workers == 1 and not use_gpu


def trains_in_trial(cfg: Config) -> bool:
    """Whether the trial of ``cfg`` (a trial's config: :func:`trial_config`) trains in its own process."""
    return _one_cpu_worker(cfg.train.scaling.num_workers, cfg.train.scaling.use_gpu)


def trial_bundle(spec: Config) -> dict[str, float]:
    """The resources one trial function holds: its own (``tune.trial_resources``), plus the training worker's
    when it trains in its own process. (A worker group's workers hold theirs themselves.)"""
    bundle = dict(spec.tune.trial_resources)
    scaling = spec.train.scaling
    if _one_cpu_worker(spec.tune.num_workers or scaling.num_workers, scaling.use_gpu):
        for k, v in (spec.tune.resources_per_worker or scaling.resources_per_worker).items():
            bundle[k] = bundle.get(k, 0.0) + v
    return bundle


class TuneReports:
    """The checkpoints of a trial trained in its own process (``train/checkpoints`` under its output dir, the
    newest ``train.keep_checkpoints`` kept; a restarted trial resumes from them), reporting to Tune what a
    Ray Train worker would pass to ``ray.train.report``: validation steps, checkpoints and the last step."""

    def __init__(self, local: Any) -> None:
        self.local = local  # agentflan.train.checkpoint.LocalCheckpoints (torch: imported in the trial only)

    def latest(self):
        return self.local.latest()

    def report(self, metrics: dict[str, Any], save: Any, done: bool) -> None:
        from ray import tune

        self.local.report(metrics, save, done)
        if save is not None or "val_loss" in metrics or done:
            tune.report(metrics)


def final_metrics(summary: dict[str, Any], report: dict[str, Any] | None) -> dict[str, float]:
    from agentflan.eval.run import flat_metrics

    final = summary["final"]
    out = {"step": float(final.get("step", 0)), "loss": float(final.get("loss", float("nan")))}
    if "val_loss" in final:
        out["val_loss"] = float(final["val_loss"])
    if report is not None:
        out.update(flat_metrics(report))
    return out


def run_trial(config: dict[str, Any], ctx: StudyContext) -> None:
    """The Tune trainable."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from agentflan import tracking
    from agentflan.data.pipeline import remix
    from agentflan.eval.run import run_eval
    from agentflan.train.recipe import run_train

    t0 = time.time()
    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(ctx, config, trial_id)
    remix(cfg, ctx.base_dir)
    tags = {
        "mlflow.parentRunId": ctx.parent_run_id,
        "agentflan.study": SearchSpace.model_validate(ctx.space).name,
        "agentflan.trial": trial_id,
    }
    if trains_in_trial(cfg):
        from agentflan.train.checkpoint import LocalCheckpoints
        from agentflan.train.loop import local_checkpoint_dir

        local = LocalCheckpoints(local_checkpoint_dir(Path(cfg.output_dir)), cfg.train.keep_checkpoints)
        summary = run_train(cfg, tags=tags, in_process=TuneReports(local))
    else:
        summary = run_train(cfg, tags=tags, callbacks=[TuneReportCallback()])
    client = tracking.client(cfg)
    for name, value in config.items():
        client.log_param(summary["run_id"], f"trial.{name}", value)
    report = run_eval(cfg) if cfg.tune.evaluate else None
    metrics = final_metrics(summary, report)
    metrics["trial_seconds"] = time.time() - t0
    Path(cfg.output_dir, "trial.json").write_text(
        json.dumps({"trial_id": trial_id, "config": config, "metrics": metrics}, indent=2, default=str)
    )
    tune.report(metrics)
