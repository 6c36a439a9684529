"""Starting or joining Ray the same way from the CLI, tests and jobs."""

from __future__ import annotations

import os
import socket
from typing import Any


def ensure_ray(num_cpus: int | None = None, dashboard: bool = True) -> None:
    """Join the cluster named by RAY_ADDRESS (set by ``ray job submit``), else start a local instance.

    A local instance gets ``num_cpus`` (default: all cores) and the dashboard: Ray Train's
    PlacementGroupCleaner asks the State API (served by the dashboard) whether a run's controller is alive;
    without it, a run whose trial Tune stopped keeps its placement group forever (docs/benchmarks.md).
    ``dashboard=False`` is for a process that runs no training (``agentflan data``): the dashboard's
    processes took 3.5 s of CPU in a 45 s data job on 2 cores, time the job's own tasks then lack.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, log_to_driver=False)


def free_port() -> int:
    """A TCP port free on this host now: for a local Ray head, or a process group of one outside Ray."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BLOCKS_PER_CPU = 4
MIN_BLOCKS = 16


def units_dataset(units: list[dict[str, Any]]) -> Any:
    """Units of work (parts of input files, shards) as a Ray Data dataset of a few blocks per cluster CPU.

    Each block is one task, so one block per unit was the natural layout, but Ray Data keeps about 60 KB in
    the driver for every block it has run (plan, metadata, statistics), even after the dataset is gone:
    measured here, 1,260 one-row blocks left the driver 79 MB larger, the same rows in 8 blocks 4.6 MB, so a
    job over 10x the files had a 1.38x driver (docs/benchmarks.md). Bounded by the cluster's CPUs instead,
    the driver stays flat however many units come in, and each CPU still gets several blocks, so one slow
    unit does not leave the others idle. Units are dealt round-robin, so the parts of one large file
    (adjacent in the list) spread over blocks. A task runs its units one after another; a retried task
    reruns them all, which changes nothing (a unit rewrites its own shards)."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    blocks = max(1, min(len(units), max(MIN_BLOCKS, BLOCKS_PER_CPU * cpus)))
    dealt = [u for b in range(blocks) for u in units[b::blocks]]
    return ray.data.from_items(dealt, override_num_blocks=blocks)
