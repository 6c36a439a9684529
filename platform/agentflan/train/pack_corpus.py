"""Tokenize and pack the corpus into shards: two pure stages that Ray Data maps, or one process runs.

* **Encode** (:class:`Encoder`, a Ray Data actor, so the tokenizer loads once per actor): corpus rows ->
  encoded samples (ids, labels, weights: :func:`~agentflan.train.templates.encode_conversation`, cut to
  ``train.seq_len``), each with its split, block and key.
* **Pack** (:func:`pack_block`, one call per block): best-fit-decreasing over the block's samples
  (:func:`~agentflan.train.packing.pack_samples`), rows in a seeded order; the worker writes the block as
  ``train/packed_<split>/part-<block>.parquet`` and returns its counts.

Which block a sample lands in, and where, is fixed before anything runs, so the rows and their order are
the same whatever order Ray runs blocks in, however many actors there are, and on either engine. A sample's
key is a 64-bit hash of the run's seed and its corpus id; in key order a split is cut into blocks of
``train.pack_block_samples``. The driver reads the id column alone to find where each block starts
(:class:`BlockPlan`); a sample finds its block from its key; a block sorts its samples by key before
packing. Key order is a seeded shuffle, so a block is a random draw from the split, and reading the shards
in order (the first epoch, :func:`~agentflan.train.sampling.step_rows`) reads a shuffled stream.

Why blocks: best-fit-decreasing over a whole split needs every sample in one process. Packed a block at a
time, rows are a little less full; ``train/data_stats.json`` reports the real-token share of the blocks
next to that of one global packing of the same samples, computed on the driver from their lengths alone.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from agentflan.config import Config
from agentflan.train.corpus import Conversation, corpus_shards, heldout_dir
from agentflan.train.packing import PackingStrategy, count_rows, pack_samples
from agentflan.train.shards import ROW_SCHEMA, rows_table, shard_name, write_shard
from agentflan.train.templates import EncodedSample, encode_conversation, encoding_template

CORPUS_COLUMNS = ["id", "split", "messages", "tools"]
ENCODE_CALL_ROWS = 1024  # corpus rows per actor call (whole row groups): few output blocks, balanced actors
# An encoded sample between the two stages (weights are float32 in the rows too).
ENCODED_SCHEMA = pa.schema(
    [
        ("split", pa.string()),
        ("block", pa.int32()),
        ("key", pa.uint64()),
        ("id", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("weights", pa.list_(pa.float32())),
        ("truncated", pa.bool_()),
    ]
)
BLOCK_STATS_SCHEMA = pa.schema(
    [
        ("split", pa.string()),
        ("block", pa.int32()),
        ("rows", pa.int64()),
        ("samples", pa.int64()),
        ("truncated", pa.int64()),
        ("dropped_untrained", pa.int64()),
        ("real_tokens", pa.int64()),
        ("lengths", pa.list_(pa.int32())),  # of the packed samples: what the global comparison packs
    ]
)


def sample_key(seed: int, sample_id: str) -> int:
    """The sample's place in the seeded order: a hash, so it needs nothing but the sample."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{sample_id}".encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class BlockPlan:
    """One split cut into blocks in key order: block ``b`` holds the samples whose ``(key, id)`` is at least
    ``starts[b]`` and below ``starts[b + 1]``."""

    split: str
    starts: tuple[tuple[int, str], ...]
    n_samples: int

    @classmethod
    def of(cls, split: str, ids: Iterable[str], seed: int, block_samples: int) -> BlockPlan:
        order = sorted((sample_key(seed, i), i) for i in ids)
        return cls(split, tuple(order[::block_samples]), len(order))

    def block_of(self, key: int, sample_id: str) -> int:
        return bisect.bisect_right(self.starts, (key, sample_id)) - 1


def write_plans(plans: dict[str, BlockPlan], path: str | Path) -> None:
    """The plans as a file beside the shards: what an encoder loads (see :class:`Encoder`)."""
    data = {k: {"starts": [list(s) for s in p.starts], "n_samples": p.n_samples} for k, p in plans.items()}
    Path(path).write_text(json.dumps(data))


def read_plans(path: str | Path) -> dict[str, BlockPlan]:
    data = json.loads(Path(path).read_text())
    return {
        k: BlockPlan(k, tuple((int(key), str(i)) for key, i in p["starts"]), int(p["n_samples"]))
        for k, p in data.items()
    }


