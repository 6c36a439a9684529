"""Held-out loss: the mean token loss of a model over packed rows it does not train on.

One function for both callers: training's validation loss (the engine, rows split across the workers) and
the evaluation's per-capability loss of a saved model (:func:`samples_loss`, one process).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from agentflan.train.batches import PackedBatches
from agentflan.train.packing import pack_samples
from agentflan.train.shards import rows_table
from agentflan.train.templates import EncodedSample

# (input_ids, position_ids, labels, weights) -> (loss sum, trained tokens): a CausalLMWithLoss or its engine
Forward = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def heldout_loss(
    forward: Forward,
    rows: PackedBatches,
    batch_rows: int,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
) -> tuple[float, int]:
    """(mean token loss, trained tokens) over ``rows``, each of ``world`` ranks running every ``world``-th row.

    Every rank runs the same number of forward passes (ZeRO-3 gathers parameters collectively, so a rank
    that stopped early would hang the others): ranks short of rows repeat row 0 with its labels masked.
    The totals are summed over the ranks, so every rank returns the same loss."""
    n = rows.n_rows
    per_rank = math.ceil(n / world)
    mine = [rank + world * j for j in range(per_rank)]
    totals = torch.zeros(2, device=device)
    with torch.no_grad():
        for k in range(0, per_rank, batch_rows):
            idx = mine[k : k + batch_rows]
            batch = rows.batch(
                [i if i < n else 0 for i in idx], ignore=[j for j, i in enumerate(idx) if i >= n]
            )
            loss_sum, count = forward(**batch.to(device).model_kwargs())
            totals += torch.stack([loss_sum.float(), count.float()])
    if world > 1:
        torch.distributed.all_reduce(totals)
    return totals[0].item() / max(1.0, totals[1].item()), int(totals[1].item())


def samples_loss(
    forward: Forward,
    samples: Sequence[EncodedSample],
    seq_len: int,
    pad_id: int,
    batch_rows: int,
    device: torch.device,
) -> tuple[float, int]:
    """:func:`heldout_loss` of encoded samples, packed into rows of ``seq_len`` as training packs them."""
    rows, _ = pack_samples(list(samples), seq_len, pad_id)
    packed = PackedBatches(rows_table(rows, seed=0), pin=device.type == "cuda")
    return heldout_loss(forward, packed, batch_rows, device)
