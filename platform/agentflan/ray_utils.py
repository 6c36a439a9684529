"""Starting or joining Ray the same way from the CLI, tests and jobs."""

from __future__ import annotations

import os


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by RAY_ADDRESS (set by ``ray job submit``), else start a local instance.

    A local instance gets ``num_cpus`` (default: all cores) and the dashboard: Ray Train's
    PlacementGroupCleaner asks the State API (served by the dashboard) whether a run's controller is alive;
    without it, a run whose trial Tune stopped keeps its placement group forever (docs/benchmarks.md).
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=True, log_to_driver=False)
