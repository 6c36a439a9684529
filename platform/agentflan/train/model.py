"""The model to train: a tiny Llama for tests and CPU runs, or any causal LM from a path (partitioned under
ZeRO-3), resized to the tokenizer and wrapped in LoRA when asked, with the attention kernel chosen for the
device (:func:`training_model`).

Packed rows and attention. A packed row keeps its samples apart through its restarting ``position_ids``:

- ``sdpa`` and ``eager``: transformers builds a dense block-diagonal causal mask (B x 1 x L x L) from the
  position ids. Correct on every device, but sdpa cannot use its flash kernel with a mask, and every masked
  block is still computed.
- ``flex_attention``: transformers builds a ``BlockMask`` from the same boundaries, and the kernel skips every
  block that lies across two samples. The fastest choice on a GPU without the flash-attn package.
- ``flash_attention_2`` / ``_3``: transformers reads packed boundaries from position ids only for a batch of one
  row (``_is_packed_sequence``), so :class:`~agentflan.train.loss.CausalLMWithLoss` flattens a micro-batch of
  B rows into one row of B x L tokens (what ``DataCollatorWithFlattening`` does); the varlen kernel then gets
  every sample's boundaries.

In transformers 5.x the packed-sequence mask is built only when ``attention_mask`` is None *and there is no KV
cache*; with ``use_cache=True`` (the default of most configs) ``LlamaModel.forward`` creates an empty
``DynamicCache``, the check is skipped and every token attends across sample boundaries, in training mode too.
So training passes ``use_cache=False`` explicitly (:func:`model_inputs`, which the loss module calls); a test checks that a packed sample's
logits do not change when another sample in its row does. The *saved* config keeps the cache on: whoever
generates from the exported model wants it.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Mapping
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel

from agentflan.config import Config
from agentflan.preflight import FLASH_ATTN_MODULES
from agentflan.train.zero3_loading import load_partitioned

ATTN_IMPLEMENTATIONS = ("sdpa", "flex_attention", "flash_attention_2", "flash_attention_3", "eager")
_FLASH_PACKAGES = FLASH_ATTN_MODULES


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
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def _swiglu_width(hidden_size: int) -> int:
    """Llama's MLP width: 8/3 of the hidden size, rounded up to a multiple of 8."""
    return -(-8 * hidden_size // 3 // 8) * 8


def available_attn_implementations(device: torch.device) -> list[str]:
    """The attention implementations that can train on ``device``, fastest first (measured on an H100 for the
    GPU order; see docs/benchmarks.md)."""
    out = []
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        if major >= 9 and importlib.util.find_spec(_FLASH_PACKAGES["flash_attention_3"]):
            out.append("flash_attention_3")
        if importlib.util.find_spec(_FLASH_PACKAGES["flash_attention_2"]):
            out.append("flash_attention_2")
        out.append("flex_attention")
    return [*out, "sdpa", "eager"]  # flex attention has no backward on CPU (torch 2.13)


def resolve_attn_implementation(requested: str, device: torch.device) -> str:
    """``auto`` becomes the fastest implementation available on ``device``: a flash-attn kernel where its package
    is installed, else flex attention on a GPU, else sdpa. A named one is checked to be usable here."""
    available = available_attn_implementations(device)
    if requested == "auto":
        return available[0]
    if requested not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation {requested!r}: choose one of {', '.join(ATTN_IMPLEMENTATIONS)}"
        )
    if requested not in available:
        why = (
            f"needs the {_FLASH_PACKAGES[requested]} package and a GPU"
            if requested in _FLASH_PACKAGES
            else f"does not run on {device.type}"
        )
        raise ValueError(f"train.model.attn_implementation={requested} {why}; available here: {available}")
    return requested


def flattens_batch(attn_implementation: str) -> bool:
    """Whether a micro-batch is fed as one row of all its tokens (flash varlen reads boundaries only then)."""
    return attn_implementation.startswith("flash_attention")


def build_model(
    name_or_path: str | None = None,
    config: LlamaConfig | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
    attn_implementation: str = "sdpa",
    device: torch.device | str | None = None,
) -> PreTrainedModel:
    """A causal LM in ``dtype`` with the given attention kernel.

    With ``name_or_path`` the weights are loaded with ``AutoModelForCausalLM.from_pretrained`` (in ``dtype``,
    streamed: ``low_cpu_mem_usage``); without it a model is initialised from ``config`` (e.g.
    :func:`tiny_llama_config`), under ``seed`` if given, without touching the global random state, directly on
    ``device`` when one is given (a 7B model initialised on the GPU takes seconds, on one CPU core minutes).

    Under ZeRO-3 call this while a ``transformers.integrations.HfDeepSpeedConfig`` is alive: transformers then
    builds (and loads) the model inside ``deepspeed.zero.Init``, partitioned, so no rank holds all of it.
    """
    if name_or_path is not None:
        return AutoModelForCausalLM.from_pretrained(
            name_or_path, attn_implementation=attn_implementation, dtype=dtype, low_cpu_mem_usage=True
        )
    if config is None:
        raise ValueError("build_model needs a name_or_path or a config (e.g. tiny_llama_config(vocab_size))")
    from transformers.integrations import is_deepspeed_zero3_enabled

    on_device = torch.device(device) if device is not None and not is_deepspeed_zero3_enabled() else None
    with torch.random.fork_rng(devices=[]), on_device or contextlib.nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
            if on_device is not None and on_device.type == "cuda":
                torch.cuda.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=dtype)


