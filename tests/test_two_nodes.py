"""The main job as users run it on a cluster, ``ray job submit --working-dir . -- agentflan run ...``, against
a two-node Ray cluster on this machine: each node with its own CPUs and worker processes
(``ray.cluster_utils.Cluster``), so data tasks and the two training workers must spread over both. What the
nodes share is ``output_dir`` (and the checkpoint storage under it), as on a real cluster with a shared
filesystem (docs/cluster.md): nothing else may rely on the driver's local disk. One input path is relative: it
resolves against the uploaded working directory.

The cluster runs in a subprocess: it needs a Ray of its own, apart from the test session's instance. Every
agent port of both nodes is picked free: the session's Ray holds the defaults, and a job agent that cannot bind
leaves the head answering "No available agent to submit job" for good."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# relative to the uploaded working dir
GENERAL = "platform/agentflan/sample_data/general/fastchat_dummy_conversation.json"

SCRIPT = """
import json, os, subprocess, sys, time
import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors, list_tasks

from agentflan.ray_utils import free_port

def ports():
    return {"dashboard_agent_listen_port": free_port(), "metrics_export_port": free_port(),
            "runtime_env_agent_port": free_port()}

dashboard = free_port()  # the job API and the state API below (list_actors, list_tasks) go through it
cluster = Cluster(
    initialize_head=True,
    head_node_args={"num_cpus": 1, "resources": {"head": 1}, "include_dashboard": True,
                    "dashboard_port": dashboard, **ports()},
)
# Its own runtime-env directory: both nodes share this machine's /tmp/ray session, and a node that
# garbage-collects the uploaded working dir when its own workers are done with it would delete the driver's.
cluster.add_node(num_cpus=1, resources={"second": 1}, runtime_env_dir_name="runtime_resources_second", **ports())
cluster.wait_for_nodes()

env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
cmd = [os.path.join(os.path.dirname(sys.executable), "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dashboard}",
       "--working-dir", ".", "--", "agentflan", "run", "pipelines/local.yaml", *sys.argv[2:]]
for _ in range(30):  # the head answers before its job agent is ready to take a submission
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if "No available agent" not in proc.stdout + proc.stderr:
        break
    time.sleep(2)

ray.init(address=cluster.address, log_to_driver=False)
workers = [a for a in list_actors(cluster.address, detail=True, limit=1000) if "TrainWorker" in a.class_name]
tasks = [t for t in list_tasks(cluster.address, detail=True, limit=10000) if "_pass_a_task" in t.name]
json.dump(
    {
        "returncode": proc.returncode,
        "output": proc.stdout[-4000:] + proc.stderr[-2000:],
        "nodes": [n["NodeID"] for n in ray.nodes() if n["Alive"]],
        "train_worker_nodes": sorted({a.node_id for a in workers}),
        "pass_a_task_nodes": sorted({t.node_id for t in tasks if t.node_id}),
    },
    open(sys.argv[1], "w"),
)
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.ray  # a Ray cluster of its own, in a subprocess
def test_ray_job_submit_runs_the_whole_job_across_two_nodes(tmp_path, shared_data, check_job_outputs):
    out = tmp_path / "out"
    result = tmp_path / "result.json"
    s = shared_data
    overrides = [
        f"output_dir={out}",
        f"data.inputs=[{{path: {s}/react/fireact_hotpotqa.jsonl, source: react}}, "
        f"{{path: {s}/agentinstruct/mixed_sample_200.messages.json, source: agentinstruct}}, "
        f"{{path: {GENERAL}, source: sharegpt, kind: general}}]",
        f"data.negatives.tool_pool_files=[{s}/toolbench/G1_query.json]",
        "data.split_bytes=200000",  # several parts per file: tasks for both nodes
        "train.seq_len=256",
        "train.global_batch_size=4",
        "train.max_steps=2",
        "eval.max_per_case={a: 2, b: 2, c: 2, d: 2}",
        "eval.max_hotpot=2",
        "eval.max_tool_use_per_source=2",
        "eval.max_new_tokens=8",
        "eval.bfcl.max_per_category=1",
        "eval.general.limit=2",
        "rollout.agentbench_db.limit=2",  # the default's DB rollouts, two of its eight tasks
    ]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(result), *overrides],
        cwd=REPO,
        env={  # a throwaway local cluster; its jobs find `agentflan` on the PATH its nodes started with
            **os.environ,
            "RAY_AUTH_MODE": "disabled",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        },
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0 and result.exists(), proc.stderr[-3000:]
    r = json.loads(result.read_text())
    assert r["returncode"] == 0 and "succeeded" in r["output"], r["output"]
    assert len(r["nodes"]) == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["nodes"]) == sorted(r["nodes"])  # data tasks wrote shards from both nodes
    assert r["train_worker_nodes"] == sorted(r["nodes"])  # one training worker per node
    assert r["pass_a_task_nodes"] == sorted(r["nodes"])  # the corpus was read on both
    inputs = [s / "react/fireact_hotpotqa.jsonl", s / "agentinstruct/mixed_sample_200.messages.json"]
    inputs.append(REPO / GENERAL)
    read = sum(
        len(p.read_text().splitlines()) if p.suffix == ".jsonl" else len(json.loads(p.read_text()))
        for p in inputs
    )
    assert manifest["stages"][0]["in"] == read == 1200  # every input record read
    assert manifest["stages"][-1]["out"] > 0
    report = check_job_outputs(out, overrides, per_case=2)
    assert report["bfcl"]["summary"]["overall"]["n"] == 5  # one question per BFCL category
    rollout = json.loads((out / "rollout/report.json").read_text())
    db = rollout["envs"]["agentbench_db"]
    assert db["n"] == 2 and sum(db["endings"].values()) == 2  # every episode played to an ending
