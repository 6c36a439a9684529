"""The main job as users run it on a cluster: `ray job submit --working-dir . -- agentflan run ...` against a
real Ray head started here (`ray start --head`), then the outputs are checked and the head is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentflan.ray_utils import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def ray_head():
    """A Ray head in its own process (``--block``): SIGTERM stops exactly the processes it started.

    Ray 2.60 enables token authentication by default; this throwaway local head runs without it (a real
    cluster keeps it on and submits with the token from ``ray get-auth-token``).
    """
    import shutil
    import tempfile

    port, dashboard = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(
        prefix="rayh", dir="/tmp"
    )  # short: Ray's unix socket paths must fit 107 bytes
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
    }
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            f"--dashboard-port={dashboard}",
            "--num-cpus=2",
            "--include-dashboard=true",
            f"--temp-dir={temp_dir}",
            # Ports of its own: the session's Ray instance (other tests) holds the default agent ports.
            *(
                f"--{flag}={free_port()}"
                for flag in (
                    "dashboard-agent-listen-port",
                    "dashboard-agent-grpc-port",
                    "runtime-env-agent-port",
                    "metrics-export-port",
                    "ray-client-server-port",
                )
            ),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the head and everything it started stop together
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while time.time() < deadline:
        ok = subprocess.run(
            [str(BIN / "ray"), "job", "list", "--address", address], env=env, capture_output=True
        )
        if ok.returncode == 0:
            break
        time.sleep(2)
    else:
        os.killpg(head.pid, signal.SIGKILL)
        pytest.fail("the Ray head did not come up")
    yield address, env
    # SIGKILL to the group: a throwaway head needs no graceful stop (SIGTERM took ~30 s of teardown)
    os.killpg(head.pid, signal.SIGKILL)
    head.wait(timeout=60)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.ray
def test_ray_job_submit_runs_the_main_job(ray_head, tmp_path, check_job_outputs):
    address, env = ray_head
    out = tmp_path / "out"
    overrides = [  # input paths relative to the uploaded working dir
        f"output_dir={out}",
        "data.inputs=[{path: platform/agentflan/sample_data/react/fireact_hotpotqa.jsonl, source: react}, "
        "{path: platform/agentflan/sample_data/general/fastchat_dummy_conversation.json, source: sharegpt, "
        "kind: general}]",
        "train.seq_len=256",
        "train.max_steps=2",
        "train.global_batch_size=4",
        "eval.max_per_case={a: 2, b: 2, c: 2, d: 2}",
        "eval.max_hotpot=1",
        "eval.max_tool_use_per_source=1",
        "eval.max_new_tokens=4",
        "eval.general.limit=2",
    ]
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO), "--"]
    cmd += ["agentflan", "run", "pipelines/local.yaml", *overrides]
    for _ in range(30):  # the head answers `job list` before its job agent is ready to take a submission
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if "No available agent" not in proc.stdout + proc.stderr:
            break
        time.sleep(2)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "succeeded" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"][0]["in"] == 1000 and manifest["stages"][-1]["out"] > 0  # 500 + 500 records read
    check_job_outputs(out, overrides, per_case=2)
