"""The model: a tiny Llama for tests and CPU runs, or any causal LM from a path, with the attention kernel chosen
for the device.

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
So training passes ``use_cache=False`` explicitly (:func:`model_inputs`); a test checks that a packed sample's
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

ATTN_IMPLEMENTATIONS = ("sdpa", "flex_attention", "flash_attention_2", "flash_attention_3", "eager")
_FLASH_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}


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


def load_partitioned(
    name_or_path: str, ds_config: dict[str, Any], dtype: torch.dtype, attn_implementation: str
) -> PreTrainedModel:
    """A pretrained checkpoint under ZeRO-3, each rank reading only its own partition of every weight.

    transformers' ZeRO-3 loading gives rank 0 the whole state dict to copy into gathered layers (measured:
    rank 0 peaked at 1.55x the model's size in private memory, docs/benchmarks.md). Here the model is built
    inside ``deepspeed.zero.Init`` with weight initialisation skipped (every parameter is empty but for its
    partition), then each rank copies its slice of each weight, a range of the flattened tensor, from the
    memory-mapped safetensors files (``safe_open(...).get_slice``: only those rows are read). No rank holds
    more than its partition plus one weight's slice. A checkpoint whose names are not the model's (an
    architecture transformers renames on load) falls back to transformers' own loading.

    ``zero.Init`` would broadcast every new (empty) weight from rank 0 before partitioning it, so that random
    initialisation agrees across ranks; here every element is then overwritten from the checkpoint, so the
    broadcast is skipped (:func:`_init_without_broadcast`). It was not only wasted time: receiving it writes a
    whole weight on every rank but 0, while rank 0 only reads pages it never touched, so rank 1 peaked a
    whole embedding above rank 0 (0.61x of the model against 0.53x, docs/benchmarks.md).
    """
    from safetensors import safe_open
    from transformers import AutoConfig

    try:  # transformers >= 5.2x: keeps zero.Init from casting RoPE's arange to bf16
        from transformers.integrations.deepspeed import prevent_arange_dtype_change
    except ImportError:  # older (the GPU machine's 5.17): RoPE buffers as those versions build them
        prevent_arange_dtype_change = contextlib.nullcontext

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights

    files = _safetensors_files(name_or_path)
    config = AutoConfig.from_pretrained(name_or_path)
    with (
        no_init_weights(),
        prevent_arange_dtype_change(),
        _init_without_broadcast()(config_dict_or_path=ds_config),
    ):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    params = dict(model.named_parameters())
    rank = torch.distributed.get_rank()
    loaded: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            if not set(f.keys()) <= set(params) | _tied_names(model):
                return _transformers_zero3_load(name_or_path, ds_config, dtype, attn_implementation)
            for name in f.keys():  # noqa: SIM118 - a safetensors handle is not iterable
                if name not in params:
                    continue  # a tied copy (lm_head = embed_tokens): loaded through the other name
                p = params[name]
                size = p.ds_tensor.ds_numel
                start, end = size * rank, min(size * (rank + 1), p.ds_numel)
                if start < end:
                    part = _flat_range(f.get_slice(name), start, end)
                    with torch.no_grad():
                        p.ds_tensor.narrow(0, 0, end - start).copy_(part)
                loaded.add(name)
    if missing := set(params) - loaded:
        raise ValueError(f"{name_or_path}: the checkpoint has no weights for {sorted(missing)[:5]}")
    return model


def _init_without_broadcast() -> type:
    """``deepspeed.zero.Init`` with the broadcast of each new parameter from rank 0 left out (see
    :func:`load_partitioned`): only for a model whose every weight is then loaded, partition by partition.

    It overrides ``Init._zero_init_param`` (DeepSpeed 0.14-0.19: convert, broadcast, partition). Where a
    DeepSpeed version has no such method, the override is never called and the broadcast happens as before:
    the same model, a whole weight more memory on ranks above 0 while loading."""
    import deepspeed

    class InitWithoutBroadcast(deepspeed.zero.Init):
        def _zero_init_param(self, param: torch.nn.Parameter) -> None:
            self._convert_to_deepspeed_param(param)
            param.partition()

    return InitWithoutBroadcast


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


def _safetensors_files(name_or_path: str) -> list[Any]:
    from pathlib import Path

    from huggingface_hub import snapshot_download

    root = Path(name_or_path)
    if not root.is_dir():
        root = Path(snapshot_download(name_or_path, allow_patterns=["*.safetensors", "*.json"]))
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{name_or_path}: no .safetensors weights (ZeRO-3 loading reads safetensors)")
    return files


def _tied_names(model: PreTrainedModel) -> set[str]:
    """Checkpoint names that are tied copies of another parameter (named_parameters lists each once)."""
    all_names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    return all_names - {n for n, _ in model.named_parameters()}


def _flat_range(view: Any, start: int, end: int) -> torch.Tensor:
    """Elements ``[start, end)`` of the flattened tensor behind a safetensors slice, reading only the rows
    (first-dimension entries) that hold them."""
    shape = view.get_shape()
    row = 1
    for d in shape[1:]:
        row *= d
    if not shape:
        return view[:].reshape(-1)[start:end]
    first, last = start // row, -(-end // row)
    rows = view[first:last].reshape(-1)
    return rows[start - first * row : end - first * row]


def _transformers_zero3_load(
    name_or_path: str, ds_config: dict[str, Any], dtype: torch.dtype, attn_implementation: str
) -> PreTrainedModel:
    from transformers.integrations import HfDeepSpeedConfig

    keep = HfDeepSpeedConfig(ds_config)  # noqa: F841 - transformers reads it while it lives
    return build_model(name_or_path, dtype=dtype, attn_implementation=attn_implementation)


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


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())