@dataclass(frozen=True)
class Source:
    """Corpus shards and the split read from them (validation may come from another corpus:
    ``data.heldout_from``)."""

    files: tuple[str, ...]
    split: str

    def units(self) -> list[dict[str, Any]]:
        """The units of work: one per row group of each shard (the data stage writes them a batch each),
        with its row count (both splits)."""
        out = []
        for f in self.files:
            meta = pq.ParquetFile(f).metadata
            for g in range(meta.num_row_groups):
                out.append(
                    {"path": f, "row_group": g, "split": self.split, "rows": meta.row_group(g).num_rows}
                )
        return out


def corpus_ids(source: Source) -> list[str]:
    """The ids of the source's split: the only corpus column the driver reads."""
    tables = [pq.read_table(f, columns=["id", "split"]) for f in source.files]
    return [i for t in tables for i in t.filter(pc.equal(t["split"], source.split))["id"].to_pylist()]


def read_unit(path: str, row_group: int, split: str, rows: int = 0) -> pa.Table:
    """The rows of ``split`` in one row group of a corpus shard."""
    t = pq.ParquetFile(path).read_row_group(row_group, columns=CORPUS_COLUMNS)
    return t.filter(pc.equal(t["split"], split))


class Encoder:
    """The encode stage: corpus rows (``CORPUS_COLUMNS``) -> :data:`ENCODED_SCHEMA` rows (:meth:`encode`);
    called on a batch of units (:meth:`Source.units`) it reads them first. The tokenizer is the one the driver
    saved (``train/tokenizer``), loaded once per instance.

    Its arguments are paths and numbers only; the block plans (which grow with the corpus) are read from the file
    the driver wrote (``plans_path``). Ray Data restarts a dead actor with the same arguments, so a restart
    rebuilds the encoder from disk and depends on no large object held for it in the object store
    (ray-project/ray#53727)."""

    def __init__(
        self, tokenizer_dir: str, template: str | None, plans_path: str, seq_len: int, seed: int
    ) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.plans = read_plans(plans_path)
        self.template, self.seq_len, self.seed = template, seq_len, seed

    def __call__(self, units: pa.Table) -> pa.Table:
        return pa.concat_tables([self.encode(read_unit(**u)) for u in units.to_pylist()])

    def encode(self, batch: pa.Table) -> pa.Table:
        out: dict[str, list[Any]] = {name: [] for name in ENCODED_SCHEMA.names}
        for row in batch.to_pylist():
            c = Conversation.from_row(row)
            sample = encode_conversation(c.messages, self.tok, self.template, tools=c.tools)
            truncated = sample.truncate(self.seq_len)  # cut here: less to move, counted as pack_samples does
            key = sample_key(self.seed, row["id"])
            out["split"].append(row["split"])
            out["block"].append(self.plans[row["split"]].block_of(key, row["id"]))
            out["key"].append(key)
            out["id"].append(row["id"])
            out["input_ids"].append(truncated.input_ids)
            out["labels"].append(truncated.labels)
            out["weights"].append(truncated.weights)
            out["truncated"].append(truncated.truncated)
        return pa.Table.from_pydict(out, schema=ENCODED_SCHEMA)


@dataclass
class BlockStats:
    split: str
    block: int
    rows: int
    samples: int
    truncated: int
    dropped_untrained: int
    real_tokens: int
    lengths: list[int] = field(default_factory=list)


def pack_block(
    samples: pa.Table, seq_len: int, pad_id: int, strategy: PackingStrategy, seed: int
) -> tuple[pa.Table, BlockStats]:
    """Pack one block (all its samples, in any order) into rows in a seeded order."""
    split, block = samples["split"][0].as_py(), samples["block"][0].as_py()
    rows_in = sorted(
        samples.to_pylist(), key=lambda r: (r["key"], r["id"], r["input_ids"], r["labels"], r["weights"])
    )
    encoded = [EncodedSample(r["input_ids"], r["labels"], r["weights"], r["truncated"]) for r in rows_in]
    rows, st = pack_samples(encoded, seq_len, pad_id, strategy)
    stats = BlockStats(
        split,
        block,
        rows=st.n_rows,
        samples=st.n_samples,
        truncated=sum(s.truncated for s in encoded),
        dropped_untrained=st.n_dropped_untrained,
        real_tokens=st.real_tokens,
        lengths=[n for r in rows for n in r.sample_lengths],
    )
    return rows_table(rows, seed=f"{seed}:{split}:{block}"), stats


