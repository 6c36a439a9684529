"""Which packed rows each optimizer step reads: arithmetic on the step, so a checkpoint's data position is
just its step.

The packed shards hold their rows in a seeded order (:mod:`agentflan.train.pack_corpus`); the first epoch reads
them in that order, every later epoch in a fresh seeded permutation (:func:`epoch_order`).
"""

from __future__ import annotations

import functools
import random


def step_rows(
    step: int, rank: int, world: int, micro: int, accum: int, n_rows: int, seed: int = 0
) -> list[list[int]]:
    """Row indices of each micro-batch of ``rank`` in optimizer step ``step`` (0-based).

    A step takes the next ``global = micro * world * accum`` positions of the data stream: position ``p`` is
    row ``epoch_order(p // n_rows)[p % n_rows]``. The first epoch reads the table in its (seed-shuffled)
    order, every later epoch in a fresh seeded permutation, so a second epoch reshuffles, and the stream
    wraps across epochs (a corpus smaller than one batch still trains). The data position of a step is a
    function of the step alone: resuming at step ``s`` reads exactly what an uninterrupted run would.
    """
    base = step * micro * world * accum
    out = []
    for a in range(accum):
        start = base + (a * world + rank) * micro
        out.append([_row_at(start + i, n_rows, seed) for i in range(micro)])
    return out


def _row_at(position: int, n_rows: int, seed: int) -> int:
    epoch, i = divmod(position, n_rows)
    return i if epoch == 0 else epoch_order(n_rows, seed, epoch)[i]


@functools.lru_cache(maxsize=4)
def epoch_order(n_rows: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The row order of ``epoch`` (> 0): a permutation seeded by the run's seed and the epoch."""
    order = list(range(n_rows))
    random.Random(f"{seed}:epoch:{epoch}").shuffle(order)
    return tuple(order)
