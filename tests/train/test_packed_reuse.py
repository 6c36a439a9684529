"""Packed rows are reused through ``train/packed_key.json`` while what they depend on is unchanged, and packed
again when it changes: seq_len, the template, the seed (or the corpus)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import agentflan
import agentflan.train.data
from agentflan.config import load_config
from agentflan.data.pipeline import run_data
from agentflan.train.data import prepare

REPO = Path(__file__).resolve().parents[2]
SAMPLE = Path(agentflan.__file__).parent / "sample_data"


def make_cfg(out: Path, *extra: str):
    return load_config(
        REPO / "pipelines/local.yaml",
        [
            f"output_dir={out}",
            "data.engine=local",
            f"data.inputs=[{{path: {SAMPLE}/general/fastchat_dummy_conversation.json, source: sharegpt, kind: general}}]",
            f"data.negatives.tool_pool_files=[{SAMPLE}/tools/G1_query.json]",
            "train.seq_len=128",
            "train.model.vocab_size=400",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    run_data(make_cfg(out))
    return out


@pytest.fixture
def packs(corpus, tmp_path, monkeypatch):
    """A copy of the corpus, and a log of every packing ``prepare`` runs on it."""
    out = tmp_path / "run"
    shutil.copytree(corpus, out)
    calls: list[int] = []
    real = agentflan.train.data.run_pack

    def counted(job, *args, **kwargs):
        calls.append(job.seq_len)
        return real(job, *args, **kwargs)

    monkeypatch.setattr(agentflan.train.data, "run_pack", counted)
    return out, calls


def key_of(out: Path) -> dict:
    return json.loads((out / "train/packed_key.json").read_text())


def test_the_same_config_reuses_the_packed_rows(packs):
    out, calls = packs
    first = prepare(make_cfg(out))
    shard = sorted(first.train.glob("*.parquet"))[0]
    written = shard.stat().st_mtime_ns
    again = prepare(make_cfg(out))
    assert calls == [128]  # packed once
    assert again.stats == first.stats and shard.stat().st_mtime_ns == written


@pytest.mark.parametrize(
    ("change", "key", "value"),
    [("train.seq_len=96", "seq_len", 96), ("train.model.template=agentflan", "template", "agentflan"),
     ("seed=1", "seed", 1)],
)  # fmt: skip
def test_a_change_the_rows_depend_on_packs_again(packs, change, key, value):
    out, calls = packs
    before = prepare(make_cfg(out))
    assert key_of(out)[key] != value
    after = prepare(make_cfg(out, change))
    assert len(calls) == 2, f"{change} did not pack again"
    assert key_of(out)[key] == value
    if key == "seq_len":
        assert after.stats["train"]["rows"] > before.stats["train"]["rows"]  # shorter rows: more of them
    # and back: the first config is packed again too (the key names the rows on disk, not a history)
    prepare(make_cfg(out))
    assert len(calls) == 3


def test_a_rebuilt_corpus_packs_again(packs):
    """The key holds the corpus fingerprint: a corpus written anew with other rows is not read as the old one."""
    out, calls = packs
    prepare(make_cfg(out))
    run_data(make_cfg(out, "data.mixture.ratios={general: 0.5, negatives: 1.0}"))
    prepare(make_cfg(out, "data.mixture.ratios={general: 0.5, negatives: 1.0}"))
    assert len(calls) == 2


def test_missing_shards_are_packed_again(packs):
    out, calls = packs
    data = prepare(make_cfg(out))
    for f in data.validation.glob("*.parquet"):
        f.unlink()
    prepare(make_cfg(out))
    assert len(calls) == 2
