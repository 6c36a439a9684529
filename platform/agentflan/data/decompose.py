"""Stage 3, decompose by capability and apply the capability weights.

Agent-FLAN observed that the agent capabilities are learned at different speeds (retrieval fastest,
reasoning slowest) and balanced them with weights; its final weights are reasoning 1 : retrieval 0.25 :
understanding 0.75. Two strategies apply a weight ``w`` to a turn:

``mask``
    The turn stays in the conversation as context; its loss is switched off with probability ``1 - w``
    (seeded per record and turn). This is what changing the data mix does, at the granularity of turns.
``loss_weight``
    The turn keeps its loss and carries ``weight = w``; training scales that turn's token losses by it.

Every assistant turn leaves this stage with a trained capability; every other turn with ``none``.
"""

from __future__ import annotations

from dataclasses import replace

from agentflan.config import CapabilityWeights
from agentflan.data.record import TRAINED_CAPABILITIES, Record
from agentflan.data.stage import Drop, unit


def decompose_record(record: Record, weights: CapabilityWeights, strategy: str, seed: int) -> Record | Drop:
    if record.meta.get("decomposed"):
        return record
    messages = []
    for i, m in enumerate(record.messages):
        if m.role != "assistant":
            messages.append(replace(m, loss=False, capability="none", weight=1.0))
            continue
        cap = m.capability if m.capability in TRAINED_CAPABILITIES else "general"
        w = weights.for_capability(cap)
        loss, weight = m.loss, 1.0
        if loss and strategy == "mask":
            loss = unit(seed, "mask", record.id, i) < w
        elif loss:
            weight = w
        messages.append(replace(m, capability=cap, loss=loss, weight=weight))
    if not any(m.loss and m.weight > 0 for m in messages):
        return Drop("no_trained_turn")
    return replace(record, messages=messages, meta={**record.meta, "decomposed": True})
