"""From the corpus to packed training rows, done once on the driver before the workers start.

Tokenization and packing happen once, in the dataset (as OpenRLHF does), so the training loop only reads
rows. The rows are shuffled with the seed and stored as one Arrow table; a worker finds the rows of optimizer
step ``s`` by arithmetic (:func:`step_rows`, each epoch in a fresh seeded order), which makes the data
position of a checkpoint just its step.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from agentflan.config import Config
from agentflan.data.pipeline import read_corpus
from agentflan.train.packing import PackedRow, PackingStrategy, pack_samples
from agentflan.train.templates import IGNORE_INDEX, EncodedSample, encode_conversation
from agentflan.train.tokenizer import adapt_tokenizer, train_bpe_tokenizer
from agentflan.train.tool_templates import JINJA_TEMPLATES

ROW_SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("weights", pa.list_(pa.float32())),
        ("position_ids", pa.list_(pa.int32())),
        ("n_real", pa.int32()),
        ("n_trained", pa.int32()),  # tokens whose label is trained (the loss normaliser's share of this row)
    ]
)


@dataclass
class PackedData:
    train: Path
    validation: Path
    tokenizer_dir: Path
    stats: dict[str, Any]


@dataclass
class Conversation:
    """One corpus row as training reads it: message dicts and the tools offered (JSON-schema functions)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]

    def texts(self) -> list[str]:
        """Every text in it (contents, reasoning, call arguments, tool schemas): what a tokenizer learns from."""
        out = [json.dumps(t, ensure_ascii=False) for t in self.tools]
        for m in self.messages:
            out += [m["content"], m.get("reasoning") or ""]
            out += [
                c["function"]["name"] + " " + c["function"]["arguments"] for c in m.get("tool_calls") or []
            ]
        return [t for t in out if t]


def corpus_split(output_dir: Path, split: str) -> list[Conversation]:
    """One split of the corpus written by the data pipeline, in id order."""
    return [
        Conversation([m.to_dict() for m in r.messages], list(r.tools or []))
        for r in read_corpus(output_dir, split)
    ]


def encoding_template(cfg: Config) -> str | None:
    """The named text template to encode with, or None: the tokenizer's own ``chat_template`` (the model's, or
    a named tool-calling template that :func:`load_tokenizer` set on it)."""
    template = cfg.train.model.template
    return None if template == "model" or template in JINJA_TEMPLATES else template


def load_tokenizer(cfg: Config, texts: list[str], save_dir: Path) -> PreTrainedTokenizerBase:
    """The model's tokenizer (made to speak the named template: :func:`adapt_tokenizer`), or (embedded default)
    a BPE tokenizer trained on the corpus; saved beside the run, and later with the model."""
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


def rows_table(rows: list[PackedRow], seed: int) -> pa.Table:
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
        "seed": cfg.seed,
    }


def _fingerprint(output_dir: Path) -> str | None:
    manifest = output_dir / "manifest.json"
    return json.loads(manifest.read_text()).get("fingerprint") if manifest.exists() else None


def prepare(cfg: Config) -> PackedData:
    """Tokenize and pack both splits; write ``train/packed_{train,validation}.parquet`` and the tokenizer.

    Reused when ``train/packed_key.json`` matches (:func:`packing_key`): a resumed run, or another run on the
    same corpus and tokenizer, does not tokenize again."""
    out = Path(cfg.output_dir)
    train_dir = out / "train"
    train_dir.mkdir(parents=True, exist_ok=True)
    key_file = train_dir / "packed_key.json"
    key = packing_key(cfg)
    paths = {split: train_dir / f"packed_{split}.parquet" for split in ("train", "validation")}
    if (
        key["corpus"] is not None
        and key_file.exists()
        and json.loads(key_file.read_text()) == key
        and all(p.exists() for p in paths.values())
    ):
        stats = json.loads((train_dir / "data_stats.json").read_text())
        return PackedData(paths["train"], paths["validation"], train_dir / "tokenizer", stats)
    key_file.unlink(missing_ok=True)
    heldout = Path(cfg.data.heldout_from) if cfg.data.heldout_from else out
    convs = {"train": corpus_split(out, "train"), "validation": corpus_split(heldout, "validation")}
    if not convs["train"]:
        raise ValueError(f"the corpus under {out} has no train split")
    texts = [text for c in convs["train"] for text in c.texts()]
    tok = load_tokenizer(cfg, texts, train_dir / "tokenizer")
    stats: dict[str, Any] = {}
    pad_id = tok.pad_token_id
    for split, conversations in convs.items():
        samples = encode_split(conversations, tok, cfg)
        strategy = PackingStrategy.BEST_FIT_DECREASING if cfg.train.packing else PackingStrategy.NONE
        rows, st = pack_samples(samples, cfg.train.seq_len, pad_id, strategy)
        path = train_dir / f"packed_{split}.parquet"
        pq.write_table(rows_table(rows, cfg.seed), path)
        paths[split] = path
        stats[split] = {
            "rows": st.n_rows,
            "samples": st.n_samples,
            "truncated": st.n_truncated,
            "dropped_untrained": st.n_dropped_untrained,
            "real_token_share": round(st.real_token_share, 4),
            "real_tokens": st.real_tokens,
        }
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
