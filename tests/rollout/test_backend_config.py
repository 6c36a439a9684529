"""One backend config for the negatives responder, eval and rollouts; older flat keys still read."""

from __future__ import annotations

import pytest

from agentflan.config import BackendConfig, ConfigError, EvalConfig, ResponderConfig, load_config


def test_responder_eval_and_rollouts_share_the_backend_fields():
    for section in (ResponderConfig, EvalConfig):
        assert set(BackendConfig.model_fields) <= set(section.model_fields), section
    cfg = load_config(None, [
        "eval.kind=openai", "eval.model=m", "eval.base_url=http://h:8000/v1",  # eval can now reach a server
        "rollout.backend={kind: openai, model: m, base_url: 'http://h:8000/v1', max_in_flight: 64}",
    ])  # fmt: skip
    assert cfg.eval.base_url == cfg.rollout.backend.base_url and cfg.rollout.backend.max_in_flight == 64


def test_older_flat_keys_land_in_their_new_places():
    cfg = load_config(None, ["eval.max_new_tokens=16", "data.negatives.responder={kind: openai, model: m, "
                             "base_url: 'http://h/v1', concurrency: 3, max_new_tokens: 9, num_gpus: 1}"])  # fmt: skip
    r = cfg.data.negatives.responder
    assert cfg.eval.sampling.max_new_tokens == 16
    assert (r.max_in_flight, r.sampling.max_new_tokens, r.use_gpu) == (3, 9, True)


def test_an_openai_backend_needs_its_url():
    with pytest.raises(ConfigError, match=r"rollout.backend: Value error, kind 'openai' needs `base_url`"):
        load_config(None, ["rollout.backend.kind=openai"])


def test_tune_may_optimise_a_rollout_metric():
    from agentflan.tune.space import METRIC

    assert METRIC.match("rollout.agentbench_db.SELECT") and METRIC.match("rollout.bfcl_multi_turn.overall.ci_low")
    assert not METRIC.match("rollout.agentbench_db")
