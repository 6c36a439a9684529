"""What a training step costs, for the GPU benchmark's rows: device time by kernel kind from a torch profile,
and model FLOPs per token (the 6N + 12·layers·hidden·context rule) from the packed rows' mean context."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def profiler_activities():
    import torch

    acts = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    return acts


KERNEL_KINDS = (  # first match wins; on names lower-cased
    ("communication", ("nccl", "all_reduce", "allgather", "reduce_scatter")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("loss", ("cross_entropy", "log_softmax", "logsumexp", "nll_loss", "liger")),
    ("attention", ("flash", "fmha", "attention", "sdpa", "flex", "triton_tem")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "aten::mm", "aten::bmm", "aten::addmm", "matmul")),
    ("copy", ("memcpy", "memset", "copy_")),
)  # fmt: skip


def kernel_breakdown(prof) -> dict[str, Any]:
    """Seconds of one step's device kernels by kind, and the 8 longest kernels (on a CPU: aten ops' self time)."""
    import torch

    device = torch.autograd.DeviceType.CUDA if torch.cuda.is_available() else torch.autograd.DeviceType.CPU
    kinds: dict[str, float] = {}
    top = []
    for evt in prof.key_averages():
        if evt.device_type != device:
            continue
        seconds = (evt.self_device_time_total if device.name == "CUDA" else evt.self_cpu_time_total) / 1e6
        if seconds <= 0:
            continue
        name = evt.key.lower()
        kind = next((k for k, marks in KERNEL_KINDS if any(m in name for m in marks)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + seconds
        top.append((seconds, evt.key[:90]))
    top.sort(reverse=True)
    return {"by_kind_s": kinds, "top": [[name, s] for s, name in top[:8]]}


def mean_context(rows_path: Path) -> float:
    """Mean causal context of a real token (its position in its sample + 1), over the packed rows."""
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(rows_path, columns=["position_ids", "n_real"])
    total = count = 0
    for positions, n_real in zip(
        table.column("position_ids").to_pylist(), table.column("n_real").to_pylist(), strict=True
    ):
        real = np.asarray(positions[:n_real], dtype=np.int64) + 1
        total, count = total + int(real.sum()), count + len(real)
    return total / count


def flops_per_token(shape: dict[str, Any], mean_context: float) -> float:
    return 6 * shape["matmul_params"] + 12 * shape["layers"] * shape["hidden"] * mean_context
