"""The trained model as a Hugging Face checkpoint: ``save_pretrained`` weights, its tokenizer, and a generation
config that stops where a trained reply stops.

Under ZeRO-3 the 16-bit weights are gathered from every rank's shards first (a collective, see
:meth:`~agentflan.train.strategy.DeepSpeedStrategy.gathered_state_dict`); a LoRA model is merged into its
base before saving, so the export loads with plain ``AutoModelForCausalLM``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from agentflan.train.strategy import DeepSpeedStrategy


def save_model(strategy: DeepSpeedStrategy, model_dir: Path, tokenizer_dir: str) -> None:
    """Write the trained model, its tokenizer and generation config to ``model_dir`` (rank 0 writes; under
    ZeRO-3 every rank must call it). The config keeps the KV cache on."""
    from transformers import AutoTokenizer

    scratch = model_dir.parent / f".{model_dir.name}.zero3"
    state_dict = strategy.gathered_state_dict(scratch)
    if strategy.rank != 0:
        return
    model = strategy.engine.module.model
    if strategy.cfg.train.model.lora.enabled:
        if state_dict is not None:
            model = _whole_peft_model(model, state_dict)
            state_dict = None
        model = model.merge_and_unload()
    model_dir.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model.config.use_cache = True  # off only inside training (model_inputs); generation wants the cache
    model.generation_config = generation_config(model, tok)
    model.save_pretrained(model_dir, state_dict=state_dict)
    tok.save_pretrained(model_dir)
    shutil.rmtree(scratch, ignore_errors=True)


def generation_config(model: Any, tok: Any) -> Any:
    """Greedy by default, stopping at the template's end-of-turn marker (the tokenizer's eos) and at the base
    model's own eos, padding with the tokenizer's pad: what ``generate`` on the export needs to stop where a
    trained reply stops."""
    from transformers import GenerationConfig

    base_eos = model.config.eos_token_id
    base_eos = base_eos if isinstance(base_eos, list) else [base_eos]
    stops = list(dict.fromkeys(i for i in [tok.eos_token_id, *base_eos] if i is not None))
    return GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=stops[0] if len(stops) == 1 else stops,
        pad_token_id=tok.pad_token_id,
        do_sample=False,
    )


def _whole_peft_model(partitioned, state_dict):
    """Rank 0 under ZeRO-3 with LoRA: the trained model, whole, to merge the adapters into. The training
    model's parameters are empty partitions, so a copy is built outside ``zero.Init`` (the end of training:
    transformers' ZeRO-3 switch is turned off for good) with the same adapters, and the gathered 16-bit
    weights are loaded into it."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    dtype = next(iter(state_dict.values())).dtype
    base = AutoModelForCausalLM.from_config(partitioned.get_base_model().config, dtype=dtype)
    whole = get_peft_model(base, partitioned.peft_config["default"])
    whole.load_state_dict(state_dict)
    return whole
