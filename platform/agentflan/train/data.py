"""From the corpus to packed training rows, done once before the workers start.

Tokenization and packing happen once, in the dataset (as OpenRLHF does), so the training loop only reads
rows. :func:`prepare` trains or loads the tokenizer on the driver, then tokenizes and packs on Ray Data (or in
this process with ``data.engine=local``; same rows either way, :mod:`agentflan.train.pack_corpus`) into
parquet shards whose rows are in a seeded order. A worker finds the rows of optimizer step ``s`` by arithmetic
(:func:`step_rows`, each epoch in a fresh seeded order) and reads just those from the shards
(:mod:`agentflan.train.shards`), which makes the data position of a checkpoint just its step.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from agentflan.config import Config
from agentflan.data.record import Message
from agentflan.train.packing import PackedRow
from agentflan.train.shards import ROW_SCHEMA, shard_paths
from agentflan.train.templates import IGNORE_INDEX, EncodedSample, encode_conversation
from agentflan.train.tool_templates import JINJA_TEMPLATES

if TYPE_CHECKING:  # transformers is imported where a tokenizer is loaded: packing workers never need it
    from transformers import PreTrainedTokenizerBase

SPLITS = ("train", "validation")


@dataclass
class PackedData:
    """Where :func:`prepare` put things: each split's shard directory (``train/packed_<split>``), the
    tokenizer, and the packing counts."""

    train: Path
    validation: Path
    tokenizer_dir: Path
    stats: dict[str, Any]


@dataclass
class Conversation:
    """One corpus row as training reads it: message dicts and the tools offered (JSON-schema functions)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Conversation:
        """A corpus row (``CORPUS_SCHEMA``; JSON-typed values come as text or already decoded)."""
        tools = [json.loads(t) if isinstance(t, str) else t for t in row["tools"] or []]
        return cls([Message.from_dict(m).to_dict() for m in row["messages"]], tools)

    def texts(self) -> list[str]:
        """Every text in it (contents, reasoning, call arguments, tool schemas): what a tokenizer learns from."""
        out = [json.dumps(t, ensure_ascii=False) for t in self.tools]
        for m in self.messages:
            out += [m["content"], m.get("reasoning") or ""]
            out += [
                c["function"]["name"] + " " + c["function"]["arguments"] for c in m.get("tool_calls") or []
            ]
        return [t for t in out if t]


def corpus_shards(output_dir: str | Path) -> list[str]:
    """The corpus shards the data pipeline wrote under ``output_dir``."""
    from agentflan.data.pipeline import corpus_files

    files = corpus_files(output_dir)
    if not files:
        raise FileNotFoundError(f"no corpus under {Path(output_dir) / 'corpus'}: run `agentflan data` first")
    return files


def corpus_split(output_dir: Path, split: str) -> list[Conversation]:
    """One split of the corpus written by the data pipeline, in id order."""
    tables = [
        pq.read_table(f, columns=["id", "split", "messages", "tools"]) for f in corpus_shards(output_dir)
    ]
    rows = [r for t in tables for r in t.filter(pc.equal(t["split"], split)).to_pylist()]
    return [Conversation.from_row(r) for r in sorted(rows, key=lambda r: r["id"])]


def encoding_template(cfg: Config) -> str | None:
    """The named text template to encode with, or None: the tokenizer's own ``chat_template`` (the model's, or
    a named tool-calling template that :func:`load_tokenizer` set on it)."""
    template = cfg.train.model.template
    return None if template == "model" or template in JINJA_TEMPLATES else template


def load_tokenizer(cfg: Config, texts: list[str], save_dir: Path) -> PreTrainedTokenizerBase:
    """The model's tokenizer (made to speak the named template: :func:`adapt_tokenizer`), or (embedded default)
    a BPE tokenizer trained on the corpus; saved beside the run, and later with the model."""
    from transformers import AutoTokenizer

    from agentflan.train.tokenizer import adapt_tokenizer, train_bpe_tokenizer

    m = cfg.train.model
    source = m.tokenizer or m.name_or_path
    if source is not None:
        tok = AutoTokenizer.from_pretrained(source)
        if m.template != "model":
            adapt_tokenizer(tok, m.template)  # markers, chat_template, eos and pad of the named template
        elif tok.pad_token is None:
            tok.pad_token = tok.eos_token
    else:
        template = "chatml" if m.template == "model" else m.template
        tok = train_bpe_tokenizer(texts, m.vocab_size, template=template)
    tok.save_pretrained(save_dir)
    return tok


def encode_split(
    conversations: list[Conversation], tok: PreTrainedTokenizerBase, cfg: Config
) -> list[EncodedSample]:
    template = encoding_template(cfg)
    return [encode_conversation(c.messages, tok, template, tools=c.tools) for c in conversations]


