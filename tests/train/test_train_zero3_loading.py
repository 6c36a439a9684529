"""A checkpoint loaded under ZeRO-3 by two ranks, each reading only its partition of every weight
(agentflan.train.zero3_loading.load_partitioned): gathered back, the weights are the checkpoint's, bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

_RANK = r"""
import json, os, sys
import torch
rank, port, path, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
import deepspeed
from safetensors.torch import load_file
from agentflan.train.strategy import use_interpreter_ninja
from agentflan.train.zero3_loading import load_partitioned
use_interpreter_ninja()  # as the training loop does: the one ninja that built the cached CPU comm op
deepspeed.init_distributed(dist_backend="gloo")
ds = {"train_micro_batch_size_per_gpu": 1, "train_batch_size": 2, "zero_optimization": {"stage": 3}}
model = load_partitioned(path, ds, torch.float32, "sdpa")
held = sum(p.ds_tensor.numel() for p in model.parameters())
expected = load_file(os.path.join(path, "model.safetensors"))
mismatched = []
for name, p in model.named_parameters():
    with deepspeed.zero.GatheredParameters([p]):
        if not torch.equal(p.data, expected[name].float()):
            mismatched.append(name)
with open(out, "w") as f:
    json.dump({"held": held, "total": sum(p.ds_numel for p in model.parameters()), "mismatched": mismatched}, f)
# Leave without C++ static destructors: a gloo thread still joinable at interpreter exit aborts the process
# ("terminate called without an active exception", seen in CI) after the result is written.
torch.distributed.barrier()
torch.distributed.destroy_process_group()
sys.stdout.flush()
os._exit(0)
"""


@pytest.mark.slow  # two processes, no Ray
def test_each_rank_loads_its_partition_and_gathers_the_checkpoint(llama2_checkpoint, tmp_path):
    from agentflan.ray_utils import free_port

    port = str(free_port())
    # DeepSpeed builds its CPU shared-memory op on first use: build it once here, not in two ranks at once.
    subprocess.run(
        [sys.executable, "-c", "from deepspeed.comm.torch import build_shm_op; build_shm_op()"],
        check=True,
        capture_output=True,
    )
    script = tmp_path / "rank.py"
    script.write_text(_RANK)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), port, str(llama2_checkpoint), str(tmp_path / f"r{r}.json")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in (0, 1)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs[0][-3000:] + logs[1][-3000:]
    results = [json.loads(Path(tmp_path / f"r{r}.json").read_text()) for r in (0, 1)]
    for r in results:
        assert r["mismatched"] == []
        assert r["total"] / 2 <= r["held"] <= r["total"] / 2 + 64  # half of every weight (+ padding)
