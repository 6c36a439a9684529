"""Every shipped spec validates against the config model."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentflan.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("spec", sorted((REPO / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_pipeline_specs_validate(spec):
    cfg = load_config(spec)
    for inp in cfg.data.inputs:
        if "://" not in inp.path and spec.name == "local.yaml":
            assert (REPO / inp.path).exists(), inp.path
