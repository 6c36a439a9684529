"""Packed rows as tensors and the prefetcher: the batches the loop gets are the rows of the table, in plan
order, and a failure while assembling one reaches the training thread."""

from __future__ import annotations

import pytest
import torch

from agentflan.train.batches import PackedBatches, Prefetcher
from agentflan.train.data import rows_table
from agentflan.train.packing import collate_packed, pack_samples
from agentflan.train.templates import IGNORE_INDEX, encode_conversation


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
