"""Checkpoints of a run: what one holds (DeepSpeed's sharded state plus the step it ends), and where they live.

The data position of a checkpoint is its step (:mod:`agentflan.train.sampling`), so a resumed run reads
exactly what an uninterrupted one would. Two homes, one format:

* :class:`RayCheckpoints`: a Ray Train worker reports each checkpoint to Ray Train, which keeps
  ``train.keep_checkpoints`` of them under its storage path and hands the latest back on a restart.
* :class:`LocalCheckpoints`: one process writes ``train/checkpoints/step_<N>`` under the output dir, keeps the
  newest ``train.keep_checkpoints``, and resumes from the newest on the next start.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from agentflan.train.strategy import DeepSpeedStrategy

CHECKPOINT_TAG = "ds"
STATE_FILE = "agentflan_state.json"


def save_checkpoint(strategy: DeepSpeedStrategy, directory: str | Path, step: int) -> None:
    """DeepSpeed's checkpoint (collective: every rank writes its shards) plus the step it ends."""
    strategy.save_ckpt(directory, CHECKPOINT_TAG, {"step": step})
    if strategy.rank == 0:
        (Path(directory) / STATE_FILE).write_text(json.dumps({"step": step}))


def load_checkpoint(strategy: DeepSpeedStrategy, directory: str | Path) -> int:
    """Weights, optimizer and schedule back into the engine; returns the step the checkpoint ends."""
    strategy.load_ckpt(directory, CHECKPOINT_TAG)
    return json.loads((Path(directory) / STATE_FILE).read_text())["step"]


class Checkpoints(Protocol):
    """Where a run's checkpoints go and come back from; also where its metrics are reported."""

    def latest(self) -> contextlib.AbstractContextManager[str | None]: ...

    def report(self, metrics: dict[str, Any], save: Callable[[str], None] | None, done: bool) -> None: ...


class RayCheckpoints:
    """Ray Train's: the latest comes from ``ray.train.get_checkpoint``, each new one goes to
    ``ray.train.report`` from a temporary directory (Ray copies it to storage)."""

    @contextlib.contextmanager
    def latest(self) -> Iterator[str | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as d:
            yield d

    def report(self, metrics: dict[str, Any], save: Callable[[str], None] | None, done: bool) -> None:
        import ray.train

        if save is not None:
            with tempfile.TemporaryDirectory() as tmp:
                save(tmp)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        elif "val_loss" in metrics or done:
            # ray.train.report is a barrier across workers (~1.7 s a call here, 5x a tiny model's step):
            # only checkpoints, validation losses and the end go through it; every step goes to MLflow and
            # the log.
            ray.train.report(metrics)


class LocalCheckpoints:
    """``<root>/step_<N>`` directories, the newest ``keep`` of them kept (None: all)."""

    def __init__(self, root: Path, keep: int | None) -> None:
        self.root, self.keep = root, keep

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints under the root, oldest first (a checkpoint is complete once its
        state file is written, last)."""
        found = [
            int(d.name.removeprefix("step_")) for d in self.root.glob("step_*") if (d / STATE_FILE).exists()
        ]
        return sorted(found)

    @contextlib.contextmanager
    def latest(self) -> Iterator[str | None]:
        steps = self.steps()
        yield str(self.root / f"step_{steps[-1]}") if steps else None

    def report(self, metrics: dict[str, Any], save: Callable[[str], None] | None, done: bool) -> None:
        if save is None:
            return
        directory = self.root / f"step_{metrics['step']}"
        shutil.rmtree(directory, ignore_errors=True)  # a step trained again after a resume
        save(str(directory))
        if self.keep:
            for step in self.steps()[: -self.keep]:
                shutil.rmtree(self.root / f"step_{step}", ignore_errors=True)
