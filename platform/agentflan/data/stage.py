"""What every stage shares: seeded randomness, drops with reasons, and the per-batch count row.

A stage is a pure function over a batch of *entries*: a :class:`~agentflan.data.record.Record` for each
live record, and marker rows (dicts in ``record.ROW_SCHEMA``) for records dropped earlier and for counts.
A pass decodes its input rows into records once, runs its stages, and encodes once at the end.

A stage touches only records and passes every marker through unchanged. A record it drops becomes a
*tombstone* row (``filtered`` or ``quarantined``, with the reason). For each batch it appends one *count
row* (``status == "count"``) holding how many records came in, how many went out, and the reasons for
the rest; the pipeline sums count rows to build the manifest, and checks that
``in == out + filtered + quarantined`` holds for every stage.
"""

from __future__ import annotations

import hashlib
import json
import random
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from agentflan.data.record import Record, tombstone

Row = dict[str, Any]
Entry = Record | Row  # a live record, or a marker row (tombstone or count)


def decode(rows: Iterable[Row]) -> list[Entry]:
    """Rows as read from a block: ok rows become records, the rest stay marker rows."""
    return [Record.from_row(r) if r["status"] == "ok" else r for r in rows]


def encode(entries: Iterable[Entry]) -> list[Row]:
    return [e.to_row() if isinstance(e, Record) else e for e in entries]


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
    entries: Iterable[Entry], stage: str, fn: Callable[[Record], Record | Drop | list[Record]]
) -> list[Entry]:
    """Apply ``fn`` to every record. ``fn`` returns the record (changed or not), a :class:`Drop`,
    or a list whose first element replaces the record and whose others are copies of it (counted as
    ``repeated``, outside ``in == out + filtered + quarantined``).

    An exception inside ``fn`` quarantines that one record with the error as its reason: a bad record
    never stops the corpus.
    """
    out: list[Entry] = []
    n_in = n_out = added = 0
    filtered: Counter[str] = Counter()
    quarantined: Counter[str] = Counter()
    for entry in entries:
        if not isinstance(entry, Record):
            out.append(entry)
            continue
        n_in += 1
        try:
            result = fn(entry)
        except Exception as e:  # noqa: BLE001 - any failure of one record goes to quarantine
            quarantined[_reason_code(e)] += 1
            out.append(tombstone(entry.to_row(), stage, "quarantined", _error_reason(e), keep_raw=True))
            continue
        if isinstance(result, Drop):
            filtered[result.reason] += 1
            out.append(tombstone(entry.to_row(), stage, "filtered", result.reason, keep_raw=False))
            continue
        records = result if isinstance(result, list) else [result]
        out.extend(records)
        n_out += 1
        added += len(records) - 1  # extra copies (mixture up-sampling), reported as "repeated"
    out.append(count_row(stage, n_in, n_out, filtered, quarantined, added))
    return out


def generate(
    entries: list[Entry],
    stage: str,
    fn: Callable[[list[Record]], list[Record | Drop | Quarantine | None]],
) -> list[Entry]:
    """Make new records from the batch's records (the seeds), keeping every seed as it is.

    ``fn`` takes all seed records at once (so a model can answer a whole batch) and returns, per seed, a
    new record, a :class:`Drop` (a candidate that yielded nothing, with the reason), a :class:`Quarantine`
    (a candidate that failed, e.g. its responder request) or None (not a candidate: not counted). The stage's ``in`` is the number of candidates, ``out`` the records made. If
    ``fn`` raises, the seeds are retried one by one so that only the record at fault is quarantined.
    """
    out: list[Entry] = list(entries)
    seeds = [e for e in entries if isinstance(e, Record)]
    try:
        results: list[Record | Drop | None | BaseException] = list(fn(seeds))
    except Exception:  # noqa: BLE001 - isolate the record at fault
        results = []
        for rec in seeds:
            try:
                results.append(fn([rec])[0])
            except Exception as e:  # noqa: BLE001
                results.append(e)
    n_in = n_out = 0
    filtered: Counter[str] = Counter()
    quarantined: Counter[str] = Counter()
    for seed, result in zip(seeds, results, strict=True):
        if result is None:
            continue
        n_in += 1
        if isinstance(result, BaseException):
            quarantined[_reason_code(result)] += 1
            bad = tombstone(seed.to_row(), stage, "quarantined", _error_reason(result), keep_raw=True)
            out.append({**bad, "id": f"{seed.id}#{stage}"})
        elif isinstance(result, Drop):
            filtered[result.reason] += 1
        else:
            out.append(replace(result, origin=seed.origin))
            n_out += 1
    out.append(count_row(stage, n_in, n_out, filtered, quarantined))
    return out
