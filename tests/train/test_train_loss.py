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
