"""The token-weighted next-token loss, and the three ways it meets the LM head.

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

Memory. The plain way (``full``) builds the logits of the whole micro-batch, then upcasts them to float32: at
8192 tokens x a 128k vocabulary that is 4 GB per row, more than the rest of a 1B model's activations.
:class:`CausalLMWithLoss` therefore runs the decoder, then applies the LM head itself:

- ``chunked``: ``loss_chunk_tokens`` tokens at a time, each chunk under activation checkpointing, so one
  chunk's logits exist at a time, in forward and in backward (the price: the head's matmul runs once more);
- ``liger``: Liger's fused linear cross-entropy Triton kernel (GPU only; per-token weights through its
  ``reduction="none"`` path, whose backward folds them in exactly).

All three give the same loss and gradients (tests compare them; Liger on the GPU run of benchmarks/gpu_train.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from agentflan.train.model import flattens_batch, model_inputs
from agentflan.train.templates import IGNORE_INDEX

LOSS_IMPLEMENTATIONS = ("full", "chunked", "liger")


def weighted_token_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed weighted cross-entropy of next-token prediction, and the number of trained tokens.

    ``logits`` is (batch, seq, vocab); ``labels`` and ``weights`` are (batch, seq), aligned with the inputs: the
    shift is done here (position ``t`` predicts label ``t + 1``). The cross-entropy is computed in float32
    whatever the logits' dtype.
    """
    targets, target_weights = next_token_targets(labels, weights)
    return _weighted_ce(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), target_weights.reshape(-1))


def next_token_targets(labels: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What each position must predict: the next label of its row (-100 at the row's end), and its weight.

    Shifting per row first makes the loss independent of the layout afterwards (chunks, a flattened batch)."""
    pad = torch.full_like(labels[:, :1], IGNORE_INDEX)
    targets = torch.cat([labels[:, 1:], pad], dim=1)
    target_weights = torch.cat([weights[:, 1:], torch.zeros_like(weights[:, :1])], dim=1).float()
    return targets, target_weights


def _weighted_ce(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    token_ce = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="none")
    return (token_ce * weights).sum(), (targets != IGNORE_INDEX).sum()


def resolve_loss_implementation(requested: str, device: torch.device, zero_stage: int) -> str:
    """``auto``: Liger's fused kernel on a GPU where it is installed (and ZeRO <= 2), chunked on other GPUs,
    full on CPU (small vocabularies, where the chunks' recomputed head matmul costs more than it saves)."""
    if requested == "auto":
        if device.type == "cuda":
            return "liger" if zero_stage < 3 and _liger_available() else "chunked"
        return "full"
    if requested == "liger":
        if device.type != "cuda":
            raise ValueError("train.loss=liger needs a GPU (Liger's kernels are Triton)")
        if not _liger_available():
            raise ValueError("train.loss=liger needs liger-kernel: pip install liger-kernel")
    return requested


def _liger_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


class CausalLMWithLoss(torch.nn.Module):
    """A causal LM whose forward returns ``(weighted loss sum, trained tokens)`` for a packed or padded batch.

    One module for DeepSpeed to wrap: it sees every parameter, and under ZeRO-3 the LM head is gathered by its
    own hooks each time a chunk calls it. ``model`` is the Hugging Face model (or its peft wrapper); save it,
    not this wrapper.
    """

    def __init__(
        self, model: torch.nn.Module, loss: str, chunk_tokens: int, attn_implementation: str
    ) -> None:
        super().__init__()
        if loss not in LOSS_IMPLEMENTATIONS:
            raise ValueError(f"loss {loss!r}: choose one of {', '.join(LOSS_IMPLEMENTATIONS)}")
        self.model = model
        self.loss = loss
        self.chunk_tokens = chunk_tokens
        self.flatten = flattens_batch(attn_implementation)
        cfg = self._base.config
        if loss != "full" and (
            getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None)
        ):
            raise ValueError(f"{type(self._base).__name__} scales its logits; use train.loss=full")

    # Looked up, not stored: a stored submodule would register the same weights twice in the state dict.
    @property
    def _base(self) -> torch.nn.Module:
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    @property
    def _decoder(self) -> torch.nn.Module:
        return self._base.get_decoder()

    @property
    def _head(self) -> torch.nn.Module:
        return self._base.get_output_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        targets, target_weights = next_token_targets(labels, weights)
        batch = {"input_ids": input_ids, "position_ids": position_ids}
        if attention_mask is not None:
            batch["attention_mask"] = attention_mask
        inputs = model_inputs(batch)
        if attention_mask is None and self.flatten:
            inputs = {k: v.reshape(1, -1) if torch.is_tensor(v) else v for k, v in inputs.items()}
        if self.loss == "full":
            logits = self.model(**inputs).logits
            return _weighted_ce(
                logits.reshape(-1, logits.size(-1)), targets.reshape(-1), target_weights.reshape(-1)
            )
        hidden = self._decoder(**inputs).last_hidden_state
        hidden = hidden.reshape(-1, hidden.size(-1))
        targets, target_weights = targets.reshape(-1), target_weights.reshape(-1)
        if self.loss == "liger":
            return self._liger(hidden, targets, target_weights)
        return self._chunked(hidden, targets, target_weights)

    def _chunked(
        self, hidden: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.size(0), self.chunk_tokens):
            end = start + self.chunk_tokens
            # Every chunk runs, weighted or not: under ZeRO-3 each head call gathers collectively, so all
            # ranks must make the same calls (and skipping would need a device sync per chunk).
            total = total + checkpoint(
                self._chunk_loss,
                hidden[start:end],
                targets[start:end],
                weights[start:end],
                use_reentrant=False,
            )
        return total, (targets != IGNORE_INDEX).sum()

    def _chunk_loss(self, hidden: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return _weighted_ce(self._head(hidden), targets, weights)[0]

    def _liger(
        self, hidden: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction

        bias = self._head.bias if getattr(self._head, "bias", None) is not None else None
        token_ce = LigerFusedLinearCrossEntropyFunction.apply(
            hidden, self._head.weight, targets, bias, None, IGNORE_INDEX, 0.0, 0.0, "none"
        )[0]
        return (token_ce.float() * weights).sum(), (targets != IGNORE_INDEX).sum()
