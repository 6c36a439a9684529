"""The typed config: values a spec may give, and the combinations refused before any work (naming the key)."""

from __future__ import annotations

import pytest

from agentflan.config import ConfigError, load_config

SPEC = "pipelines/local.yaml"


@pytest.mark.parametrize(("value", "mode"), [("true", "full"), ("false", "none"), ("alternate", "alternate")])
def test_gradient_checkpointing_takes_older_booleans(value: str, mode: str) -> None:
    cfg = load_config(SPEC, [f"train.model.gradient_checkpointing={value}"])
    assert cfg.train.model.gradient_checkpointing == mode


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.deepspeed.zero_stage=3", "train.model.compile=true"], "train.model.compile"),
        (["train.deepspeed.zero_stage=3", "train.loss=liger"], "ZeRO-3 partitions"),
        (["train.model.attn_implementation=flash"], "train.model.attn_implementation"),
        (["train.loss=fused"], "train.loss"),
        (["train.loss_chunk_tokens=0"], "train.loss_chunk_tokens"),
        (["train.model.gradient_checkpointing=sometimes"], "train.model.gradient_checkpointing"),
    ],
)
def test_training_options_are_checked(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(SPEC, overrides)