def pack_and_write(
    samples: pa.Table, out_dirs: dict[str, str], seq_len: int, pad_id: int, strategy: str, seed: int
) -> pa.Table:
    """The pack stage as Ray Data maps it over the groups of one block: write the shard, return its counts."""
    table, stats = pack_block(samples, seq_len, pad_id, PackingStrategy(strategy), seed)
    write_shard(table, Path(out_dirs[stats.split]) / shard_name(stats.block), seq_len)
    return pa.Table.from_pylist([asdict(stats)], schema=BLOCK_STATS_SCHEMA)


@dataclass(frozen=True)
class PackJob:
    """Everything both engines need: where to read, how to encode, how to pack, where to write."""

    sources: tuple[Source, ...]
    out_dirs: dict[str, str]
    tokenizer_dir: str
    template: str | None
    seq_len: int
    pad_id: int
    strategy: PackingStrategy
    seed: int

    @classmethod
    def of(cls, cfg: Config, sources: Iterable[Source], pad_id: int) -> PackJob:
        """The job of a run: shards into ``train/packed_<split>``, with the tokenizer saved in ``train/``."""
        train_dir = Path(cfg.output_dir) / "train"
        sources = tuple(sources)
        return cls(
            sources=sources,
            out_dirs={s.split: str(train_dir / f"packed_{s.split}") for s in sources},
            tokenizer_dir=str(train_dir / "tokenizer"),
            template=encoding_template(cfg),
            seq_len=cfg.train.seq_len,
            pad_id=pad_id,
            strategy=PackingStrategy.BEST_FIT_DECREASING if cfg.train.packing else PackingStrategy.NONE,
            seed=cfg.seed,
        )

    @property
    def plans_path(self) -> str:
        """Where the driver writes the block plans for the encoders: beside the saved tokenizer."""
        return str(Path(self.tokenizer_dir).parent / "pack_plans.json")

    def encoder_args(self) -> dict[str, Any]:
        return {
            "tokenizer_dir": self.tokenizer_dir,
            "template": self.template,
            "plans_path": self.plans_path,
            "seq_len": self.seq_len,
            "seed": self.seed,
        }

    def pack_args(self) -> dict[str, Any]:
        return {
            "out_dirs": self.out_dirs,
            "seq_len": self.seq_len,
            "pad_id": self.pad_id,
            "strategy": self.strategy.value,
            "seed": self.seed,
        }


def corpus_sources(cfg: Config) -> tuple[Source, ...]:
    """The train split of the run's corpus, the validation split of ``data.heldout_from`` (default: the same)."""
    train, heldout = corpus_shards(cfg.output_dir), corpus_shards(heldout_dir(cfg))
    return Source(tuple(train), "train"), Source(tuple(heldout), "validation")


def plan_blocks(sources: Iterable[Source], seed: int, block_samples: int) -> dict[str, BlockPlan]:
    return {s.split: BlockPlan.of(s.split, corpus_ids(s), seed, block_samples) for s in sources}


def run_pack(
    job: PackJob, plans: dict[str, BlockPlan], engine: str, actors: int = 2
) -> dict[str, dict[str, Any]]:
    """Encode and pack every source on ``engine`` (``ray`` or ``local``); returns the stats of each split."""
    for d in job.out_dirs.values():
        shutil.rmtree(d, ignore_errors=True)  # shards of an earlier run may be more than this one writes
        Path(d).mkdir(parents=True)
    write_plans(plans, job.plans_path)
    blocks = _pack_ray(job, actors) if engine == "ray" else _pack_local(job)
    stats = {}
    for s in job.sources:
        mine = sorted((b for b in blocks if b.split == s.split), key=lambda b: b.block)
        if not mine:  # an empty split still has a (row-less) shard: readers see its schema
            write_shard(ROW_SCHEMA.empty_table(), Path(job.out_dirs[s.split]) / shard_name(0), job.seq_len)
        stats[s.split] = split_stats(mine, job.seq_len, job.strategy)
    return stats


