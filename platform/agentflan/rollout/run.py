"""``agentflan rollout`` (and the rollout part of ``agentflan eval``): load the environments ``rollout.envs``
names, run their episodes against ``rollout.backend``, write ``<output_dir>/rollout/`` and log to MLflow.

Environments are imported only when named: ``bfcl_multi_turn`` needs ``bfcl-eval``, which a corpus-only
install lacks.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentflan.backends import Backend, make_backend
from agentflan.calls import CallSyntax, syntax_for
from agentflan.config import Config
from agentflan.console import count
from agentflan.rollout import report as rollout_report
from agentflan.rollout.engine import run_episodes
from agentflan.rollout.trajectories import write_kept, write_trajectories
from agentflan.rollout.types import EnvironmentFactory

ENVS = {
    "bfcl_multi_turn": ("agentflan.rollout.envs.bfcl_multi_turn", "BfclMultiTurn"),
    "agentbench_db": ("agentflan.rollout.envs.agentbench_db", "AgentBenchDb"),
}


def call_format(cfg: Config) -> str:
    """``rollout.call_format`` resolved: ``native`` or ``react`` (see :mod:`agentflan.rollout.dialect`)."""
    fmt = cfg.rollout.call_format
    if fmt == "auto":
        fmt = "native" if cfg.rollout.backend.kind == "openai" else cfg.data.call_format
    return "native" if fmt == "native" else "react"


def rollout_syntax(cfg: Config) -> CallSyntax:
    """How the rollout backend reads replies (and so which prompt dialect it speaks): the native template's
    syntax (Hermes tags for a template that writes none, as most servers' tool parsers read), or ``react``."""
    if call_format(cfg) == "react":
        return "react"
    template = cfg.train.model.template
    return syntax_for("native", template if template in ("hermes", "llama31") else "model")


def env_kwargs(cfg: Config, name: str) -> dict[str, Any]:
    """The constructor arguments of environment ``name`` from its ``rollout.<name>`` section (unset = the
    environment's own default)."""
    section = getattr(cfg.rollout, name).model_dump()
    if name == "agentbench_db" and section.get("protocol") == "auto":
        section["protocol"] = "native" if call_format(cfg) == "native" else "text"
    if name == "bfcl_multi_turn" and section.get("categories"):
        section["categories"] = tuple(section["categories"])
    return {k: v for k, v in section.items() if v is not None}


def load_env(cfg: Config, name: str) -> EnvironmentFactory:
    module, cls = ENVS[name]
    try:
        factory = getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise RuntimeError(f"rollout.envs: cannot load {name} ({e})") from None
    return factory(**env_kwargs(cfg, name))


def model_path(cfg: Config) -> str:
    """The model an hf backend loads when ``rollout.backend.model`` is unset: eval's, else the exported one."""
    return cfg.rollout.backend.model or cfg.eval.model or str(Path(cfg.output_dir) / "model")


def rollout_backend(cfg: Config) -> Backend:
    b = cfg.rollout.backend
    if b.kind != "openai" and not (Path(model_path(cfg)) / "config.json").exists() and not b.model:
        raise FileNotFoundError(f"no model at {model_path(cfg)}: train first, or set rollout.backend.model")
    return make_backend(b, rollout_syntax(cfg), model_path(cfg))


def run_rollouts(
    cfg: Config,
    progress: Callable[[str], None] = lambda s: None,
    backend: Backend | None = None,
    factories: dict[str, EnvironmentFactory] | None = None,
    log_to: str | None = None,
) -> dict[str, Any]:
    """Run every episode of ``rollout.envs`` and write ``rollout/report.{json,md}``, ``trajectories.jsonl``
    (and ``kept.jsonl`` with ``keep``); metrics go to MLflow run ``log_to``, else to a new run. ``backend``
    and ``factories`` are for callers that hold them already (eval's backend; tests' environments)."""
    from agentflan import tracking

    if not cfg.rollout.envs and not factories:
        raise ValueError(
            "rollout.envs is empty: name the environments to run, e.g. rollout.envs=[agentbench_db]"
        )
    factories = factories or {name: load_env(cfg, name) for name in cfg.rollout.envs}
    work = [(f, task) for f in factories.values() for task in f.load_tasks()]
    out = Path(cfg.output_dir) / "rollout"
    out.mkdir(parents=True, exist_ok=True)
    own = backend is None
    b = cfg.rollout.backend
    label = b.model if b.kind == "openai" else model_path(cfg)
    progress(f"rollout: {len(work)} episodes of {', '.join(factories)} with {b.kind} backend ({label})")
    backend = backend or rollout_backend(cfg)
    finished = 0

    def done(_: Any) -> None:
        nonlocal finished
        finished += 1
        count(progress, "rollout", finished, len(work), unit="episodes")

    start = time.monotonic()
    try:
        results = run_episodes(work, backend, cfg.rollout.max_live, done)
    finally:
        if own:
            backend.close()
    results.sort(key=lambda r: (r.env, r.id))
    report = rollout_report.summarize(results, time.monotonic() - start)
    report.update(model=label, backend=b.kind)
    write_trajectories(results, out / "trajectories.jsonl")
    if cfg.rollout.keep != "none":
        report["kept"] = write_kept(results, out / "kept.jsonl", cfg.rollout.keep)
    run_id = log_to
    if run_id is None:
        run_id = tracking.start_run(cfg, f"{cfg.name}-rollout", tags={"agentflan.stage": "rollout"})
        tracking.client(cfg).set_terminated(run_id, "FINISHED")
    report["mlflow_run_id"] = run_id
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(rollout_report.markdown(report))
    tracking.log_metrics(cfg, run_id, rollout_report.flat_metrics(report), step=0)
    for name in ("report.json", "report.md"):
        tracking.client(cfg).log_artifact(run_id, str(out / name), "rollout")
    return report
