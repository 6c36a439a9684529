"""The benchmark scripts run (one small size each): a benchmark that cannot start, or prints numbers that
cannot be right, is caught here, not on a GPU. Marker ``bench`` (CI runs them at these sizes)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.bench


def table(out: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the markdown table in ``out`` whose first header cell is ``first_header``, by header."""
    lines = out.splitlines()
    start = next(
        i for i, x in enumerate(lines) if x.startswith("|") and x.split("|")[1].strip() == first_header
    )
    header = [c.strip() for c in lines[start].strip().strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip().strip("|").split("|")), strict=True)))
    return rows


def number(cell: str) -> float:
    """A table cell as a number: thousands separators, a trailing % (as a fraction), x or a leading +."""
    cell = cell.replace(",", "").lstrip("+")
    if cell.endswith("%"):
        return float(cell[:-1]) / 100
    return float(cell.removesuffix("x"))


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
    rows = {r["layout"]: r for r in table(out, "layout")}
    assert rows.keys() == {"padded to longest", "packed"}
    padded, packed = rows["padded to longest"], rows["packed"]
    for r in (padded, packed):
        assert number(r["real tokens/s"]) > 0 and 0 < number(r["real-token share"]) <= 1
    assert number(padded["speed-up"]) == 1.0  # the baseline
    assert number(packed["speed-up"]) == pytest.approx(
        number(packed["real tokens/s"]) / number(padded["real tokens/s"]), rel=0.02
    )
    # packing wastes fewer slots on padding than padding every batch to its longest row
    assert number(packed["real-token share"]) > number(padded["real-token share"])


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
    for name in ("sdpa/chunked", "eager/full"):
        r = rows[name]
        assert "error" not in r, r
        assert r["tokens_per_s"] > 0 and 0 < r["real_token_share"] <= 1 and r["step_time_s"] > 0
        assert all(math.isfinite(x) and x > 0 for x in r["loss_first_last"])
    for r in rows.values():  # the time breakdown that explains a row, and its profiled step
        assert r["forward_s"] > 0 and r["backward_s"] > 0 and r["optimizer_s"] >= 0
        assert r["forward_s"] + r["backward_s"] + r["optimizer_s"] <= r["step_time_s"]
        assert r["kernels"]["by_kind_s"]["matmul"] > 0
    # same model, data and seed: the loss does not depend on the attention kernel or the loss's chunking
    assert rows["sdpa/chunked"]["loss_first_last"] == pytest.approx(
        rows["eager/full"]["loss_first_last"], rel=1e-4
    )


def test_data_pipeline_benchmark_small(tmp_path):
    out = run(
        "data_pipeline.py", "--trajectories", "1000", "--scale", "2", "--engines", "local",
        "--scale-engines", "local", "--no-ceiling", "--json", str(tmp_path / "r.json"),
    )  # fmt: skip
    rows = {r["input"]: r for r in table(out, "engine")}
    assert rows.keys() == {"1x", "2x"} and {r["engine"] for r in rows.values()} == {"local"}
    one, two = rows["1x"], rows["2x"]
    assert number(two["trajectories"]) == 2 * number(one["trajectories"]) > 0
    assert number(two["records"]) == 2 * number(one["records"]) > 0  # twice the input, twice the corpus
    for r in (one, two):
        assert (
            number(r["pipeline s"]) > 0 and number(r["records/s"]) > 0 and number(r["tree peak PSS (MB)"]) > 0
        )
    results = json.loads((tmp_path / "r.json").read_text())
    assert len({r["fingerprint"] for r in results}) == 2  # the 2x corpus is another corpus
    (line,) = [x for x in out.splitlines() if x.startswith("local: peak memory at 2x input = ")]
    growth = float(line.split("= ")[1].split("x")[0])
    assert growth == pytest.approx(
        number(two["tree peak PSS (MB)"]) / number(one["tree peak PSS (MB)"]), abs=0.02
    )


def test_tune_asha_benchmark_config_is_valid():
    """The full benchmark runs 8 trials (minutes): here only its config and space are checked."""
    out = run("tune_asha.py", "--validate-only")
    assert "ASHA: 2 params, scheduler asha: valid" in out and "scheduler none: valid" in out


@pytest.mark.ray  # two Ray Train fits in a subprocess
def test_model_memory_benchmark_small(tmp_path):
    out = run(
        "model_memory.py", "--hidden", "128", "--layers", "2", "--stages", "3", "--workdir", str(tmp_path / "m"),
    )  # fmt: skip
    rows = table(out, "ZeRO")
    assert [(r["ZeRO"], r["rank"]) for r in rows] == [("3", "0"), ("3", "1")]
    assert all(r["params held"] == "50%" for r in rows)  # ZeRO-3: each rank holds half
    for r in rows:
        assert number(r["baseline"]) > 0  # GB of a worker with torch + transformers + DeepSpeed imported
        for column in ("model built", "setup (engine)", "first step", "first step, RSS"):
            assert math.isfinite(number(r[column])), column
        assert math.isfinite(number(r["model built / model size"]))


def test_eval_generation_benchmark_on_a_checkpoint(llama2_checkpoint):
    out = run("eval_generation.py", str(llama2_checkpoint), "--limit", "8")
    assert out.startswith("8 prompts")
    rows = {r["KV cache"]: r for r in table(out, "KV cache")}
    assert rows.keys() == {"off", "on"}
    for r in rows.values():
        secs, rate = number(r["seconds"]), number(r["replies/s"])
        assert secs >= 0 and rate > 0
        # both printed to 0.1: the rate is 8 prompts over the seconds, within the rounding
        assert 8 / (secs + 0.05) - 0.05 <= rate <= (8 / (secs - 0.05) + 0.05 if secs > 0.05 else math.inf)
    assert "same greedy replies with and without the cache: True" in out


def test_contamination_benchmark_small():
    """The data stage's contamination scan on the default corpus and on two copies of it (repeated, distinct)."""
    out = run("contamination.py", "--copies", "1", "2")
    rows = {r["corpus"]: r for r in table(out, "corpus")}
    assert rows.keys() == {"x1", "x2 repeated", "x2 distinct"}
    one, repeated, distinct = rows["x1"], rows["x2 repeated"], rows["x2 distinct"]
    grams = "distinct 13-grams"
    assert number(repeated["words"]) == number(distinct["words"]) == 2 * number(one["words"]) > 100_000
    assert number(repeated[grams]) == number(one[grams]) > 10_000  # the same text adds no 13-gram
    assert 1.9 * number(one[grams]) <= number(distinct[grams]) <= 2 * number(one[grams])
    assert one["items"] == repeated["items"] == distinct["items"] and number(one["items"]) > 100
    for r in rows.values():
        assert 0 < number(r["index s"]) <= number(r["step s"])
        assert number(r["peak RSS MB"]) >= number(r["RSS before MB"]) > 0
