"""Stage 5, the mixture: sample each bucket by its ratio, deterministically, and assign the split.

A ratio ``r`` keeps each record ``floor(r)`` times plus once more with probability ``r - floor(r)``
(seeded per record), so 0.5 halves a bucket and 2.5 repeats it 2.5 times on average. The validation split
is drawn first and is never sampled or repeated: it stays a fixed held-out set while ratios change, which
is what a Tune search over ratios needs to compare trials. The capability weights are applied here too,
to training records only (:func:`agentflan.data.decompose.weigh_record`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

from agentflan.data.record import CALL_PARTS, Message, Record
from agentflan.data.stage import Drop, unit

TOKEN_COUNTER = r"\w+|[^\w\s] (regex pre-tokens; training re-counts with the model's tokenizer)"
_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


def ratio_key(record: Record, ratios: dict[str, float]) -> str:
    """The ratio a record is sampled by: its bucket's, or for a general chat its own source's when the ratios
    name it (``{general: 1, sharegpt: 2}`` doubles ShareGPT among the general chats). Negatives and
    format-following samples keep their bucket's ratio whatever source they were made from."""
    if record.bucket == "general" and record.source in ratios:
        return record.source
    return record.bucket


def split_of(record_id: str, seed: int, validation_fraction: float) -> str:
    return "validation" if unit(seed, "split", record_id) < validation_fraction else "train"


def mix_record(
    record: Record,
    ratios: dict[str, float],
    seed: int,
    validation_fraction: float,
    split_seed: int | None = None,
    weigh: Callable[[Record], Record | Drop] | None = None,
) -> list[Record] | Drop:
    """Assign the split (by ``split_seed``, default ``seed``); weigh and sample a training record.

    A validation record keeps every trained turn, unweighted: held-out loss then measures each capability
    whatever the weights of the run, and trials with different weights are scored on the same tokens.
    """
    split = split_of(record.id, seed if split_seed is None else split_seed, validation_fraction)
    meta = {**record.meta, "split": split}
    if split == "validation":
        return [replace(record, meta=meta)]
    if weigh is not None:
        weighed = weigh(record)
        if isinstance(weighed, Drop):
            return weighed
        record = weighed
    r = ratios.get(ratio_key(record, ratios), 1.0)
    k = math.floor(r) + (1 if unit(seed, "mixture", record.id) < r - math.floor(r) else 0)
    if k == 0:
        return Drop("sampled_out")
    first = replace(record, meta=meta)
    copies = [
        replace(record, id=f"{record.id}~{j}", meta={**meta, "copy_of": record.id}) for j in range(1, k)
    ]
    return [first, *copies]


def bucket_stats(records: list[Record]) -> dict[str, dict[str, Counter[str]]]:
    """Records and tokens per bucket, and turns and trained tokens per capability."""
    buckets: dict[str, Counter[str]] = {}
    caps: dict[str, Counter[str]] = {}
    for rec in records:
        b = buckets.setdefault(rec.bucket, Counter())
        b["records"] += 1
        for m in rec.messages:
            n = count_tokens(m.content)
            b["tokens"] += n
            if m.role != "assistant":
                continue
            if m.capability == "tool_call":
                _count_call_parts(m, b, caps)
                continue
            c = caps.setdefault(m.capability, Counter())
            c["turns"] += 1
            if m.loss and m.weight > 0:
                b["trained_tokens"] += n
                c["trained_turns"] += 1
                c["trained_tokens"] += n
                c["weighted_tokens"] += n * m.weight  # type: ignore[assignment]
    return {"buckets": buckets, "capabilities": caps}


def _count_call_parts(m: Message, bucket: Counter[str], caps: dict[str, Counter[str]]) -> None:
    """A native call message counts toward three capabilities: its thought, its names, its arguments."""
    calls = m.tool_calls or []
    texts = {
        "reasoning": " ".join(t for t in (m.reasoning, m.content) if t),
        "names": " ".join(c["function"]["name"] for c in calls),
        "arguments": " ".join(c["function"]["arguments"] for c in calls),
    }
    weights = m.part_weights or {}
    for part, text in texts.items():
        n = count_tokens(text)
        if not n:
            continue
        bucket["tokens"] += n if part != "reasoning" else 0  # the thought's text was counted as content
        c = caps.setdefault(CALL_PARTS[part], Counter())
        c["turns"] += 1
        if m.loss and weights.get(part, 0) > 0:
            bucket["trained_tokens"] += n
            c["trained_turns"] += 1
            c["trained_tokens"] += n
            c["weighted_tokens"] += n * weights[part]  # type: ignore[assignment]
