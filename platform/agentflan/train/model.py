"""The model: a tiny Llama for tests and CPU runs, or any causal LM from a path, always with sdpa attention.

Packed rows rely on transformers building a block-diagonal mask from restarting ``position_ids``. In
transformers 5.x it does so only when ``attention_mask`` is None *and there is no KV cache*; with
``use_cache=True`` (the default of most configs, including Llama's) ``LlamaModel.forward`` creates an empty
``DynamicCache``, the packed-sequence check is skipped and every token attends across sample boundaries, in
training mode too. So :func:`build_model` sets ``config.use_cache = False`` and :func:`model_inputs` passes
``use_cache=False`` explicitly; a test checks that a packed sample's logits do not change when another sample in
its row does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel

ATTN_IMPLEMENTATION = "sdpa"


def tiny_llama_config(
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 2048,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> LlamaConfig:
    """A Llama of a few hundred thousand to ~2M parameters (vocab 1-4k, hidden 64-128): big enough to have every
    part of the real architecture (RoPE, GQA-capable attention, SwiGLU, RMSNorm), small enough for CPU tests.

    Embeddings are tied (as in small Llamas), so the vocabulary is paid for once.
    """
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=_swiglu_width(hidden_size),
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        use_cache=False,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def _swiglu_width(hidden_size: int) -> int:
    """Llama's MLP width: 8/3 of the hidden size, rounded up to a multiple of 8."""
    return -(-8 * hidden_size // 3 // 8) * 8


def build_model(
    name_or_path: str | None = None,
    config: LlamaConfig | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
) -> PreTrainedModel:
    """A causal LM with sdpa attention and the KV cache off (see the module docstring).

    With ``name_or_path`` the weights are loaded with ``AutoModelForCausalLM.from_pretrained``; without it a
    model is initialised from ``config`` (e.g. :func:`tiny_llama_config`), under ``seed`` if given, without
    touching the global random state.
    """
    if name_or_path is not None:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, attn_implementation=ATTN_IMPLEMENTATION, dtype=dtype
        )
    elif config is None:
        raise ValueError("build_model needs a name_or_path or a config (e.g. tiny_llama_config(vocab_size))")
    else:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(
                config, attn_implementation=ATTN_IMPLEMENTATION, dtype=dtype
            )
    model.config.use_cache = False
    return model


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The keyword arguments for ``model(**...)`` from a packed or padded batch.

    Packed batches have no ``attention_mask`` and must not get one: the position ids carry the boundaries.
    Labels stay out (the loss is :func:`agentflan.train.loss.weighted_token_loss`, not the model's own).
    """
    inputs: dict[str, Any] = {
        "input_ids": batch["input_ids"],
        "position_ids": batch["position_ids"],
        "use_cache": False,
    }
    if "attention_mask" in batch:
        inputs["attention_mask"] = batch["attention_mask"]
    return inputs


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())
