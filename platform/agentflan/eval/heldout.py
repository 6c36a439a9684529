"""Held-out loss per capability: the validation split encoded once per trained capability (each sample trains
only that capability's tokens), scored with training's own held-out loss
(:func:`agentflan.train.heldout.samples_loss`) on the saved model.
"""

from __future__ import annotations

from typing import Any

from agentflan.config import Config
from agentflan.data.pipeline import read_corpus
from agentflan.data.record import CALL_PARTS, TRAINED_CAPABILITIES, Message, Record


def heldout_samples(cfg: Config, tokenizer, records: list[Record]) -> dict[str, list[Any]]:
    """The validation records encoded once per capability: each sample trains only that capability's tokens
    (whole turns, or the parts of native call messages: thought, names, arguments; see :func:`_for_capability`)."""
    from agentflan.train.templates import encode_conversation, encoding_template

    template = encoding_template(cfg)
    out: dict[str, list[Any]] = {c: [] for c in TRAINED_CAPABILITIES}
    for rec in records:
        caps = set()
        for m in rec.messages:
            if m.role == "assistant":
                caps |= (
                    {CALL_PARTS[p] for p in m.part_weights or {}}
                    if m.capability == "tool_call"
                    else {m.capability}
                )
        for cap in sorted(caps & set(out)):
            msgs = [_for_capability(m, cap) for m in rec.messages]
            sample = encode_conversation(
                msgs, tokenizer, template, max_length=cfg.train.seq_len, tools=rec.tools or None
            )
            if sample.n_trained:
                out[cap].append(sample)
    return out


def _for_capability(m: Message, cap: str) -> dict[str, Any]:
    """A message trained only where it teaches ``cap``, at weight 1; a native call message's structure (tags,
    braces) is left out, so each capability's loss is over its own tokens."""
    d = {**m.to_dict(), "loss": m.role == "assistant" and m.capability == cap, "weight": 1.0}
    if m.role == "assistant" and m.capability == "tool_call":
        parts = {p: float(CALL_PARTS[p] == cap) for p in m.part_weights or {}}
        d.update(loss=any(parts.values()), weight=0.0, part_weights=parts)
    return d


def heldout_loss(
    model_path: str, samples: dict[str, list[Any]], seq_len: int, batch_rows: int, device: str
) -> dict[str, dict[str, float]]:
    """Mean token loss per capability: each capability's samples packed into rows of ``seq_len`` and run a
    batch of rows at a time through the training loss (bf16 on a GPU, float32 on a CPU), by training's own
    held-out loss (:func:`agentflan.train.heldout.samples_loss`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentflan.train.heldout import samples_loss
    from agentflan.train.loss import CausalLMWithLoss

    dev = torch.device(device)
    tok = AutoTokenizer.from_pretrained(model_path)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(dev).eval()
    module = CausalLMWithLoss(model, "chunked" if dev.type == "cuda" else "full", 2048, "sdpa")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = {}
    with torch.no_grad():
        for cap, cap_samples in samples.items():
            if not cap_samples:
                continue
            loss, tokens = samples_loss(module, cap_samples, seq_len, pad, batch_rows, dev)
            out[cap] = {"loss": loss, "tokens": tokens}
    return out


def validation_loss(cfg: Config, model_path: str, records: list[Record]) -> dict[str, dict[str, float]]:
    """Mean token loss of the model on the validation split, per capability of the trained turns; on a GPU
    Ray task with ``eval.use_gpu``."""
    from transformers import AutoTokenizer

    samples = heldout_samples(cfg, AutoTokenizer.from_pretrained(model_path), records)
    args = (model_path, samples, cfg.train.seq_len, max(1, cfg.eval.batch_size // 4))
    if not cfg.eval.use_gpu:
        return heldout_loss(*args, device="cpu")
    import ray

    return ray.get(ray.remote(num_gpus=1)(heldout_loss).remote(*args, device="cuda"))


def heldout_records(cfg: Config, corpus: list[Record]) -> list[Record]:
    """The validation split: the corpus's own, or that of ``data.heldout_from`` (a Tune study's base)."""
    if cfg.data.heldout_from:
        return read_corpus(cfg.data.heldout_from, "validation")
    return [r for r in corpus if r.meta.get("split") == "validation"]