def split_stats(blocks: list[BlockStats], seq_len: int, strategy: PackingStrategy) -> dict[str, Any]:
    """A split's counts, and its block packing against one global packing of the same sample lengths."""
    rows = sum(b.rows for b in blocks)
    real = sum(b.real_tokens for b in blocks)
    global_rows = count_rows([n for b in blocks for n in b.lengths], seq_len, strategy)
    return {
        "rows": rows,
        "samples": sum(b.samples for b in blocks),
        "truncated": sum(b.truncated for b in blocks),
        "dropped_untrained": sum(b.dropped_untrained for b in blocks),
        "real_token_share": round(real / (rows * seq_len), 4) if rows else 0.0,
        "real_tokens": real,
        "blocks": len(blocks),
        "global_rows": global_rows,
        "global_real_token_share": round(real / (global_rows * seq_len), 4) if global_rows else 0.0,
    }


def _pack_local(job: PackJob) -> list[BlockStats]:
    """The same stages in this process: encode every unit, group by block, pack and write each block."""
    encoder = Encoder(**job.encoder_args())
    units = [u for s in job.sources for u in s.units()]
    encoded = pa.concat_tables([encoder(pa.Table.from_pylist([u])) for u in units])
    by_block: dict[tuple[str, int], list[int]] = {}
    for i, key in enumerate(zip(encoded["split"].to_pylist(), encoded["block"].to_pylist(), strict=True)):
        by_block.setdefault(key, []).append(i)
    out = []
    for indices in by_block.values():
        stats = pack_and_write(encoded.take(indices), **job.pack_args())
        out.append(BlockStats(**stats.to_pylist()[0]))
    return out


def _pack_ray(job: PackJob, actors: int) -> list[BlockStats]:
    """Ray Data: a pool of ``actors`` actors reads and encodes the corpus (calls of whole row groups, about
    ``ENCODE_CALL_ROWS`` rows), the samples are grouped by block, and a task packs and writes each block.

    Why it is built so, measured on 2 cores: ``read_parquet`` read every shard in one task, which held a CPU
    while the second actor waited (and a fixed pool that took both CPUs first waited for that read forever);
    reading inside the actors, as the data stage's tasks read their files, keeps them all busy and leaves no
    task upstream of the pool to starve. An actor call takes about ``ENCODE_CALL_ROWS`` rows: a call per row
    group made ~120 output blocks of 20k samples and the shuffle took ~7 s; in ~1,000-row calls, ~3.5 s. The
    grouping uses the sort-based shuffle (tasks only): the default hash shuffle starts aggregator actors,
    seconds more for a handful of blocks.

    The encoded rows are materialized before the shuffle. Streamed straight into it, an idle actor of the
    pool could keep the only free CPU (a Tune trial holds the other) while the shuffle's first task waited
    for one: a study's trial hung there for 2 hours (2026-12-05, docs/engineering-notes.md). The shuffle is a
    barrier anyway, so the materialization costs no overlap."""
    import ray
    from ray.data.context import ShuffleStrategy

    units = [u for s in job.sources for u in s.units()]
    per_call = max(1, round(ENCODE_CALL_ROWS * len(units) / max(1, sum(u["rows"] for u in units))))
    # Set before the datasets are made: a dataset keeps a copy of the context it was made in.
    ctx = ray.data.DataContext.get_current()
    previous, ctx.shuffle_strategy = ctx.shuffle_strategy, ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        encoded = ray.data.from_items(units, override_num_blocks=len(units)).map_batches(
            Encoder,
            fn_constructor_kwargs=job.encoder_args(),
            batch_size=per_call,
            batch_format="pyarrow",
            # where fewer CPUs are free (a Tune trial holds one), the rest wait, unneeded
            compute=ray.data.ActorPoolStrategy(size=actors),
        ).materialize()  # the pool is torn down here, before the shuffle's tasks ask for CPUs
        packed = encoded.groupby(["split", "block"]).map_groups(
            pack_and_write, fn_kwargs=job.pack_args(), batch_format="pyarrow"
        )
        rows = packed.take_all()
    finally:
        ctx.shuffle_strategy = previous
    return [BlockStats(**{**row, "lengths": [int(n) for n in row["lengths"]]}) for row in rows]
