"""The token-weighted next-token loss.

Contract with the trainer. The loss of a step is the *mean over trained tokens of the whole global batch*, so
it does not depend on how the batch is split into micro-batches, gradient-accumulation steps and workers, nor
on how the samples were packed:

1. for each micro-batch, count its trained tokens (``n_trained`` below; it needs no forward pass:
   ``(labels[:, 1:] != -100).sum()``), sum the counts over the accumulation steps and all-reduce them over the
   workers: ``global_tokens``;
2. each micro-step back-propagates ``loss_sum / global_tokens``, times the number of workers if the data-parallel
   engine averages gradients over workers (DeepSpeed and DDP do), so the summed gradient is that of the mean.

Weights scale a token's contribution, not the normaliser: a token of weight ``w`` adds ``w * CE``, and the
count is of trained tokens (labels != -100) whatever their weight. So a weight of 2 on one capability makes its
tokens count twice relative to the others, and a weight of 1 everywhere is the plain mean cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from agentflan.train.templates import IGNORE_INDEX


def weighted_token_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed weighted cross-entropy of next-token prediction, and the number of trained tokens.

    ``logits`` is (batch, seq, vocab); ``labels`` and ``weights`` are (batch, seq), aligned with the inputs: the
    shift is done here (position ``t`` predicts label ``t + 1``). The cross-entropy is computed in float32
    whatever the logits' dtype.
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    shift_weights = weights[:, 1:].float()
    token_ce = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    loss_sum = (token_ce * shift_weights.reshape(-1)).sum()
    return loss_sum, (shift_labels != IGNORE_INDEX).sum()
