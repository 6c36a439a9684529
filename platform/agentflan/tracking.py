"""MLflow: one place that knows the tracking URI, how params are flattened, and how runs end.

The driver opens the run and owns its status: a run whose training crashes is marked FAILED by the driver,
never left RUNNING (a worker that dies cannot be trusted to close it). Rank 0 logs per-step metrics into
that run by id, through :class:`mlflow.MlflowClient`, so workers never start runs of their own.

MLflow 3 refuses a plain ``./mlruns`` file store; the default is a sqlite file under the output dir. On a
multi-node cluster, point ``mlflow.tracking_uri`` at a tracking server every node can reach.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agentflan.config import Config

MAX_PARAM_CHARS = 250  # MLflow's param value limit is 6000 in recent servers, 250 in older ones


def tracking_uri(cfg: Config) -> str:
    if cfg.mlflow.tracking_uri:
        return cfg.mlflow.tracking_uri
    return f"sqlite:///{Path(cfg.output_dir).resolve() / 'mlflow.db'}"


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """Nested config as dotted params, long values truncated (the full config goes in as an artifact)."""
    out: dict[str, str] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        text = json.dumps(tree) if isinstance(tree, (list, dict)) else str(tree)
        out[prefix] = text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."
    return out


def client(cfg: Config):
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return mlflow.MlflowClient(tracking_uri=tracking_uri(cfg))


def start_run(cfg: Config, run_name: str, tags: dict[str, str] | None = None) -> str:
    """Create a run in the config's experiment, log the flattened config; return its id."""
    from mlflow.entities import Param

    c = client(cfg)
    exp = c.get_experiment_by_name(cfg.mlflow.experiment)
    if exp is not None:
        exp_id = exp.experiment_id
    else:
        # With the default sqlite store, artifacts go beside it (MLflow's default is ./mlruns in the CWD).
        location = (
            None if cfg.mlflow.tracking_uri else (Path(cfg.output_dir) / "mlartifacts").resolve().as_uri()
        )
        exp_id = c.create_experiment(cfg.mlflow.experiment, artifact_location=location)
    run = c.create_run(
        exp_id, run_name=run_name, tags={"agentflan.output_dir": str(cfg.output_dir), **(tags or {})}
    )
    params = [Param(k, v) for k, v in flatten(cfg.model_dump(mode="json")).items()]
    for i in range(0, len(params), 100):
        c.log_batch(run.info.run_id, params=params[i : i + 100])
    log_json(cfg, run.info.run_id, cfg.model_dump(mode="json"), "config.json")
    return run.info.run_id


def log_json(cfg: Config, run_id: str, obj: Any, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps(obj, indent=2, default=str))
        client(cfg).log_artifact(run_id, str(path))


def log_metrics(cfg: Config, run_id: str, metrics: dict[str, float], step: int) -> None:
    import time

    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    client(cfg).log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()])


@contextlib.contextmanager
def run_status(cfg: Config, run_id: str) -> Iterator[None]:
    """FINISHED if the body returns, FAILED (then re-raise) if it raises, KILLED on Ctrl-C."""
    c = client(cfg)
    try:
        yield
    except KeyboardInterrupt:
        c.set_terminated(run_id, "KILLED")
        raise
    except BaseException:
        c.set_terminated(run_id, "FAILED")
        raise
    c.set_terminated(run_id, "FINISHED")
