"""The main job as users run it on a cluster, `ray job submit --working-dir . -- agentflan run ...`, against a
two-node Ray cluster on this machine: each node with its own CPUs and worker processes
(``ray.cluster_utils.Cluster``, the head with its dashboard and job agent), so data tasks and the two training
workers must spread over both. What the nodes share is ``output_dir`` (and the checkpoint storage under it),
as on a real cluster with a shared filesystem (docs/cluster.md): nothing else may rely on the driver's local
disk. Then the outputs are checked as a user reads them: counts, metrics, a model that loads and generates.

The cluster runs in a subprocess: it needs a Ray of its own, apart from the test session's instance. Ray 2.60
enables token authentication by default; this throwaway local cluster runs without it (a real cluster keeps
it on and submits with the token from ``ray get-auth-token``)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

SCRIPT = """
import json, socket, subprocess, sys, time
import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors, list_tasks


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Ports of its own: the test session's Ray instance may hold the default ones.
head = {
    "num_cpus": 1, "resources": {"head": 1}, "include_dashboard": True, "dashboard_host": "127.0.0.1",
    "dashboard_port": free_port(), "dashboard_agent_listen_port": free_port(), "metrics_export_port": free_port(),
    "runtime_env_agent_port": free_port(), "ray_client_server_port": free_port(),
}
cluster = Cluster(initialize_head=True, head_node_args=head)
cluster.add_node(num_cpus=1, resources={"second": 1})
ray.init(address=cluster.address, log_to_driver=False)
cluster.wait_for_nodes()

result_path, bin_dir, repo, *overrides = sys.argv[1:]
address = "http://" + cluster.webui_url
submit = [f"{bin_dir}/ray", "job", "submit", "--address", address, "--working-dir", repo, "--",
          "agentflan", "run", "pipelines/local.yaml", *overrides]
for _ in range(60):  # the head answers before its job agent is ready to take a submission
    proc = subprocess.run(submit, capture_output=True, text=True, timeout=900)
    if "No available agent" not in proc.stdout + proc.stderr:
        break
    time.sleep(2)
workers = [a for a in list_actors(detail=True, limit=1000) if "TrainWorker" in a.class_name]
tasks = [t for t in list_tasks(detail=True, limit=10000) if "_pass_a_task" in t.name]
json.dump(
    {
        "submit_code": proc.returncode,
        "submit_out": proc.stdout[-6000:] + proc.stderr[-2000:],
        "nodes": [n["NodeID"] for n in ray.nodes() if n["Alive"]],
        "train_worker_nodes": sorted({a.node_id for a in workers}),
        "pass_a_task_nodes": sorted({t.node_id for t in tasks if t.node_id}),
    },
    open(result_path, "w"),
)
ray.shutdown()
cluster.shutdown()
"""


def input_count(path: Path) -> int:
    return (
        len(path.read_text().splitlines()) if path.suffix == ".jsonl" else len(json.loads(path.read_text()))
    )


@pytest.mark.ray  # a Ray cluster of its own, in a subprocess
def test_ray_job_submit_runs_the_whole_job_across_two_nodes(tmp_path, shared_data):
    out = tmp_path / "out"
    result = tmp_path / "result.json"
    s = shared_data
    inputs = [s / "react/fireact_hotpotqa.jsonl", s / "agentinstruct/mixed_sample_200.messages.json"]
    inputs.append(s / "general/fastchat_dummy_conversation.json")
    overrides = [
        f"output_dir={out}",
        f"data.inputs=[{{path: {inputs[0]}, source: react}}, {{path: {inputs[1]}, source: agentinstruct}}, "
        f"{{path: {inputs[2]}, source: sharegpt, kind: general}}]",
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
    ]
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
    }
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(result), str(BIN), str(REPO), *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0 and result.exists(), proc.stderr[-3000:]
    r = json.loads(result.read_text())
    log = out / "logs" / "agentflan.log"
    assert r["submit_code"] == 0, r["submit_out"] + (log.read_text()[-3000:] if log.exists() else "")
    assert "succeeded" in r["submit_out"]

    # Both nodes worked: data tasks wrote shards from both, one training worker on each.
    assert len(r["nodes"]) == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["nodes"]) == sorted(r["nodes"])
    assert r["pass_a_task_nodes"] == sorted(r["nodes"])
    assert r["train_worker_nodes"] == sorted(r["nodes"])

    # The corpus: every input record read, a corpus out of the last stage.
    assert manifest["stages"][0]["in"] == sum(input_count(p) for p in inputs) == 1200
    assert manifest["stages"][-1]["out"] > 0

    # Training: the 2 planned steps on 2 workers, finite losses, a validation loss at the end.
    summary = json.loads((out / "train/summary.json").read_text())
    steps = [json.loads(x) for x in (out / "train/steps.jsonl").read_text().splitlines()]
    assert summary["steps"] == 2 and [x["step"] for x in steps] == [1, 2]
    assert all(math.isfinite(x["loss"]) and x["loss"] > 0 for x in steps)
    assert math.isfinite(steps[-1]["val_loss"]) and steps[-1]["val_loss"] > 0
    attempt = json.loads((out / "train/attempts.jsonl").read_text().splitlines()[0])
    assert attempt["world_size"] == 2

    # The model loads with plain transformers and generates.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    tok = AutoTokenizer.from_pretrained(out / "model")
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        generated = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > ids["input_ids"].shape[1]

    # The eval: the capped counts, rates in [0, 1], held-out losses, and the metrics in the training run.
    report = json.loads((out / "eval/report.json").read_text())
    assert {c: report["agent_h"]["per_case"][c]["n"] for c in "abcd"} == {"a": 2, "b": 2, "c": 2, "d": 2}
    assert 0 <= report["agent_h"]["h_score"] <= 1
    assert report["bfcl"]["summary"]["overall"]["n"] == 5  # one per category
    assert set(report["validation_loss"]) >= {"reasoning", "general"}
    assert all(v["loss"] > 0 and v["tokens"] > 0 for v in report["validation_loss"].values())
    replies = (out / "eval/replies.jsonl").read_text().splitlines()
    assert report["quality"]["n"] == len(replies) > 0

    from agentflan.config import load_config
    from agentflan.tracking import client

    cfg = load_config("pipelines/local.yaml", overrides)
    run = client(cfg).get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["model_path"] == str(out / "model")
    assert "agent_h.h_score" in run.data.metrics and "loss" in run.data.metrics
