"""The step log rank 0 keeps: one JSON line per optimizer step in ``train/steps.jsonl`` (and the same metrics in
MLflow), and one line per attempt in ``train/attempts.jsonl``.

A resumed attempt first drops the lines after its checkpoint's step: those steps are trained again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from agentflan.config import Config


class StepLog:
    def __init__(self, cfg: Config, path: Path, run_id: str | None = None) -> None:
        self.cfg, self.path, self.run_id = cfg, path, run_id

    def start(self, start_step: int, **attempt: Any) -> None:
        """Drop the lines after ``start_step`` and record the attempt (where it started, and what else the
        caller says: world size, parameters on rank 0, kernels)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line and json.loads(line)["step"] <= start_step
            ]
        self.path.write_text("".join(line + "\n" for line in kept))
        with (self.path.parent / "attempts.jsonl").open("a") as f:
            f.write(json.dumps({"start_step": start_step, **attempt, "time": time.time()}) + "\n")

    def log(self, metrics: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.run_id:
            from agentflan.tracking import log_metrics

            log_metrics(
                self.cfg, self.run_id, {k: v for k, v in metrics.items() if k != "step"}, metrics["step"]
            )
