"""Loading a pretrained checkpoint under ZeRO-3 with each rank reading only its own partition of every weight.

Why not transformers' loading: under ZeRO-3 it gives rank 0 the whole state dict to copy into gathered layers
(rank 0 peaked at 1.55x the model's size in private memory, docs/benchmarks.md). :func:`load_partitioned`
builds the model inside ``deepspeed.zero.Init`` with weight initialisation skipped and copies into each rank's
partition only its slice of each weight, read memory-mapped from the safetensors files.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel


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


def _safetensors_files(name_or_path: str) -> list[Any]:
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
    """transformers' own ZeRO-3 loading (rank 0 reads the whole checkpoint): ``from_pretrained`` inside
    ``zero.Init``, which transformers enters while an ``HfDeepSpeedConfig`` is alive."""
    from transformers.integrations import HfDeepSpeedConfig

    keep = HfDeepSpeedConfig(ds_config)  # noqa: F841 - transformers reads it while it lives
    return AutoModelForCausalLM.from_pretrained(
        name_or_path, attn_implementation=attn_implementation, dtype=dtype, low_cpu_mem_usage=True
    )
