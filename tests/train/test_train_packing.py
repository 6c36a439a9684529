"""Packing: rows of exactly seq_len, samples intact, boundaries that transformers detects, counts kept."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict

import pytest
from transformers.masking_utils import find_packed_sequence_indices

from agentflan.train.packing import PackedRow, PackingStrategy, pack_samples
from agentflan.train.templates import IGNORE_INDEX, EncodedSample, encode_conversation
from collate import collate_packed, collate_padded, real_token_share

SEQ_LEN = 256


@pytest.fixture(scope="module")
def samples(tokenizers, chats, agent_chats) -> list[EncodedSample]:
    tok = tokenizers["chatml"]
    return [encode_conversation(m, tok, "chatml") for m in chats[:40] + agent_chats[:6]]


def _key(sample: EncodedSample) -> tuple:
    return tuple(sample.input_ids), tuple(sample.labels), tuple(sample.weights)


def _packable(samples: list[EncodedSample]) -> list[EncodedSample]:
    """What packing keeps: each sample cut to SEQ_LEN, those left with nothing to train on dropped."""
    return [c for c in (s.truncate(SEQ_LEN) for s in samples) if c.n_trained]


def _unpack(row: PackedRow) -> list[EncodedSample]:
    return [EncodedSample(row.input_ids[a:b], row.labels[a:b], row.weights[a:b]) for a, b in row.sample_spans]


@pytest.mark.parametrize("strategy", list(PackingStrategy))
def test_rows_hold_every_sample_intact(strategy: PackingStrategy, samples, tokenizers) -> None:
    pad_id = tokenizers["chatml"].pad_token_id
    rows, stats = pack_samples(samples, SEQ_LEN, pad_id, strategy)

    expected = _packable(samples)
    assert Counter(_key(s) for row in rows for s in _unpack(row)) == Counter(_key(s) for s in expected)
    for row in rows:
        assert {len(v) for v in (row.input_ids, row.labels, row.weights, row.position_ids)} == {SEQ_LEN}
        assert row.position_ids[: row.n_real] == [p for n in row.sample_lengths for p in range(n)]
        tail = slice(row.n_real, SEQ_LEN)
        assert set(row.input_ids[tail]) <= {pad_id}
        assert set(row.labels[tail]) <= {IGNORE_INDEX}
        assert set(row.weights[tail]) <= {0.0}
        assert row.position_ids[tail] == list(range(SEQ_LEN - row.n_real))
    assert stats.n_rows == len(rows) and stats.n_samples == len(expected)
    assert stats.n_dropped_untrained == len(samples) - len(expected) > 0
    assert stats.n_truncated == sum(len(s) > SEQ_LEN for s in samples) > 0
    assert stats.real_tokens == sum(len(s) for s in expected)
    assert stats.real_token_share == pytest.approx(stats.real_tokens / (len(rows) * SEQ_LEN))


def test_sequential_keeps_order_and_best_fit_uses_fewer_rows(samples, tokenizers) -> None:
    pad_id = tokenizers["chatml"].pad_token_id
    sequential, seq_stats = pack_samples(samples, SEQ_LEN, pad_id, PackingStrategy.SEQUENTIAL)
    best, best_stats = pack_samples(samples, SEQ_LEN, pad_id, PackingStrategy.BEST_FIT_DECREASING)
    order = [_key(s) for row in sequential for s in _unpack(row)]
    assert order == [_key(s) for s in _packable(samples)]
    assert len(best) <= len(sequential)
    assert best_stats.real_token_share >= seq_stats.real_token_share
    # Deterministic: the same input packs the same way.
    assert [asdict(r) for r in pack_samples(samples, SEQ_LEN, pad_id)[0]] == [asdict(r) for r in best]


def test_transformers_sees_each_sample_as_its_own_sequence(samples, tokenizers) -> None:
    """The boundaries transformers reads from position_ids are the sample boundaries (and the padding tail)."""
    rows, _ = pack_samples(samples, SEQ_LEN, tokenizers["chatml"].pad_token_id)
    batch = collate_packed(rows)
    sequence_ids = find_packed_sequence_indices(batch["position_ids"])
    assert sequence_ids is not None
    for row, ids in zip(rows, sequence_ids.tolist(), strict=True):
        lengths = row.sample_lengths + ([SEQ_LEN - row.n_real] if row.n_real < SEQ_LEN else [])
        assert ids == [k for k, n in enumerate(lengths) for _ in range(n)]


def test_a_length_one_sample_and_a_full_row_are_kept_apart() -> None:
    one = EncodedSample([5], [IGNORE_INDEX], [0.0])
    trained = EncodedSample([7, 8, 9], [IGNORE_INDEX, 8, 9], [0.0, 1.0, 1.0])
    rows, stats = pack_samples([trained, trained], 3, pad_id=0)
    assert [r.n_real for r in rows] == [3, 3] and stats.real_token_share == 1.0
    # A sample with nothing to train on is dropped and counted, not packed.
    rows, stats = pack_samples([one, trained], 8, pad_id=0, strategy=PackingStrategy.SEQUENTIAL)
    assert stats.n_dropped_untrained == 1 and stats.n_samples == 1
    assert rows[0].position_ids == [0, 1, 2, 0, 1, 2, 3, 4]


def test_padded_collate_and_real_token_share(samples, tokenizers) -> None:
    pad_id = tokenizers["chatml"].pad_token_id
    few = samples[:4]
    batch = collate_padded(few, pad_id)
    width = max(len(s) for s in few)
    assert batch["input_ids"].shape == (4, width)
    assert batch["attention_mask"].sum().item() == sum(len(s) for s in few)
    assert real_token_share(batch) == pytest.approx(sum(len(s) for s in few) / (4 * width))
    padding = batch["attention_mask"] == 0
    assert (batch["labels"][padding] == IGNORE_INDEX).all() and (batch["weights"][padding] == 0).all()

    rows, stats = pack_samples(few, SEQ_LEN, pad_id)
    assert real_token_share(collate_packed(rows)) == pytest.approx(stats.real_token_share)
