"""The tiny Llama: its size, seeded construction, reloading from disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agentflan.train.model import build_model, count_parameters, tiny_llama_config


@pytest.mark.parametrize(("vocab_size", "hidden_size"), [(1000, 64), (4096, 128)])
def test_tiny_config_is_tiny(vocab_size: int, hidden_size: int) -> None:
    model = build_model(config=tiny_llama_config(vocab_size, hidden_size=hidden_size), seed=0)
    assert 100_000 <= count_parameters(model) <= 2_000_000
    assert model.config.num_hidden_layers == 2 and model.config.num_attention_heads == 4


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone() -> None:
    config = tiny_llama_config(500)
    state = torch.get_rng_state()
    first, second = build_model(config=config, seed=3), build_model(config=config, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(build_model(config=config, seed=4).lm_head.weight, first.lm_head.weight)


def test_sdpa_without_cache_and_reload_from_path(tmp_path: Path) -> None:
    model = build_model(config=tiny_llama_config(500, bos_token_id=0, eos_token_id=1, pad_token_id=2), seed=0)
    assert model.config._attn_implementation == "sdpa" and model.config.use_cache is False
    model.save_pretrained(tmp_path)
    loaded = build_model(str(tmp_path))
    assert loaded.config._attn_implementation == "sdpa" and loaded.config.use_cache is False
    ids = torch.tensor([[0, 5, 6, 7, 1]])
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)


def test_build_model_needs_a_path_or_a_config() -> None:
    with pytest.raises(ValueError, match="name_or_path or a config"):
        build_model()
