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
        if "://" not in inp.path and spec.name in ("local.yaml", "local_native.yaml"):
            assert (REPO / inp.path).exists(), inp.path


def test_cluster_yaml_passes_rays_own_validation():
    import copy

    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(raw)))
    assert any("pip install" in c and "agentflan" in c for c in raw["setup_commands"])
    broken = copy.deepcopy(raw)
    broken["available_node_types"]["gpu_worker"]["min_wokers"] = 0  # a typo Ray must refuse
    with pytest.raises(Exception, match="min_wokers"):
        validate_config(prepare_config(broken))


def test_paper_spec_is_the_papers_setup():
    cfg = load_config(REPO / "pipelines/llama2_7b_agentflan.yaml")
    t = cfg.train
    assert (t.lr, t.epochs, t.global_batch_size, t.scaling.num_workers, t.deepspeed.zero_stage) == (
        2e-5,
        1,
        32,
        8,
        3,
    )
    w = cfg.data.capability_weights
    assert (w.reasoning, w.retrieval, w.understanding) == (1.0, 0.25, 0.75)
    assert cfg.data.negatives.enabled and any(i.kind == "general" for i in cfg.data.inputs)
    assert t.scaling.use_gpu and t.storage_path.startswith("s3://")


def test_config_reference_is_current():
    from agentflan.config_doc import config_reference

    assert (REPO / "docs/config.md").read_text() == config_reference(), (
        "run: python -m agentflan.config_doc > docs/config.md"
    )
