"""Shared fixtures: where the real corpora are, and one Ray instance for the whole session.

Starting Ray costs ~5 s and ~760 MB; every test that needs it shares the session-scoped instance.

The slow tests carry the ``ray`` marker: every test that uses the Ray instance gets it here, the others
(subprocess jobs, benchmarks) declare it. ``pytest -m "not ray"`` is the fast loop (under 2 minutes).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AGENTFLAN_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "SOURCES.md").is_file():
        pytest.fail(f"real corpora not found at {SHARED_DATA} (set AGENTFLAN_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