@contextlib.contextmanager
def freed_memory_returned(threshold: int = 64 * 1024):
    """While loading, have glibc hand every freed allocation above ``threshold`` straight back to the OS.

    Building and loading a model allocates and frees many weight-sized buffers; glibc keeps freed blocks under
    its (growing, up to 32 MB) mmap threshold in its heap, so a rank's resident memory climbs past what it
    holds (measured: 0.78x of the model on one of 2 ZeRO-3 ranks instead of 0.58x, docs/benchmarks.md). After
    loading the threshold goes to 32 MB, glibc's usual ceiling. A no-op where glibc's ``mallopt`` is missing.
    """
    import ctypes

    m_mmap_threshold = -3
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(m_mmap_threshold, threshold)
    except (OSError, AttributeError):
        yield
        return
    try:
        yield
    finally:
        libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)
        with contextlib.suppress(AttributeError):
            libc.malloc_trim(0)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated decoder blocks (``model.model.layers`` for Llama-family models, through a peft wrapper)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return list(base.get_decoder().layers)


def set_gradient_checkpointing(model: PreTrainedModel, mode: str) -> None:
    """``full`` recomputes every decoder layer in backward, ``alternate`` every other one, ``none`` none.

    Non-reentrant checkpointing (the PyTorch default going forward; it also works with compiled layers and with
    inputs that do not require grad, such as a frozen embedding under LoRA)."""
    if mode == "none":
        return
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x
    kwargs = {"use_reentrant": False}
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if mode == "alternate":
        for i, layer in enumerate(decoder_layers(model)):
            if i % 2:
                layer.gradient_checkpointing = False


def compile_layers(model: torch.nn.Module) -> None:
    """``torch.compile`` each decoder layer in place (regional compilation): the layers share one graph, so
    compiling a 32-layer model costs about what one layer does, and the fused norms, RoPE and SwiGLU save
    the memory round trips that dominate the non-matmul time."""
    for layer in decoder_layers(model):
        layer.compile()


def training_model(
    cfg: Config,
    vocab_size: int,
    special_ids: tuple[int | None, int | None, int | None],
    dtype: torch.dtype,
    attn: str,
    device: torch.device,
    ds_config: dict[str, Any],
) -> tuple[PreTrainedModel, Any]:
    """The model a run trains, for a tokenizer of ``vocab_size`` with ``(bos, eos, pad)`` ids ``special_ids``.

    Under ZeRO-3 it is built partitioned: a checkpoint by :func:`load_partitioned` (each rank reads its own
    slices), a config inside transformers' ``zero.Init``, entered while the ``HfDeepSpeedConfig`` returned
    beside the model lives: the caller keeps it for the run, since transformers also reads it to resize
    partitioned embeddings and to save (None without ZeRO-3). Otherwise a checkpoint is loaded whole, a
    config is initialised on ``device`` from the run's seed (identical weights on every rank)."""
    from transformers.integrations import HfDeepSpeedConfig

    m = cfg.train.model
    zero3 = cfg.train.deepspeed.zero_stage == 3
    # before the load: without it a checkpoint with tied embeddings (one saved copy) misses lm_head
    hf_ds_config = HfDeepSpeedConfig(ds_config) if zero3 else None
    model = load_partitioned(m.name_or_path, ds_config, dtype, attn) if zero3 and m.name_or_path else None
    if not m.name_or_path:
        config = tiny_llama_config(
            vocab_size, m.hidden_size, m.num_layers, m.num_heads, max(2048, cfg.train.seq_len), *special_ids
        )
        model = build_model(
            config=config, seed=cfg.seed, dtype=dtype, attn_implementation=attn, device=device
        )
    elif model is None:
        model = build_model(m.name_or_path, dtype=dtype, attn_implementation=attn)
    if vocab_size > model.config.vocab_size:
        # the named template's markers were added to the tokenizer (adapt_tokenizer): new rows at the mean of
        # the old ones; under ZeRO-3 transformers gathers the partitioned embeddings to resize them
        model.resize_token_embeddings(vocab_size, pad_to_multiple_of=64, mean_resizing=True)
    if m.lora.enabled:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise RuntimeError("train.model.lora needs peft: pip install 'agentflan[lora]'") from None
        lc = LoraConfig(
            r=m.lora.r,
            lora_alpha=m.lora.alpha,
            lora_dropout=m.lora.dropout,
            target_modules=m.lora.target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lc)
    return model, hf_ds_config


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The keyword arguments for ``model(**...)`` from a packed or padded batch.

    Packed batches have no ``attention_mask`` and must not get one: the position ids carry the boundaries.
    Labels stay out (the loss is :mod:`agentflan.train.loss`'s, not the model's own).
    """
    inputs: dict[str, Any] = {
        "input_ids": batch["input_ids"],
        "position_ids": batch["position_ids"],
        "use_cache": False,
    }
    if "attention_mask" in batch:
        inputs["attention_mask"] = batch["attention_mask"]
    return inputs
