"""The tiny Llama: its size, seeded construction, reloading from disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agentflan.train.model import (
    build_model,
    decoder_layers,
    resolve_attn_implementation,
    set_gradient_checkpointing,
    tiny_llama_config,
)
from agentflan.train.strategy import parameter_counts


@pytest.mark.parametrize(("vocab_size", "hidden_size"), [(1000, 64), (4096, 128)])
def test_tiny_config_is_tiny(vocab_size: int, hidden_size: int) -> None:
    model = build_model(config=tiny_llama_config(vocab_size, hidden_size=hidden_size), seed=0)
    assert 100_000 <= parameter_counts(model)[0] <= 2_000_000
    assert model.config.num_hidden_layers == 2 and model.config.num_attention_heads == 4


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone() -> None:
    config = tiny_llama_config(500)
    state = torch.get_rng_state()
    first, second = build_model(config=config, seed=3), build_model(config=config, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(build_model(config=config, seed=4).lm_head.weight, first.lm_head.weight)


def test_reload_from_path_keeps_attention_and_cache(tmp_path: Path) -> None:
    """The saved config keeps the KV cache on (generation wants it; training turns it off per call)."""
    model = build_model(config=tiny_llama_config(500, bos_token_id=0, eos_token_id=1, pad_token_id=2), seed=0)
    assert model.config._attn_implementation == "sdpa" and model.config.use_cache is True
    model.save_pretrained(tmp_path)
    loaded = build_model(str(tmp_path), attn_implementation="eager")
    assert loaded.config._attn_implementation == "eager" and loaded.config.use_cache is True
    ids = torch.tensor([[0, 5, 6, 7, 1]])
    torch.testing.assert_close(
        loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-5, atol=1e-6
    )


def test_build_in_a_dtype_and_on_a_device() -> None:
    model = build_model(config=tiny_llama_config(500), seed=0, dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_attention_implementation_is_resolved_for_the_device() -> None:
    cpu = torch.device("cpu")
    assert resolve_attn_implementation("auto", cpu) == "sdpa"
    assert resolve_attn_implementation("eager", cpu) == "eager"
    with pytest.raises(ValueError, match="flash_attention_2 needs the flash_attn package"):
        resolve_attn_implementation("flash_attention_2", cpu)
    with pytest.raises(ValueError, match="flex_attention does not run on cpu"):
        resolve_attn_implementation("flex_attention", cpu)


@pytest.mark.parametrize(
    ("mode", "checkpointed"), [("none", []), ("full", [0, 1, 2, 3]), ("alternate", [0, 2])]
)
def test_gradient_checkpointing_choices(mode: str, checkpointed: list[int]) -> None:
    """Which layers recompute, and that recomputing changes nothing in the gradients."""
    config = tiny_llama_config(300, hidden_size=32, num_layers=4)
    reference, model = build_model(config=config, seed=0).train(), build_model(config=config, seed=0).train()
    set_gradient_checkpointing(model, mode)
    assert [
        i for i, layer in enumerate(decoder_layers(model)) if layer.gradient_checkpointing
    ] == checkpointed
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    for m in (reference, model):
        m(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    for (name, a), b in zip(reference.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, msg=lambda msg, name=name: f"{name}: {msg}")


def test_build_model_needs_a_path_or_a_config() -> None:
    with pytest.raises(ValueError, match="name_or_path or a config"):
        build_model()


@pytest.mark.slow  # torch.compile (~4 s on a busy 2-core machine)
def test_compiled_layers_train_like_eager_ones() -> None:
    """train.model.compile: each decoder layer compiled in place (inductor on the CPU here, ~10 s) gives the
    same loss and gradients on a packed batch."""
    from agentflan.train.loss import CausalLMWithLoss
    from agentflan.train.model import compile_layers

    config = tiny_llama_config(300, hidden_size=32, num_layers=2)
    eager, compiled = build_model(config=config, seed=0).train(), build_model(config=config, seed=0).train()
    compile_layers(compiled)
    assert all(getattr(layer, "_compiled_call_impl", None) is not None for layer in decoder_layers(compiled))
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(0))
    positions = torch.cat([torch.arange(20), torch.arange(20)]).expand(2, 40).clone()
    losses = []
    for model in (eager, compiled):
        loss_sum, _ = CausalLMWithLoss(model, "full", 16, "sdpa")(ids, positions, ids, torch.ones(2, 40))
        loss_sum.backward()
        losses.append(loss_sum.detach())
    torch.testing.assert_close(losses[1], losses[0])
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(
            b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}"
        )
