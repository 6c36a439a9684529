"""``agentflan tune SPEC SPACE``: a Ray Tune study over the Agent-FLAN mixture, tracked in MLflow.

1. The base corpus is built once from the spec under ``output_dir`` (reused when current): pass A decides
   inputs, filters and alignment for every trial. With the embedded default, one tokenizer is trained on
   it and shared, so every trial's validation loss is measured on the same tokens.
2. A parent MLflow run is opened for the study; each trial (:mod:`agentflan.tune.trial`) re-mixes the
   decomposed corpus, trains (through Ray Train, or in its own process when it has one CPU worker) and
   evaluates, in a child run.
3. Ray Tune runs the trials: grid, random or Optuna search; optional ASHA on the validation loss;
   ``tune.max_concurrent_trials`` and ``tune.trial_resources`` from the spec.
4. ``results.csv``, ``results.md`` (every trial, and the paper-style table of the space's ``report``) and
   plots (objective against each parameter, loss curves) go to ``<output_dir>/tune/<space name>/`` and to
   the parent run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentflan.config import Config
from agentflan.tune import report as rep
from agentflan.tune.space import SearchSpace, tune_domains
from agentflan.tune.trial import StudyContext, run_trial, trial_bundle


def study_dir(cfg: Config, space: SearchSpace) -> Path:
    return Path(cfg.output_dir) / "tune" / space.name


def base_corpus(cfg: Config, progress: Callable[[str], None]) -> None:
    """The corpus every trial re-mixes: the spec's own, built unless current."""
    from agentflan.data.pipeline import NO_CORPUS, corpus_staleness, run_data

    stale = corpus_staleness(cfg)
    if stale is None:
        progress(f"base corpus under {cfg.output_dir} is current")
        return
    progress("building the base corpus" if stale == NO_CORPUS else f"rebuilding the base corpus: {stale}")
    run_data(cfg, progress)


def study_tokenizer(cfg: Config, directory: Path) -> str | None:
    """With no model given, one BPE tokenizer trained on the base corpus's training split, for all trials."""
    from agentflan.train.corpus import corpus_split
    from agentflan.train.tokenizer import load_tokenizer

    m = cfg.train.model
    if m.tokenizer or m.name_or_path:
        return None
    if not (directory / "tokenizer.json").exists():
        texts = [text for c in corpus_split(Path(cfg.output_dir), "train") for text in c.texts()]
        load_tokenizer(cfg, texts, directory)
    return str(directory)


def _searcher(space: SearchSpace, max_concurrent: int):
    """Grid and random: Ray Tune's variant generator, seeded (it takes the concurrency limit itself);
    Optuna's TPE otherwise (Tune wraps it in a ConcurrencyLimiter)."""
    if space.search.kind != "optuna":
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(random_state=space.search.seed, max_concurrent=max_concurrent)
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(metric=space.objective.metric, mode=space.objective.mode, seed=space.search.seed)


def _scheduler(space: SearchSpace, cfg: Config):
    s = space.scheduler
    if s.kind == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    from agentflan.train.deepspeed_config import total_steps

    max_t = s.max_t or cfg.train.max_steps or total_steps(cfg, 1 << 30)
    return ASHAScheduler(
        time_attr="step",
        metric=s.metric,
        mode=s.mode,
        max_t=max_t,
        grace_period=min(s.grace_period, max_t),
        reduction_factor=s.reduction_factor,
        # A trial that reaches max_t finishes on its own (and is evaluated); stopping it there, ASHA's
        # default, kills the trial while its Ray Train run winds down, which leaked the run's placement
        # group here and starved the next trial.
        stop_last_trials=False,
    )


class StudyError(RuntimeError):
    """A study that cannot run as configured, reported before any trial starts."""


def check_fits(cfg: Config, cluster: dict[str, float]) -> None:
    """One trial (its driver and its training workers) must fit the Ray cluster, else Tune waits forever.
    Checked against a local instance only: an autoscaling cluster may grow to fit."""
    t = cfg.train.scaling
    workers = cfg.tune.num_workers or t.num_workers
    per_worker = dict(cfg.tune.resources_per_worker or t.resources_per_worker)
    if t.use_gpu:
        per_worker.setdefault("GPU", 1.0)
    need = dict(cfg.tune.trial_resources)
    for k, v in per_worker.items():
        need[k] = need.get(k, 0.0) + workers * v
    short = {k: (v, cluster.get(k, 0.0)) for k, v in need.items() if v > cluster.get(k, 0.0) + 1e-9}
    if short:
        detail = ", ".join(f"{k}: needs {n:g}, has {h:g}" for k, (n, h) in short.items())
        raise StudyError(
            f"one trial does not fit this Ray instance ({detail}); lower tune.trial_resources, "
            "tune.resources_per_worker or tune.num_workers"
        )


