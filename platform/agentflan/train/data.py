"""From the corpus to packed training rows, done once before the workers start: :func:`prepare`.

Tokenization and packing happen once, in the dataset (as OpenRLHF does), so the training loop only reads
rows. :func:`prepare` trains or loads the tokenizer on the driver, then tokenizes and packs on Ray Data (or in
this process with ``data.engine=local``; same rows either way, :mod:`agentflan.train.pack_corpus`) into
parquet shards whose rows are in a seeded order. A worker finds the rows of optimizer step ``s`` by arithmetic
(:mod:`agentflan.train.sampling`) and reads just those from the shards (:mod:`agentflan.train.shards`), which
makes the data position of a checkpoint just its step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentflan.config import Config
from agentflan.train.corpus import corpus_split, heldout_dir
from agentflan.train.pack_corpus import PackJob, corpus_sources, plan_blocks, run_pack
from agentflan.train.shards import shard_paths
from agentflan.train.tokenizer import load_tokenizer

SPLITS = ("train", "validation")


@dataclass
class PackedData:
    """Where :func:`prepare` put things: each split's shard directory (``train/packed_<split>``), the
    tokenizer, and the packing counts."""

    train: Path
    validation: Path
    tokenizer_dir: Path
    stats: dict[str, Any]


def packing_key(cfg: Config) -> dict[str, Any]:
    """What the packed rows depend on: the corpus (its fingerprint), the tokenizer, the template and packing."""
    m, t = cfg.train.model, cfg.train
    return {
        "corpus": _fingerprint(Path(cfg.output_dir)),
        "heldout": _fingerprint(heldout_dir(cfg)),
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
