"""Packing encoded samples into fixed-length rows (rows collated by hand, and the padded baseline packing is
measured against, live in ``benchmarks/collate.py``).

A packed row holds several samples back to back; ``position_ids`` restart at 0 at each sample. That is all the
model needs to keep the samples apart: with ``attention_mask=None`` and no KV cache, transformers reads the
restarts (wherever consecutive position ids do not step by +1 a new sequence starts, see
``masking_utils.find_packed_sequence_indices``) and builds a block-diagonal causal mask for sdpa and eager
attention, per row, whatever the batch size. See :func:`agentflan.train.model.model_inputs` for the call.
(flash_attention_2 reads packing from position ids only for a batch of one row, ``_is_packed_sequence`` in
``modeling_flash_attention_utils``; we use sdpa.)

The padding tail is one more "sequence" with positions ``0, 1, 2...``: it attends only to itself (so no row of
the mask is empty and nothing real attends to it), has labels -100 and weight 0.

Packing is deterministic (no randomness, ties broken by input order). Samples longer than ``seq_len`` keep their
first ``seq_len`` tokens (the head policy of :class:`~agentflan.train.templates.EncodedSample`); samples with no
trained token are dropped. Both are counted in :class:`PackStats`.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from itertools import accumulate

from agentflan.train.templates import IGNORE_INDEX, EncodedSample


class PackingStrategy(str, Enum):
    # Keep the input order; start a new row when the next sample does not fit. Rows stay in data order.
    SEQUENTIAL = "sequential"
    # Longest first, each into the fullest row it still fits. Fewer rows, less padding; reorders samples.
    BEST_FIT_DECREASING = "best_fit_decreasing"
    # No packing: one sample per row, padded to seq_len (the baseline packing is measured against).
    NONE = "none"


@dataclass
class PackedRow:
    """One row of ``seq_len`` tokens; plain lists, so ``dataclasses.asdict`` gives a dataset row."""

    input_ids: list[int]
    labels: list[int]
    weights: list[float]
    position_ids: list[int]
    sample_lengths: list[int]  # the samples in the row, in order; the rest is padding

    @property
    def n_real(self) -> int:
        return sum(self.sample_lengths)

    @property
    def n_samples(self) -> int:
        return len(self.sample_lengths)

    @property
    def real_share(self) -> float:
        return self.n_real / len(self.input_ids)

    @property
    def sample_spans(self) -> list[tuple[int, int]]:
        """``[start, stop)`` of each sample in the row."""
        ends = list(accumulate(self.sample_lengths))
        return list(zip([0, *ends[:-1]], ends, strict=True))


@dataclass
class PackStats:
    seq_len: int
    n_rows: int = 0
    n_samples: int = 0  # samples packed
    n_truncated: int = 0  # samples cut to seq_len
    n_dropped_untrained: int = 0  # samples with no trained token, not packed
    real_tokens: int = 0

    @property
    def real_token_share(self) -> float:
        return self.real_tokens / (self.n_rows * self.seq_len) if self.n_rows else 0.0


def pack_samples(
    samples: Iterable[EncodedSample],
    seq_len: int,
    pad_id: int,
    strategy: PackingStrategy | str = PackingStrategy.BEST_FIT_DECREASING,
) -> tuple[list[PackedRow], PackStats]:
    """Pack ``samples`` into rows of exactly ``seq_len`` tokens (``strategy`` may be given by its value)."""
    stats = PackStats(seq_len=seq_len)
    kept: list[EncodedSample] = []
    for sample in samples:
        if len(sample) > seq_len:
            stats.n_truncated += 1
            sample = sample.truncate(seq_len)
        if sample.n_trained == 0:
            stats.n_dropped_untrained += 1
            continue
        kept.append(sample)
    groups = _PACKERS[PackingStrategy(strategy)]([len(s) for s in kept], seq_len)
    rows = [_build_row([kept[i] for i in group], seq_len, pad_id) for group in groups]
    stats.n_rows = len(rows)
    stats.n_samples = len(kept)
    stats.real_tokens = sum(row.n_real for row in rows)
    return rows, stats


def count_rows(
    lengths: Sequence[int],
    seq_len: int,
    strategy: PackingStrategy | str = PackingStrategy.BEST_FIT_DECREASING,
) -> int:
    """Rows that packing samples of these lengths (each at most ``seq_len``) gives: the packing of a whole
    split from its lengths alone, without the tokens."""
    return len(_PACKERS[PackingStrategy(strategy)](lengths, seq_len))


def _sequential(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
    groups: list[list[int]] = []
    used = seq_len  # forces a first row
    for i, n in enumerate(lengths):
        if used + n > seq_len:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += n
    return groups


def _best_fit_decreasing(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
    """Bin packing: O(n log n) lookups in a sorted list of (room left, row index)."""
    groups: list[list[int]] = []
    room: list[tuple[int, int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        k = bisect.bisect_left(room, (lengths[i], -1))
        if k == len(room):
            groups.append([i])
            left, row = seq_len - lengths[i], len(groups) - 1
        else:
            left, row = room.pop(k)
            groups[row].append(i)
            left -= lengths[i]
        if left > 0:
            bisect.insort(room, (left, row))
    return groups


def _one_per_row(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
    return [[i] for i in range(len(lengths))]


_PACKERS = {
    PackingStrategy.NONE: _one_per_row,
    PackingStrategy.SEQUENTIAL: _sequential,
    PackingStrategy.BEST_FIT_DECREASING: _best_fit_decreasing,
}


def _build_row(samples: Sequence[EncodedSample], seq_len: int, pad_id: int) -> PackedRow:
    row = PackedRow([], [], [], [], sample_lengths=[len(s) for s in samples])
    for sample in samples:
        row.input_ids += sample.input_ids
        row.labels += sample.labels
        row.weights += sample.weights
        row.position_ids += range(len(sample))
    pad = seq_len - row.n_real
    row.input_ids += [pad_id] * pad
    row.labels += [IGNORE_INDEX] * pad
    row.weights += [0.0] * pad
    row.position_ids += range(pad)
    return row