def run_study(
    cfg: Config, space: SearchSpace, progress: Callable[[str], None] = lambda s: None
) -> dict[str, Any]:
    """Run the study; returns its summary (rows, best trial, paper table, paths, parent run id)."""
    import os

    import ray
    from ray import tune

    from agentflan import tracking
    from agentflan.ray_utils import ensure_ray

    ensure_ray()
    if not os.environ.get("RAY_ADDRESS"):
        check_fits(cfg, ray.cluster_resources())
    out = study_dir(cfg, space)
    out.mkdir(parents=True, exist_ok=True)
    base_corpus(cfg, progress)
    tokenizer = study_tokenizer(cfg, out / "tokenizer")
    parent = tracking.start_run(
        cfg, f"{space.name}-study", tags={"agentflan.stage": "tune", "agentflan.study": space.name}
    )
    tracking.log_json(cfg, parent, space.model_dump(mode="json"), "search_space.json")
    ctx = StudyContext(
        spec=cfg.model_dump(mode="json"),
        space=space.model_dump(mode="json"),
        base_dir=str(Path(cfg.output_dir).resolve()),
        study_dir=str(out.resolve()),
        tokenizer_dir=tokenizer,
        parent_run_id=parent,
        tracking_uri=tracking.tracking_uri(cfg),
    )
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), trial_bundle(cfg))
    tuner = tune.Tuner(
        trainable,
        param_space=tune_domains(space),
        tune_config=tune.TuneConfig(
            num_samples=space.search.num_samples,
            search_alg=_searcher(space, cfg.tune.max_concurrent_trials),
            scheduler=_scheduler(space, cfg),
            max_concurrent_trials=cfg.tune.max_concurrent_trials if space.search.kind == "optuna" else None,
            # Trials hold the same bundle: the next one runs in the last one's process, its imports
            # (torch, transformers, DeepSpeed) done. A trial ASHA stopped mid-run is not reused (Tune waits
            # 2 s for its function to end, then starts a fresh process).
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=space.name,
            storage_path=cfg.tune.storage_path or str((out / "ray").resolve()),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
        ),
    )
    progress(f"tune: study {space.name!r}, {space.search.kind} search, scheduler {space.scheduler.kind}")
    with tracking.run_status(cfg, parent):
        grid = tuner.fit()
        rows = []
        for result in grid:
            metrics = dict(result.metrics or {})
            trial_id = str(metrics.get("trial_id") or Path(result.path).name)
            rows.append(rep.trial_row(trial_id, dict(result.config or {}), metrics, result.error is not None))
        rows.sort(key=lambda r: r["trial"])
        _close_children(cfg, space, rows)
        summary = _write(cfg, space, out, rows, parent)
    return summary


def _close_children(cfg: Config, space: SearchSpace, rows: list[dict[str, Any]]) -> None:
    """Child runs of trials ASHA stopped (their process was ended mid-training) are marked KILLED."""
    from agentflan import tracking

    client = tracking.client(cfg)
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    status = {r["trial"]: r["status"] for r in rows}
    for run in client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`agentflan.study` = '{space.name}' and attributes.status = 'RUNNING'",
    ):
        trial = run.data.tags.get("agentflan.trial")
        if trial in status:
            client.set_tag(run.info.run_id, "agentflan.trial_status", status[trial])
            client.set_terminated(run.info.run_id, "KILLED")


def _write(
    cfg: Config, space: SearchSpace, out: Path, rows: list[dict[str, Any]], parent: str
) -> dict[str, Any]:
    from agentflan import tracking

    rep.write_csv(rows, out / "results.csv")
    table = rep.paper_table(rows, space)
    best = rep.best(rows, space)
    best_line = (
        f"best ({space.objective.mode} {space.objective.metric}): trial {best['trial']} "
        + ", ".join(f"{k.removeprefix('param.')}={v}" for k, v in best.items() if k.startswith("param."))
        + f" -> {best[space.objective.metric]:.4f}"
        if best
        else "best: no trial reported the objective"
    )
    md = "\n\n".join(
        part
        for part in [
            f"# Study `{space.name}`",
            space.description.strip(),
            table,
            "## Trials",
            rep.trials_markdown(rows, space),
            best_line,
        ]
        if part
    )
    (out / "results.md").write_text(md + "\n")
    plots = rep.plots(rows, space, out)
    client = tracking.client(cfg)
    for path in [out / "results.csv", out / "results.md"]:
        client.log_artifact(parent, str(path))
    for path in plots:
        client.log_artifact(parent, str(path), "plots")
    if best:
        tracking.log_metrics(
            cfg, parent, {f"best.{space.objective.metric}": best[space.objective.metric]}, step=0
        )
        client.set_tag(parent, "agentflan.best_trial", best["trial"])
    summary = {
        "study": space.name,
        "parent_run_id": parent,
        "study_dir": str(out),
        "rows": rows,
        "best": best,
        "table": table,
        "best_line": best_line,
        "plots": [str(p) for p in plots],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
