"""The benchmark scripts run (tiny settings): a benchmark that cannot start is caught here, not on a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(script: str, *args: str, timeout: int = 600) -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_train_throughput_prints_padded_and_packed():
    out = run("train_throughput.py", "--steps", "2", "--seq-len", "256", "--batch", "2", "--threads", "1")
    assert "| padded to longest |" in out and "| packed |" in out


def test_gpu_train_runs_tiny_on_cpu():
    out = run(
        "gpu_train.py", "--size", "tiny", "--steps", "2", "--seq-len", "256", "--rows", "2", "--batch", "2"
    )
    assert "| plain loop, padded to the longest |" in out and "Ray Train + DeepSpeed ZeRO-2, packed" in out
    assert "MFU" in out


def test_data_pipeline_benchmark_small():
    out = run(
        "data_pipeline.py",
        "--trajectories",
        "1000",
        "--scale",
        "2",
        "--engines",
        "local",
        "--scale-engines",
        "local",
        "--no-ceiling",
    )
    assert "peak memory at 2x input" in out


def test_tune_asha_benchmark_config_is_valid():
    """The full benchmark runs 8 trials (minutes): here only its config and space are checked."""
    out = run("tune_asha.py", "--validate-only")
    assert "ASHA: 2 params, scheduler asha: valid" in out and "scheduler none: valid" in out
