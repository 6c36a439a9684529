"""Benchmark: the contamination scan (``agentflan data``'s last step) on the default corpus and a bigger one.

The embedded default's corpus is built once (``data.engine=local``); then, for each size, its shards are
written ``copies`` times into a corpus of their own and the data stage's scan runs on it in a fresh process:
every eval set of ``pipelines/local.yaml`` built, the 13-gram index of the training split streamed from the
shards, every item scored, the report written. ``--distinct`` suffixes every word of copy k with k, so each
copy adds new 13-grams (the index grows with the corpus: the worst case for memory); without it the copies
repeat the same text (the index stays the size of one copy; the time still grows with the words read).

Printed: words read, distinct 13-grams, the index's size, the step's time (and the index's part of it), the
process's RSS before the step and its peak RSS after it (/proc's VmRSS and VmHWM).

    python benchmarks/contamination.py                      # copies 1 and 10, repeated and distinct
    python benchmarks/contamination.py --copies 1 2         # a quick look

Target: the default corpus in about a second on 2 cores (the default job may not grow by more than a few).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_WORD = re.compile(r"(\w+)")


def _status_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process from /proc (ru_maxrss would carry the peak of the
    process that exec'd us)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def copy_corpus(base: Path, out: Path, copies: int, distinct: bool) -> None:
    """``copies`` copies of ``base``'s corpus shards under ``out/corpus`` (copy k's words suffixed with k)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (out / "corpus").mkdir(parents=True, exist_ok=True)
    for k in range(copies):
        for shard in sorted((base / "corpus").glob("part-*.parquet")):
            table = pq.read_table(shard)
            if distinct and k:  # only what the scan reads (the JSON-typed columns do not round-trip)
                rows = table.select(["split", "messages"]).to_pylist()
                rows = [
                    {
                        "split": row["split"],
                        "messages": [
                            {"role": m["role"], "content": _WORD.sub(rf"\g<1>{k}", m["content"] or "")}
                            for m in row["messages"]
                        ],
                    }
                    for row in rows
                ]
                table = pa.Table.from_pylist(rows)
            pq.write_table(table, out / "corpus" / f"part-c{k:03d}-{shard.name.removeprefix('part-')}")


def one(out: Path) -> dict:
    """The data stage's scan on the corpus under ``out`` (run in a fresh process by :func:`main`)."""
    from agentflan.config import load_config
    from agentflan.eval import decontaminate

    cfg = load_config(str(REPO / "pipelines/local.yaml"), [f"output_dir={out}"])
    before = _status_mb("VmRSS")
    start = time.perf_counter()
    manifest = decontaminate.attach_to_manifest(cfg, {}, lambda s: None)
    seconds = time.perf_counter() - start
    c = manifest["contamination"]
    return {
        "words": c["corpus"]["words"],
        "ngrams": c["corpus"]["unique_ngrams"],
        "index_mb": c["corpus"]["index_mb"],
        "index_s": c["corpus"]["seconds"],
        "step_s": round(seconds, 2),
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(_status_mb("VmHWM"), 1),
        "items": sum(s["n"] for s in c["sets"].values()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--copies", type=int, nargs="+", default=[1, 10])
    p.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        cmd = [sys.executable, "-m", "agentflan.cli", "data", str(REPO / "pipelines/local.yaml")]
        subprocess.run([*cmd, f"output_dir={base}", "data.engine=local"], check=True, capture_output=True)
        rows = []
        for copies in args.copies:
            for distinct in (False, True) if copies > 1 else (False,):
                out = Path(tmp) / f"c{copies}{'d' if distinct else ''}"
                copy_corpus(base, out, copies, distinct)
                res = subprocess.run(
                    [sys.executable, __file__, "--one", str(out)], check=True, capture_output=True, text=True
                )
                r = json.loads(res.stdout.strip().splitlines()[-1])
                label = f"x{copies}" + (" distinct" if distinct else " repeated" if copies > 1 else "")
                rows.append([label, *r.values()])
                print(rows[-1], file=sys.stderr)
        head = "corpus | words | distinct 13-grams | index MB | index s | step s | RSS before MB | peak RSS MB | items"
        print("| " + head + " |")
        print("|" + "---|" * len(head.split("|")))
        for row in rows:
            print("| " + " | ".join(f"{v:,}" if isinstance(v, int) else str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
