"""Batches collated by hand as tensors: packed rows stacked (:func:`collate_packed`), and the unpacked baseline
packing is measured against (:func:`collate_padded`: one sample per row, right-padded to the longest, with a
2-D ``attention_mask``).

For the throughput benchmarks and for the tests that check a packed row trains exactly what its samples train
alone (tests/train/conftest.py puts benchmarks/ on the path); training itself reads rows through
:class:`agentflan.train.batches.PackedBatches`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from agentflan.config import Config
from agentflan.train.corpus import Conversation
from agentflan.train.packing import PackedRow
from agentflan.train.templates import IGNORE_INDEX, EncodedSample, encode_conversation, encoding_template


def encode_split(conversations: list[Conversation], tok, cfg: Config) -> list[EncodedSample]:
    """Every conversation encoded with the run's template, uncut (the benchmarks cut them themselves)."""
    template = encoding_template(cfg)
    return [encode_conversation(c.messages, tok, template, tools=c.tools) for c in conversations]


def collate_packed(rows: Sequence[PackedRow]) -> dict[str, torch.Tensor]:
    """Stack packed rows into a batch. No ``attention_mask``: the position ids carry the sample boundaries."""
    return {
        "input_ids": torch.tensor([r.input_ids for r in rows], dtype=torch.long),
        "labels": torch.tensor([r.labels for r in rows], dtype=torch.long),
        "weights": torch.tensor([r.weights for r in rows], dtype=torch.float32),
        "position_ids": torch.tensor([r.position_ids for r in rows], dtype=torch.long),
        "real_mask": torch.arange(len(rows[0].input_ids)) < torch.tensor([[r.n_real] for r in rows]),
    }


def collate_padded(samples: Sequence[EncodedSample], pad_id: int) -> dict[str, torch.Tensor]:
    """One sample per row, right-padded to the longest, with a 2D ``attention_mask`` (the unpacked baseline)."""
    width = max(len(s) for s in samples)
    real_mask = torch.arange(width) < torch.tensor([[len(s)] for s in samples])
    pad = [width - len(s) for s in samples]
    return {
        "input_ids": torch.tensor([s.input_ids + [pad_id] * p for s, p in zip(samples, pad, strict=True)]),
        "labels": torch.tensor([s.labels + [IGNORE_INDEX] * p for s, p in zip(samples, pad, strict=True)]),
        "weights": torch.tensor(
            [s.weights + [0.0] * p for s, p in zip(samples, pad, strict=True)], dtype=torch.float32
        ),
        "position_ids": torch.arange(width).expand(len(samples), width).clone(),
        "attention_mask": real_mask.long(),
        "real_mask": real_mask,
    }


def real_token_share(batch: Mapping[str, torch.Tensor]) -> float:
    """Share of a batch's token slots that hold real tokens (not padding): the compute not wasted."""
    return batch["real_mask"].float().mean().item()
