"""The weighted next-token loss: the shift, the weights, the token count."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from agentflan.train.loss import weighted_token_loss
from agentflan.train.templates import IGNORE_INDEX


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 11, generator=generator)
    labels = torch.randint(0, 11, (2, 7), generator=generator)
    labels[0, :3] = IGNORE_INDEX
    labels[1, 5:] = IGNORE_INDEX
    weights = (labels != IGNORE_INDEX).float()
    return logits, labels, weights


def test_unit_weights_give_the_plain_mean_cross_entropy(batch) -> None:
    logits, labels, weights = batch
    loss_sum, n = weighted_token_loss(logits, labels, weights)
    expected = F.cross_entropy(
        logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )
    assert n.item() == (labels[:, 1:] != IGNORE_INDEX).sum().item() == 8
    torch.testing.assert_close(loss_sum / n, expected)


def test_position_t_predicts_label_t_plus_one() -> None:
    labels = torch.tensor([[IGNORE_INDEX, 3, 1, 4]])
    logits = torch.full((1, 4, 5), -20.0)
    for t in range(3):
        logits[0, t, labels[0, t + 1]] = 20.0  # certain of the next token
    loss_sum, n = weighted_token_loss(logits, labels, torch.ones(1, 4))
    assert n.item() == 3 and loss_sum.item() < 1e-6


def test_weights_scale_contributions_but_not_the_count(batch) -> None:
    logits, labels, weights = batch
    base, n = weighted_token_loss(logits, labels, weights)
    doubled, n2 = weighted_token_loss(logits, labels, 2 * weights)
    torch.testing.assert_close(doubled, 2 * base)
    assert n2 == n
    # A trained token of weight 0 adds nothing yet still counts in the normaliser.
    zeroed = weights.clone()
    zeroed[1] = 0.0
    part, n3 = weighted_token_loss(logits, labels, zeroed)
    assert n3 == n and part < base


def test_low_precision_logits_are_reduced_in_float32(batch) -> None:
    logits, labels, weights = batch
    loss_sum, _ = weighted_token_loss(logits.bfloat16(), labels, weights)
    assert loss_sum.dtype == torch.float32


@pytest.fixture
def tiny_model():
    from agentflan.train.model import build_model, tiny_llama_config

    return build_model(config=tiny_llama_config(300, hidden_size=32, num_layers=1), seed=0).train()


def _packed_batch(vocab: int = 300, rows: int = 2, length: int = 37) -> dict[str, torch.Tensor]:
    """Two rows of two samples each, some tokens untrained, weights 0.25 to 2."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (rows, length), generator=g)
    labels = ids.clone()
    labels[:, :5] = IGNORE_INDEX
    labels[0, 20:24] = IGNORE_INDEX
    weights = torch.where(labels == IGNORE_INDEX, 0.0, torch.rand(rows, length, generator=g) * 1.75 + 0.25)
    positions = torch.cat([torch.arange(15), torch.arange(length - 15)]).expand(rows, length).clone()
    return {"input_ids": ids, "labels": labels, "weights": weights, "position_ids": positions}


def _module_loss_and_grads(model, loss: str, chunk: int = 16):
    from agentflan.train.loss import CausalLMWithLoss

    model.zero_grad(set_to_none=True)
    loss_sum, n = CausalLMWithLoss(model, loss, chunk, "sdpa")(**_packed_batch())
    loss_sum.backward()
    return loss_sum.detach(), n, {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("chunk", [1, 16, 30, 1000])
def test_chunked_loss_equals_the_full_logits_loss(tiny_model, chunk) -> None:
    """Chunks of any size (1 token, not dividing the 74 tokens, larger than the batch) give today's loss and
    gradients: the loss of the model's own logits through weighted_token_loss."""
    batch = _packed_batch()
    tiny_model.zero_grad(set_to_none=True)
    logits = tiny_model(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
    ).logits
    want_sum, want_n = weighted_token_loss(logits, batch["labels"], batch["weights"])
    want_sum.backward()
    want = {k: p.grad.clone() for k, p in tiny_model.named_parameters()}
    for loss in ("full", "chunked"):
        got_sum, got_n, got = _module_loss_and_grads(tiny_model, loss, chunk)
        assert got_n == want_n
        torch.testing.assert_close(got_sum, want_sum.detach(), rtol=1e-5, atol=1e-5)
        for k, g in got.items():
            torch.testing.assert_close(
                g, want[k], rtol=1e-5, atol=1e-5, msg=lambda m, k=k, loss=loss: f"{loss} {k}: {m}"
            )


def test_chunked_loss_never_holds_the_whole_batch_logits(tiny_model) -> None:
    """The largest float32 tensor alive in the loss is one chunk's logits, not the batch's."""
    from torch.utils._python_dispatch import TorchDispatchMode

    largest = {"numel": 0}
    hidden = tiny_model.config.hidden_size

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                # logits-shaped: (tokens..., vocab); the head's weight and its gradient are (hidden, vocab)
                logits_like = isinstance(t, torch.Tensor) and t.dim() >= 2 and t.size(-1) == 300
                if logits_like and t.dtype == torch.float32 and t.numel() // 300 != hidden:
                    largest["numel"] = max(largest["numel"], t.numel())
            return out

    with Watch():
        _module_loss_and_grads(tiny_model, "chunked", chunk=16)
    assert 0 < largest["numel"] <= 16 * 300  # one chunk of 16 tokens x the vocabulary
    largest["numel"] = 0
    with Watch():
        _module_loss_and_grads(tiny_model, "full")
    assert largest["numel"] >= 74 * 300  # the full path does build them: the watch can see it


def test_loss_implementation_is_resolved_for_the_device() -> None:
    from agentflan.train.loss import resolve_loss_implementation

    cpu = torch.device("cpu")
    assert resolve_loss_implementation("auto", cpu, 2) == "full"
    assert resolve_loss_implementation("chunked", cpu, 3) == "chunked"
    with pytest.raises(ValueError, match="liger needs a GPU"):
        resolve_loss_implementation("liger", cpu, 2)