def rows_table(rows: list[PackedRow], seed: int | str) -> pa.Table:
    """The rows as a :data:`ROW_SCHEMA` table, in an order shuffled by ``seed``."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    data = []
    for i in order:
        r = rows[i]
        n_trained = sum(1 for label in r.labels[1:] if label != IGNORE_INDEX)
        data.append(
            {
                "input_ids": r.input_ids,
                "labels": r.labels,
                "weights": r.weights,
                "position_ids": r.position_ids,
                "n_real": r.n_real,
                "n_trained": n_trained,
            }
        )
    return pa.Table.from_pylist(data, schema=ROW_SCHEMA)


def packing_key(cfg: Config) -> dict[str, Any]:
    """What the packed rows depend on: the corpus (its fingerprint), the tokenizer, the template and packing."""
    out = Path(cfg.output_dir)
    heldout = Path(cfg.data.heldout_from) if cfg.data.heldout_from else out
    m, t = cfg.train.model, cfg.train
    return {
        "corpus": _fingerprint(out),
        "heldout": _fingerprint(heldout),
        "tokenizer": m.tokenizer or m.name_or_path,
        "vocab_size": None if (m.tokenizer or m.name_or_path) else m.vocab_size,
        "template": m.template,
        "seq_len": t.seq_len,
        "packing": t.packing,
        "pack_block_samples": t.pack_block_samples,
        "seed": cfg.seed,
    }


def _fingerprint(output_dir: Path) -> str | None:
    manifest = output_dir / "manifest.json"
    return json.loads(manifest.read_text()).get("fingerprint") if manifest.exists() else None


def prepare(cfg: Config) -> PackedData:
    """Tokenize and pack both splits into ``train/packed_{train,validation}/part-*.parquet``; save the
    tokenizer to ``train/tokenizer`` and the counts to ``train/data_stats.json``.

    The tokenizer is trained or loaded here, on the driver, once; the encoding and packing run on Ray Data
    (``data.engine=ray``: Ray is joined or started as the data stage does) or in this process (``local``),
    with the same rows in the same order. Reused when ``train/packed_key.json`` matches
    (:func:`packing_key`): a resumed run, or another run on the same corpus and tokenizer, does not tokenize
    again."""
    from agentflan.train.pack_corpus import PackJob, corpus_sources, plan_blocks, run_pack

    out = Path(cfg.output_dir)
    train_dir = out / "train"
    train_dir.mkdir(parents=True, exist_ok=True)
    key_file = train_dir / "packed_key.json"
    key = packing_key(cfg)
    paths = {split: train_dir / f"packed_{split}" for split in SPLITS}
    if (
        key["corpus"] is not None
        and key_file.exists()
        and json.loads(key_file.read_text()) == key
        and all(shard_paths(p) for p in paths.values())
    ):
        stats = json.loads((train_dir / "data_stats.json").read_text())
        return PackedData(paths["train"], paths["validation"], train_dir / "tokenizer", stats)
    key_file.unlink(missing_ok=True)
    sources = corpus_sources(cfg)
    plans = plan_blocks(sources, cfg.seed, cfg.train.pack_block_samples)
    if not plans["train"].n_samples:
        raise ValueError(f"the corpus under {out} has no train split")
    m = cfg.train.model
    # Only the embedded default's tokenizer is trained (on the train split's texts); a model's is loaded.
    texts = (
        [] if (m.tokenizer or m.name_or_path) else [x for c in corpus_split(out, "train") for x in c.texts()]
    )
    tok = load_tokenizer(cfg, texts, train_dir / "tokenizer")
    job = PackJob.of(cfg, sources, tok.pad_token_id)
    if cfg.data.engine == "ray":
        from agentflan.ray_utils import ensure_ray

        ensure_ray(cfg.data.num_cpus)
    stats = run_pack(job, plans, cfg.data.engine, cfg.train.tokenize_actors)
    (train_dir / "data_stats.json").write_text(json.dumps(stats, indent=2))
    key_file.write_text(json.dumps(key))
    return PackedData(paths["train"], paths["validation"], train_dir / "tokenizer", stats)


def step_rows(
    step: int, rank: int, world: int, micro: int, accum: int, n_rows: int, seed: int = 0
) -> list[list[int]]:
    """Row indices of each micro-batch of ``rank`` in optimizer step ``step`` (0-based).

    A step takes the next ``global = micro * world * accum`` positions of the data stream: position ``p`` is
    row ``epoch_order(p // n_rows)[p % n_rows]``. The first epoch reads the table in its (seed-shuffled)
    order, every later epoch in a fresh seeded permutation, so a second epoch reshuffles, and the stream
    wraps across epochs (a corpus smaller than one batch still trains). The data position of a step is a
    function of the step alone: resuming at step ``s`` reads exactly what an uninterrupted run would.
    """
    base = step * micro * world * accum
    out = []
    for a in range(accum):
        start = base + (a * world + rank) * micro
        out.append([_row_at(start + i, n_rows, seed) for i in range(micro)])
    return out


def _row_at(position: int, n_rows: int, seed: int) -> int:
    epoch, i = divmod(position, n_rows)
    return i if epoch == 0 else epoch_order(n_rows, seed, epoch)[i]


@functools.lru_cache(maxsize=4)
def epoch_order(n_rows: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The row order of ``epoch`` (> 0): a permutation seeded by the run's seed and the epoch."""
    order = list(range(n_rows))
    random.Random(f"{seed}:epoch:{epoch}").shuffle(order)
    return tuple(order)
