"""Benchmark: tokenizing and packing the corpus on Ray Data (a pool of actors) against one process.

The corpus is the bundled sample run through the data stage once (``data.engine=local``), its shards
replicated, each copy's ids suffixed so that every sample is its own, until it holds ``--conversations``
conversations. The tokenizer is trained once on the sample (the embedded default's byte-level BPE) and
saved; both engines load it from there. Both run the same job (``train/pack_corpus.py``: encode, then pack
in blocks of ``--block-samples`` and write a shard per block) in this run, one process first, then Ray
twice (the first run pays for starting the actors and the worker processes' imports; ``ray.init`` is timed
apart). The shards of every run are compared byte for byte with the one-process run's.

    python benchmarks/tokenize_pack.py                            # ~20k conversations, 2 actors
    python benchmarks/tokenize_pack.py --conversations 1000      # a quick look

Then the block size: the real-token share of best-fit-decreasing in random blocks of N samples of the same
lengths, against one packing of the whole split (the lengths alone, so it is cheap).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline import (
    table,
)  # the benchmarks' markdown table (a sibling script: benchmarks/ is on sys.path)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "platform/agentflan/sample_data"


def build_corpus(root: Path, conversations: int, seq_len: int, block_samples: int):
    """The sample corpus replicated to ``conversations`` rows under ``root/corpus``; the config to pack it."""
    from agentflan.config import load_config
    from agentflan.data.pipeline import corpus_files, run_data

    base = root / "base"
    overrides = [f"output_dir={base}", "data.engine=local", f"train.seq_len={seq_len}"]
    cfg = load_config(REPO / "pipelines/local.yaml", overrides)
    run_data(cfg)
    shards = [pq.read_table(f) for f in corpus_files(base)]
    per_copy = sum(t.num_rows for t in shards)
    copies = -(-conversations // per_copy)
    corpus = root / "corpus" / "corpus"
    corpus.mkdir(parents=True)
    written = 0
    for k in range(copies):
        for i, t in enumerate(shards):
            t = t.slice(0, min(t.num_rows, conversations - written))
            if not t.num_rows:
                break
            ids = pa.array([f"{x}~r{k}" for x in t["id"].to_pylist()])
            pq.write_table(
                t.set_column(t.schema.get_field_index("id"), "id", ids),
                corpus / f"part-{k:05d}-{i:05d}.parquet",
            )
            written += t.num_rows
    cfg = load_config(
        REPO / "pipelines/local.yaml",
        [*overrides[1:], f"output_dir={root / 'corpus'}", f"train.pack_block_samples={block_samples}"],
    )
    return cfg, base, written


def make_job(cfg, base: Path, tokenizer_dir: Path, out: Path):
    """The pack job of ``cfg``'s corpus with a tokenizer trained once on the sample (saved to ``tokenizer_dir``),
    writing under ``out``."""
    from dataclasses import replace

    from transformers import AutoTokenizer

    from agentflan.train.corpus import corpus_split
    from agentflan.train.pack_corpus import PackJob, corpus_sources
    from agentflan.train.tokenizer import load_tokenizer

    if not tokenizer_dir.exists():
        load_tokenizer(cfg, [x for c in corpus_split(base, "train") for x in c.texts()], tokenizer_dir)
    job = PackJob.of(cfg, corpus_sources(cfg), AutoTokenizer.from_pretrained(tokenizer_dir).pad_token_id)
    return replace(
        job, tokenizer_dir=str(tokenizer_dir), out_dirs={s: str(out / f"packed_{s}") for s in job.out_dirs}
    )


def timed_pack(job, cfg, engine: str, actors: int) -> tuple[float, dict]:
    from agentflan.train.pack_corpus import plan_blocks, run_pack

    t0 = time.perf_counter()
    plans = plan_blocks(job.sources, cfg.seed, cfg.train.pack_block_samples)
    stats = run_pack(job, plans, engine, actors)
    return time.perf_counter() - t0, stats


def same_shards(a: Path, b: Path) -> bool:
    for split in ("train", "validation"):
        names = sorted(p.name for p in (a / f"packed_{split}").iterdir())
        if names != sorted(p.name for p in (b / f"packed_{split}").iterdir()):
            return False
        if not all(
            filecmp.cmp(a / f"packed_{split}" / n, b / f"packed_{split}" / n, shallow=False) for n in names
        ):
            return False
    return True


def block_sweep(
    lengths: list[int], seq_len: int, sizes: list[int], seed: int = 0
) -> list[tuple[str, int, float]]:
    """(block size, rows, real-token share) of best-fit-decreasing in random blocks of each size."""
    from agentflan.train.packing import count_rows

    order = list(lengths)
    random.Random(seed).shuffle(order)
    real = sum(order)
    out = []
    for n in [*sizes, len(order)]:
        rows = sum(count_rows(order[i : i + n], seq_len) for i in range(0, len(order), n))
        out.append(("whole split" if n == len(order) else str(n), rows, real / (rows * seq_len)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conversations", type=int, default=20_000)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count())
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--block-samples", type=int, default=4096)
    ap.add_argument("--sweep", default="256,1024,4096", help="block sizes for the real-token share table")
    ap.add_argument("--workdir", type=Path, help="keep the corpus and outputs here (default: a temp dir)")
    args = ap.parse_args()

    root = args.workdir or Path(tempfile.mkdtemp(prefix="agentflan-tokpack-"))
    shutil.rmtree(root / "corpus", ignore_errors=True)
    print(f"building a corpus of {args.conversations} conversations ...", file=sys.stderr, flush=True)
    cfg, base, n = build_corpus(root, args.conversations, args.seq_len, args.block_samples)
    job_for = lambda name: make_job(cfg, base, root / "tokenizer", root / name)  # noqa: E731

    results = []
    print("one process ...", file=sys.stderr, flush=True)
    seconds, stats = timed_pack(job_for("local"), cfg, "local", args.actors)
    results.append(("one process", 0.0, seconds, stats, True))

    import ray

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    startup = time.perf_counter() - t0
    for run in ("first", "second"):
        print(f"ray, {run} run ...", file=sys.stderr, flush=True)
        seconds, stats = timed_pack(job_for(f"ray_{run}"), cfg, "ray", args.actors)
        same = same_shards(root / "local", root / f"ray_{run}")
        results.append(
            (
                f"Ray Data, {args.actors} actors ({run} run)",
                startup if run == "first" else 0.0,
                seconds,
                stats,
                same,
            )
        )
    ray.shutdown()

    base_s = results[0][2]
    rows = [["engine", "start-up s", "tokenize + pack s", "conversations/s", "vs one process", "same shards"]]
    for name, start, seconds, _, same in results:
        rows.append(
            [
                name,
                f"{start:.1f}",
                f"{seconds:.1f}",
                f"{n / seconds:.0f}",
                f"{base_s / seconds:.2f}x",
                str(same),
            ]
        )
    train = results[0][3]["train"]
    print(f"\n{n} conversations ({train['samples']} train samples packed into {train['rows']} rows of "
          f"{args.seq_len}, {train['blocks']} blocks of {args.block_samples}), {args.num_cpus} CPUs for Ray, "
          f"{os.cpu_count()} cores\n")  # fmt: skip
    print(table(rows))

    lengths = _train_lengths(root / "local" / "packed_train")
    sweep = block_sweep(lengths, args.seq_len, [int(s) for s in args.sweep.split(",") if s])
    print(f"\nreal-token share by block size ({len(lengths)} train samples, rows of {args.seq_len}); "
          f"this run: {train['real_token_share']:.4f} in blocks, {train['global_real_token_share']:.4f} global\n")  # fmt: skip
    print(
        table(
            [["block samples", "rows", "real-token share"], *([b, str(r), f"{s:.4f}"] for b, r, s in sweep)]
        )
    )
    (root / "results.json").write_text(
        json.dumps(
            [{"engine": r[0], "startup_s": r[1], "seconds": r[2], "same": r[4]} for r in results], indent=2
        )
    )
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)


def _train_lengths(directory: Path) -> list[int]:
    """The lengths of the packed samples, read back from the rows' position ids (a sample restarts at 0)."""
    from agentflan.train.shards import read_packed

    out = []
    for r in read_packed(directory).select(["position_ids", "n_real"]).to_pylist():
        pos = r["position_ids"][: r["n_real"]]
        starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
        out += [b - a for a, b in zip(starts, starts[1:], strict=False)]
    return out


if __name__ == "__main__":
    main()
