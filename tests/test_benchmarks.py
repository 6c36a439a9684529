"""The benchmark scripts run (tiny settings): a benchmark that cannot start is caught here, not on a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.ray  # slow: a benchmark in a subprocess
def test_train_throughput_prints_padded_and_packed():
    out = run("train_throughput.py", "--steps", "2", "--seq-len", "256", "--batch", "2", "--threads", "1")
    assert "| padded to longest |" in out and "| packed |" in out


@pytest.mark.ray  # slow: a benchmark in a subprocess
def test_gpu_train_runs_tiny_on_cpu(tmp_path):
    """The GPU benchmark's whole path on a CPU: prepare the packed data, a padded baseline and two rows of the
    real worker loop (in subprocesses, as on the GPU), the table."""
    data = tmp_path / "bench"
    run("gpu_train.py", "prepare", str(data), "--seq-len", "256", "--vocab", "1024")
    out = run(
        "gpu_train.py", "run", str(data), "--size", "tiny", "--steps", "2", "--warmup", "1",
        "--micro", "1", "--accum", "2", "--batch", "2", "--rows", "sdpa/chunked,eager/full",
        "--out", str(tmp_path / "r.json"),
    )  # fmt: skip
    assert "| plain HF loop, sdpa, padded" in out
    assert "| sdpa/chunked (single) | " in out and "| eager/full (single) | " in out and "failed" not in out
    assert "| flex_attention | no backward on CPU |" in out
    assert (tmp_path / "r.md").read_text().strip() in out  # the table is written beside the JSON too
    rows = {r["row"]: r for r in json.loads((tmp_path / "r.json").read_text())["rows"]}
    for r in rows.values():  # the time breakdown that explains a row, and its profiled step
        assert r["forward_s"] > 0 and r["backward_s"] > 0 and r["optimizer_s"] >= 0
        assert r["forward_s"] + r["backward_s"] + r["optimizer_s"] <= r["step_time_s"]
        assert r["kernels"]["by_kind_s"]["matmul"] > 0
    # same model, data and seed: the loss does not depend on the attention kernel or the loss's chunking
    assert rows["sdpa/chunked"]["loss_first_last"] == pytest.approx(
        rows["eager/full"]["loss_first_last"], rel=1e-4
    )


@pytest.mark.ray  # slow: a benchmark in a subprocess
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


@pytest.mark.ray  # slow: two Ray Train fits in a subprocess
def test_model_memory_benchmark_small(tmp_path):
    out = run(
        "model_memory.py", "--hidden", "128", "--layers", "2", "--stages", "3", "--workdir", str(tmp_path / "m"),
    )  # fmt: skip
    rows = [line for line in out.splitlines() if line.startswith("| 3 |")]
    assert len(rows) == 2 and all("| 50% |" in r for r in rows)  # ZeRO-3: each rank holds half


@pytest.mark.ray  # slow: generation twice
def test_eval_generation_benchmark_on_a_checkpoint(llama2_checkpoint):
    out = run("eval_generation.py", str(llama2_checkpoint), "--limit", "8")
    assert "| off |" in out and "| on |" in out
    assert "same greedy replies with and without the cache: True" in out
