"""A packed row trains exactly like its samples run one by one: same logits, loss and gradients.

This rests on transformers confining attention to each sample from the restarting position ids (no attention
mask, no KV cache; see agentflan.train.model). The tests run a seeded tiny Llama in float32 on CPU.
"""

from __future__ import annotations

import pytest
import torch

from agentflan.train.loss import weighted_token_loss
from agentflan.train.model import build_model, model_inputs, tiny_llama_config
from agentflan.train.packing import PackedRow, collate_packed, collate_padded, pack_samples
from agentflan.train.templates import EncodedSample, encode_conversation

SEQ_LEN = 256
# float32 sums over a few hundred tokens: packed and unpacked differ only in summation order.
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(scope="module")
def tokenizer(tokenizers):
    return tokenizers["chatml"]


@pytest.fixture(scope="module")
def samples(tokenizer, chats) -> list[EncodedSample]:
    """Ten real chats of 35 to 120 tokens (the ShareGPT ones cut), with reply weights 1, 1.5 and 2."""
    conversations = chats[:6] + chats[500:505]
    weighted = [[{**m, "weight": 1.0 + 0.5 * (k % 3)} for m in conv] for k, conv in enumerate(conversations)]
    encoded = [encode_conversation(m, tokenizer, "chatml", max_length=120) for m in weighted]
    trained = [s for s in encoded if s.n_trained]  # one ShareGPT chat's first reply starts after token 120
    assert len(trained) == 10
    return trained


@pytest.fixture(scope="module")
def rows(samples, tokenizer) -> list[PackedRow]:
    rows, stats = pack_samples(samples, SEQ_LEN, tokenizer.pad_token_id)
    assert stats.n_samples == len(samples) and max(r.n_samples for r in rows) >= 3
    return rows


@pytest.fixture
def model(tokenizer):
    config = tiny_llama_config(len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    return build_model(config=config, seed=0).train()


def _loss_and_grads(model, batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logits = model(**model_inputs(batch)).logits
    loss_sum, n_tokens = weighted_token_loss(logits, batch["labels"], batch["weights"])
    loss_sum.backward()
    return loss_sum.detach(), n_tokens, {name: p.grad.clone() for name, p in model.named_parameters()}


def _one_by_one(model, samples, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    total, count, grads = torch.tensor(0.0), torch.tensor(0), {}
    for sample in samples:
        loss_sum, n_tokens, sample_grads = _loss_and_grads(model, collate_padded([sample], pad_id))
        total, count = total + loss_sum, count + n_tokens
        grads = {name: grads.get(name, 0) + g for name, g in sample_grads.items()}
    return total, count, grads


def test_packed_loss_and_gradients_equal_one_by_one(model, rows, samples, tokenizer) -> None:
    packed = _loss_and_grads(model, collate_packed(rows))
    alone = _one_by_one(model, samples, tokenizer.pad_token_id)
    assert packed[1] == alone[1] > 0
    torch.testing.assert_close(packed[0], alone[0], **TOLERANCE)
    assert packed[2].keys() == alone[2].keys()
    for name, grad in packed[2].items():
        torch.testing.assert_close(grad, alone[2][name], **TOLERANCE, msg=lambda m, name=name: f"{name}: {m}")


def test_padded_batch_equals_one_by_one(model, samples, tokenizer) -> None:
    """The unpacked baseline: one right-padded batch with a 2D attention mask."""
    padded = _loss_and_grads(model, collate_padded(samples, tokenizer.pad_token_id))
    alone = _one_by_one(model, samples, tokenizer.pad_token_id)
    assert padded[1] == alone[1]
    torch.testing.assert_close(padded[0], alone[0], **TOLERANCE)
    for name, grad in padded[2].items():
        torch.testing.assert_close(grad, alone[2][name], **TOLERANCE)


def test_packed_logits_equal_each_sample_alone(model, rows, tokenizer) -> None:
    row = max(rows, key=lambda r: r.n_samples)
    with torch.no_grad():
        logits = model(**model_inputs(collate_packed([row]))).logits[0]
        for start, stop in row.sample_spans:
            sample = EncodedSample(row.input_ids[start:stop], row.labels[start:stop], row.weights[start:stop])
            alone = model(**model_inputs(collate_padded([sample], tokenizer.pad_token_id))).logits[0]
            torch.testing.assert_close(logits[start:stop], alone, **TOLERANCE)


def _perturb_first_sample(model, row: PackedRow, **overrides) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the row, and of the row with one early token of its first sample changed."""
    batch = collate_packed([row])
    changed = {**batch, "input_ids": batch["input_ids"].clone()}
    changed["input_ids"][0, 1] = (changed["input_ids"][0, 1] + 1) % model.config.vocab_size
    with torch.no_grad():
        return (
            model(**{**model_inputs(batch), **overrides}).logits[0],
            model(**{**model_inputs(changed), **overrides}).logits[0],
        )


def test_no_token_attends_across_a_sample_boundary(model, rows) -> None:
    row = max(rows, key=lambda r: r.n_samples)
    (_, first_end), *_ = row.sample_spans
    before, after = _perturb_first_sample(model, row)
    # The change reaches the rest of its own sample...
    assert not torch.allclose(before[2:first_end], after[2:first_end])
    # ...and nothing after it: not the later samples, not the padding tail.
    torch.testing.assert_close(before[first_end:], after[first_end:], rtol=0, atol=1e-6)


def test_a_kv_cache_would_break_packing(model, rows) -> None:
    """Why build_model and model_inputs turn the cache off: with use_cache=True, transformers skips the
    packed-sequence mask and samples see each other. If this starts failing, transformers has changed and the
    guard may no longer be needed (but is harmless)."""
    row = max(rows, key=lambda r: r.n_samples)
    (_, first_end), *_ = row.sample_spans
    before, after = _perturb_first_sample(model, row, use_cache=True)
    assert not torch.allclose(before[first_end:], after[first_end:])


def test_gradient_accumulation_contract(model, rows, samples, tokenizer) -> None:
    """Micro-steps each backpropagating loss_sum / global_tokens add up to the whole batch's mean loss."""
    _, n_whole, whole_grads = _loss_and_grads(model, collate_packed(rows))
    micro_batches = [
        collate_padded(samples[:3], tokenizer.pad_token_id),
        collate_packed(pack_samples(samples[3:], SEQ_LEN, tokenizer.pad_token_id)[0]),
    ]
    global_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro_batches)
    assert global_tokens == n_whole
    model.zero_grad(set_to_none=True)
    for batch in micro_batches:
        loss_sum, _ = weighted_token_loss(
            model(**model_inputs(batch)).logits, batch["labels"], batch["weights"]
        )
        (loss_sum / global_tokens).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, whole_grads[name] / n_whole, **TOLERANCE)
