"""Packed rows as tensors and the prefetcher: the batches the loop gets are the rows of the table, in plan
order, and a failure while assembling one reaches the training thread."""

from __future__ import annotations

import pytest
import torch

from agentflan.train.batches import PackedBatches, Prefetcher
from agentflan.train.packing import pack_samples
from agentflan.train.sampling import epoch_order, step_rows
from agentflan.train.shards import rows_table
from agentflan.train.templates import IGNORE_INDEX, encode_conversation
from collate import collate_packed


@pytest.fixture(scope="module")
def packed(tokenizers, chats):
    tok = tokenizers["chatml"]
    samples = [encode_conversation(c, tok, "chatml", max_length=120) for c in chats[:40]]
    rows, _ = pack_samples([s for s in samples if s.n_trained], 256, tok.pad_token_id)
    return rows, rows_table(rows, seed=0)


def test_batches_hold_the_table_rows(packed) -> None:
    rows, table = packed
    batches = PackedBatches(table)
    assert batches.n_rows == table.num_rows == len(rows) and batches.seq_len == 256
    order = table.to_pylist()
    batch = batches.batch([2, 0])
    for j, i in enumerate([2, 0]):
        assert batch.input_ids[j].tolist() == order[i]["input_ids"]
        assert batch.labels[j].tolist() == order[i]["labels"]
        assert batch.position_ids[j].tolist() == order[i]["position_ids"]
        torch.testing.assert_close(batch.weights[j], torch.tensor(order[i]["weights"]))
    assert batch.n_real == order[2]["n_real"] + order[0]["n_real"] and batch.slots == 512
    assert batches.trained_tokens([2, 0]) == order[2]["n_trained"] + order[0]["n_trained"]
    # The same tensors collate_packed builds from the rows (the layout the equivalence tests prove).
    shuffled = sorted(rows, key=lambda r: r.input_ids)  # any order: compare as sets of rows
    assert sorted(
        map(tuple, PackedBatches(table).batch(list(range(len(rows)))).input_ids.tolist())
    ) == sorted(map(tuple, collate_packed(shuffled)["input_ids"].tolist()))


def test_ignored_rows_carry_no_loss(packed) -> None:
    _, table = packed
    batch = PackedBatches(table).batch([0, 0], ignore=[1])
    assert (batch.labels[1] == IGNORE_INDEX).all() and (batch.weights[1] == 0).all()
    assert (batch.labels[0] != IGNORE_INDEX).any()


def test_prefetcher_follows_the_plan_and_reports_waits(packed) -> None:
    _, table = packed
    rows = PackedBatches(table)
    plan = [[0, 1], [2, 3], [1, 0]]
    prefetch = Prefetcher(rows, iter(plan), torch.device("cpu"))
    for indices in plan:
        batch, waited = prefetch.next()
        assert waited >= 0
        assert torch.equal(batch.input_ids, rows.batch(indices).input_ids.long())
        assert batch.input_ids.dtype == torch.long and batch.weights.dtype == torch.float32
    with pytest.raises(StopIteration):
        prefetch.next()


def test_prefetcher_raises_what_went_wrong(packed) -> None:
    _, table = packed
    prefetch = Prefetcher(PackedBatches(table), iter([[0], [10**9]]), torch.device("cpu"))
    prefetch.next()
    with pytest.raises(IndexError):
        prefetch.next()


def _epoch_rows(n_rows: int, steps: range, world: int = 2, micro: int = 2, accum: int = 3, seed: int = 0):
    """The rows of ``steps`` in stream order (accumulation step, then rank, then micro-batch position)."""
    out = []
    for step in steps:
        per_rank = [step_rows(step, rank, world, micro, accum, n_rows, seed) for rank in range(world)]
        out += [i for a in range(accum) for rank in range(world) for i in per_rank[rank][a]]
    return out


def test_every_epoch_covers_every_row_once_and_a_second_epoch_reshuffles() -> None:
    n_rows, per_step = 24, 2 * 2 * 3  # world x micro x accum: 2 steps an epoch
    first, second, third = (_epoch_rows(n_rows, range(e * 2, e * 2 + 2)) for e in range(3))
    assert first == list(range(n_rows))  # epoch 0 reads the (already seed-shuffled) table in order
    assert sorted(second) == sorted(third) == list(range(n_rows))
    assert second != first and third != second  # later epochs: fresh permutations
    assert _epoch_rows(n_rows, range(2, 4), seed=1) != second  # ... seeded by the run's seed
    assert len(first) == 2 * per_step


def test_ranks_split_a_step_and_the_position_is_the_step() -> None:
    """The rows of step s do not depend on what ran before: resuming at s reads what an uninterrupted run
    reads there; the ranks of one step never share a row."""
    n_rows = 48  # 8 rows a step (2 ranks x 2 micro x 2 accum): 6 steps an epoch
    for step in range(12):
        by_rank = [sum(step_rows(step, r, 2, 2, 2, n_rows, 7), []) for r in range(2)]
        assert len(set(by_rank[0] + by_rank[1])) == 8
    # a stream that wraps mid-step ends one epoch and starts the next in its own order
    wrap = sum(step_rows(6, 0, 1, 8, 1, 50, 7), [])  # positions 48..55 of 50 rows
    assert wrap == [48, 49, *epoch_order(50, 7, 1)[:6]]
