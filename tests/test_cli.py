"""The CLI as a newcomer meets it: mistakes caught before any work, one line each; a quiet console; one line
when something fails mid-job; one job per output directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentflan.cli import main
from agentflan.preflight import LOCK_FILE, output_dir_lock

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("command", "override", "message"),
    [
        ("train", "train.model.name_or_path=/tmp/nope", "train.model.name_or_path: no such file or directory: /tmp/nope"),
        ("run", "train.model.tokenizer=./no/such/tokenizer", "train.model.tokenizer: no such file or directory"),
        ("eval", "model=/nope", "model: no such file or directory: /nope"),
        ("train", "train.model.name_or_path=someorg/no-such-model",
         "'someorg/no-such-model' is not a local path and the Hugging Face hub cannot serve it"),
        ("data", "data.mixture.ratios={react: 1, agentinstuct: 2}", "'agentinstuct' is not a bucket or source name"),
        ("data", "data.inputs=[/tmp/no/such/file.jsonl]", "data.inputs: no input files found"),
    ],
)  # fmt: skip
def test_mistakes_are_refused_before_any_work(tmp_path, capsys, command, override, message):
    out = tmp_path / "out"
    assert main([command, "pipelines/local.yaml", f"output_dir={out}", override]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()  # nothing started: no logs, no lock, no corpus


@pytest.mark.slow  # ~5 s: a job process held while a second starts
def test_a_second_job_on_the_same_output_dir_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out.mkdir()
        (out / LOCK_FILE).write_text(
            json.dumps({"pid": holder.pid, "host": os.uname().nodename, "started": "2026-11-26 10:00:00"})
        )
        assert main(["data", "pipelines/local.yaml", f"output_dir={out}", "data.engine=local"]) == 2
        err = capsys.readouterr().err
        assert f"output_dir {out} is in use by another agentflan job (pid {holder.pid}" in err
        assert not (out / "corpus").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: its lock is stale, the next job takes it over and removes it when done.
    assert main(["data", "pipelines/local.yaml", f"output_dir={out}", "data.engine=local"]) == 0
    assert (out / "corpus").exists() and not (out / LOCK_FILE).exists()


def test_the_lock_holds_while_the_job_runs(tmp_path):
    with output_dir_lock(tmp_path) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


@pytest.mark.ray
def test_the_console_shows_progress_and_tables_and_the_log_has_the_rest(tmp_path):
    """A real process with a Ray engine: the console holds our lines only; Ray's go to logs/agentflan.log."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "agentflan"), "data", "pipelines/local.yaml", f"output_dir={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = proc.stdout + proc.stderr
    assert "data: read, filter, align, decompose: 100%" in proc.stderr  # the stage's progress bar, ended
    assert "6/6" in proc.stderr and "parts" in proc.stderr  # the 6 input files, each one part
    assert "corpus rows: 2020" in proc.stdout and "bucket" in proc.stdout  # the summary tables
    for noise in ("INFO", "WARNING", "Started a local Ray instance", "Running Dataset", "logging_progress"):
        assert noise not in console, noise
    log = (out / "logs/agentflan.log").read_text()
    assert "corpus rows: 2020" in log and ("Ray" in log or "ray" in log)
    assert (out / "logs/ray").is_symlink()  # Ray's own session logs (raylet, workers)


def test_a_failure_mid_job_is_one_line_naming_the_log(ray_session, tmp_path, capsys, shared_data, monkeypatch):
    """A worker fails (flash attention asked for on a CPU): one line with the root cause and the log path.

    Preflight refuses a missing flash-attn package before any work (tests/test_preflight.py); it is switched
    off here so that the failure happens where this test wants it, inside a training worker."""
    import agentflan.preflight

    monkeypatch.setattr(agentflan.preflight, "check_optional_packages", lambda cfg, command: None)
    out = tmp_path / "out"
    code = main(
        [
            "train", "pipelines/local.yaml", f"output_dir={out}", "data.engine=local",
            f"data.inputs=[{{path: {shared_data}/react/fireact_hotpotqa.jsonl, source: react}}]",
            "train.seq_len=256", "train.max_steps=1", "train.model.attn_implementation=flash_attention_2",
            "train.max_failures=0",  # the spec's one restart would start the same failing group again
            "train.scaling.num_workers=1",  # one failing worker is enough
        ]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    (line,) = [x for x in err.splitlines() if x.startswith("agentflan:")]
    assert line.startswith(
        "agentflan: train failed: ValueError: train.model.attn_implementation=flash_attention_2"
    )
    assert line.endswith(f"(full log: {out / 'logs/agentflan.log'})")
    assert "Traceback" in (out / "logs/agentflan.log").read_text()  # the whole story is in the log
