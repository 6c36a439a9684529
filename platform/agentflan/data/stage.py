"""What every stage shares: seeded randomness, drops with reasons, and the per-batch count row.

A stage is a pure function ``rows -> rows`` over a batch (a list of row dicts, see ``record.ROW_SCHEMA``).
It touches only rows whose ``status`` is ``ok`` and passes every other row through unchanged. For each
batch it appends one *count row* (``status == "count"``) holding how many ok rows came in, how many went
out, and the reasons for the rest; the pipeline sums count rows to build the manifest, and checks that
``in == out + filtered + quarantined`` holds for every stage.
"""

from __future__ import annotations

import hashlib
import json
import random
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from agentflan.data.record import Record, tombstone

Row = dict[str, Any]


@dataclass(frozen=True)
class Drop:
    """A record a stage does not keep, and why (goes to the manifest under ``filtered``)."""

    reason: str


class Quarantine(ValueError):
    """Raised by a stage for a record that is malformed (not merely unwanted): it goes to the quarantine.

    ``code`` is the short reason class counted in the manifest; the message is the detail.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def unit(seed: int, *keys: object) -> float:
    """A number in [0, 1) fixed by the seed and the keys: the same record gets the same draw on any worker."""
    h = hashlib.blake2b(repr((seed, *keys)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def rng(seed: int, *keys: object) -> random.Random:
    """A private RNG for one record in one stage; independent of batch boundaries and worker order."""
    return random.Random(int(unit(seed, *keys) * 2**53))


def count_row(
    stage: str, n_in: int, n_out: int, filtered: Counter[str], quarantined: Counter[str], repeated: int = 0
) -> Row:
    counts = {
        "in": n_in,
        "out": n_out,
        "filtered": dict(filtered),
        "quarantined": dict(quarantined),
        "repeated": repeated,
    }
    return {
        "id": "",
        "source": "",
        "bucket": "",
        "messages": "[]",
        "tools": "[]",
        "meta": json.dumps(counts),
        "status": "count",
        "stage": stage,
        "reason": "",
        "origin": "",
        "raw": "",
    }


def _error_reason(e: BaseException) -> str:
    if isinstance(e, Quarantine):
        return str(e)
    where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    at = f" (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
    return f"{type(e).__name__}: {e}{at}"


def _reason_code(e: BaseException) -> str:
    """The manifest's reason class: a Quarantine's code, else the exception type (a bug to fix)."""
    return e.code if isinstance(e, Quarantine) else f"error:{type(e).__name__}"


def map_records(
    rows: Iterable[Row], stage: str, fn: Callable[[Record], Record | Drop | list[Record]]
) -> list[Row]:
    """Apply ``fn`` to every ok record. ``fn`` returns the record (changed or not), a :class:`Drop`,
    or a list whose first element replaces the record and whose others are copies of it (counted as
    ``repeated``, outside ``in == out + filtered + quarantined``).

    An exception inside ``fn`` quarantines that one record with the error as its reason: a bad record
    never stops the corpus.
    """
    out: list[Row] = []
    n_in = n_out = added = 0
    filtered: Counter[str] = Counter()
    quarantined: Counter[str] = Counter()
    for row in rows:
        if row["status"] != "ok":
            out.append(row)
            continue
        n_in += 1
        try:
            result = fn(Record.from_row(row))
        except Exception as e:  # noqa: BLE001 - any failure of one record goes to quarantine
            reason = _error_reason(e)
            quarantined[_reason_code(e)] += 1
            out.append(tombstone(row, stage, "quarantined", reason, keep_raw=True))
            continue
        if isinstance(result, Drop):
            filtered[result.reason] += 1
            out.append(tombstone(row, stage, "filtered", result.reason, keep_raw=False))
            continue
        records = result if isinstance(result, list) else [result]
        for rec in records:
            new = rec.to_row()
            new["origin"] = row["origin"]
            out.append(new)
        n_out += 1
        added += len(records) - 1  # extra copies (mixture up-sampling), reported as "repeated"
    out.append(count_row(stage, n_in, n_out, filtered, quarantined, added))
    return out


def generate(
    rows: list[Row], stage: str, fn: Callable[[list[Record]], list[Record | Drop | None]]
) -> list[Row]:
    """Make new records from the batch's ok rows (the seeds), keeping every seed as it is.

    ``fn`` takes all seed records at once (so a model can answer a whole batch) and returns, per seed, a
    new record, a :class:`Drop` (a candidate that yielded nothing, with the reason) or None (not a
    candidate: not counted). The stage's ``in`` is the number of candidates, ``out`` the records made. If
    ``fn`` raises, the seeds are retried one by one so that only the record at fault is quarantined.
    """
    out: list[Row] = list(rows)
    seeds = [row for row in rows if row["status"] == "ok"]
    records = [Record.from_row(row) for row in seeds]
    try:
        results: list[Record | Drop | None | BaseException] = list(fn(records))
    except Exception:  # noqa: BLE001 - isolate the record at fault
        results = []
        for rec in records:
            try:
                results.append(fn([rec])[0])
            except Exception as e:  # noqa: BLE001
                results.append(e)
    n_in = n_out = 0
    filtered: Counter[str] = Counter()
    quarantined: Counter[str] = Counter()
    for row, result in zip(seeds, results, strict=True):
        if result is None:
            continue
        n_in += 1
        if isinstance(result, BaseException):
            reason = _error_reason(result)
            quarantined[_reason_code(result)] += 1
            bad = tombstone(row, stage, "quarantined", reason, keep_raw=True)
            out.append({**bad, "id": f"{row['id']}#{stage}"})
        elif isinstance(result, Drop):
            filtered[result.reason] += 1
        else:
            new = result.to_row()
            new["origin"] = row["origin"]
            out.append(new)
            n_out += 1
    out.append(count_row(stage, n_in, n_out, filtered, quarantined))
    return out
