"""Stage 3, decompose by capability; and (in the mixture) apply the capability weights.

Agent-FLAN observed that the agent capabilities are learned at different speeds (retrieval fastest,
reasoning slowest) and balanced them with weights; its final weights are reasoning 1 : retrieval 0.25 :
understanding 0.75.

Tagging (:func:`decompose_record`, pass A) and weighting (:func:`weigh_record`, applied to the training
split by the mixture in pass B) are separate so that a Tune trial can try other weights on the already
decomposed corpus, and so that the validation split keeps every turn whatever the weights. Two strategies
apply a weight ``w`` to a turn:

``mask``
    The turn stays in the conversation as context; its loss is switched off with probability ``1 - w``
    (seeded per record and turn). This is what changing the data mix does, at the granularity of turns.
``loss_weight``
    The turn keeps its loss and carries ``weight = w``; training scales that turn's token losses by it.

A native call message (``call_format: native``) carries one weight per part instead: its thought, its function
names and its arguments (:func:`_weigh_parts`); training puts each on its own tokens.
"""

from __future__ import annotations

from dataclasses import replace

from agentflan.config import CapabilityWeights
from agentflan.data.record import CALL_PARTS, TRAINED_CAPABILITIES, Message, Record
from agentflan.data.stage import Drop, unit


def decompose_record(record: Record) -> Record | Drop:
    """Every assistant turn leaves with a trained capability, every other turn with ``none`` and no loss."""
    messages = []
    for m in record.messages:
        if m.role != "assistant":
            messages.append(replace(m, loss=False, capability="none", weight=1.0))
            continue
        cap = m.capability if m.capability in (*TRAINED_CAPABILITIES, "tool_call") else "general"
        messages.append(replace(m, capability=cap, weight=1.0))
    if not any(m.loss for m in messages):
        return Drop("no_trained_turn")
    return replace(record, messages=messages)


def weigh_record(record: Record, weights: CapabilityWeights, strategy: str, seed: int) -> Record | Drop:
    """Apply the capability weights to the trained turns of a decomposed record."""
    messages = []
    for i, m in enumerate(record.messages):
        if m.role != "assistant" or not m.loss:
            messages.append(m)
            continue
        if m.capability == "tool_call":
            messages.append(_weigh_parts(m, weights, strategy, seed, record.id, i))
            continue
        w = weights.for_capability(m.capability)
        if strategy == "mask":
            messages.append(replace(m, loss=unit(seed, "mask", record.id, i) < w))
        else:
            messages.append(replace(m, weight=w))
    if not any(m.loss and m.weight > 0 for m in messages):
        return Drop("no_trained_turn")
    return replace(record, messages=messages)


def _weigh_parts(
    m: Message, weights: CapabilityWeights, strategy: str, seed: int, rid: str, i: int
) -> Message:
    """A native call message: its thought weighs as reasoning, its function names as retrieval, its arguments
    as understanding (:data:`~agentflan.data.record.CALL_PARTS`). Under ``mask`` each part is kept or switched
    off on its own; the message stays trained while any part is (its structure, the call's tags and braces,
    always trains with it)."""
    parts = {}
    for part, w_default in (m.part_weights or {}).items():
        w = weights.for_capability(CALL_PARTS[part]) * w_default
        parts[part] = float(unit(seed, "mask", rid, i, part) < w) if strategy == "mask" else w
    return replace(m, part_weights=parts, loss=any(w > 0 for w in parts.values()))
