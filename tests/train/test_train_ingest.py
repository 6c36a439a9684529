"""From the corpus to the training step on shards: tokenize and pack on Ray Data or in one process (the same
shards, byte for byte), packing in blocks (every sample exactly once, the loss against one global packing
reported), and workers that read only the rows of their steps (the rows of the whole-table approach, a
resume that reads what an uninterrupted run reads, a second epoch in another order)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import agentflan
from agentflan.config import load_config
from agentflan.data.pipeline import run_data
from agentflan.train.batches import PackedBatches, Prefetcher
from agentflan.train.corpus import corpus_split
from agentflan.train.data import prepare
from agentflan.train.loop import _micro_batch_plan
from agentflan.train.pack_corpus import BlockPlan, PackJob, corpus_sources, plan_blocks, run_pack
from agentflan.train.packing import count_rows
from agentflan.train.sampling import step_rows
from agentflan.train.shards import PackedShards, read_packed, shard_paths
from agentflan.train.templates import encode_conversation, encoding_template

REPO = Path(__file__).resolve().parents[2]
SAMPLE = Path(agentflan.__file__).parent / "sample_data"
CPU = torch.device("cpu")
BLOCK = 64  # samples per packing block: several blocks (and shards) per split


def make_cfg(out: Path, *extra: str):
    return load_config(
        REPO / "pipelines/local.yaml",
        [
            f"output_dir={out}",
            "data.engine=local",
            f"data.inputs=[{{path: {SAMPLE}/react/fireact_hotpotqa.jsonl, source: react, kind: agent}}, "
            f"{{path: {SAMPLE}/general/fastchat_dummy_conversation.json, source: sharegpt, kind: general}}]",
            f"data.negatives.tool_pool_files=[{SAMPLE}/tools/G1_query.json]",
            "data.validation_fraction=0.2",
            "train.seq_len=256",
            f"train.pack_block_samples={BLOCK}",
            "train.global_batch_size=8",
            "train.micro_batch_size=2",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    run_data(make_cfg(out))
    return out


def copy_of(corpus: Path, to: Path) -> Path:
    shutil.copytree(corpus, to)
    return to


@pytest.fixture(scope="module")
def packed(corpus, tmp_path_factory):
    """The corpus tokenized and packed in this process."""
    cfg = make_cfg(copy_of(corpus, tmp_path_factory.mktemp("local") / "run"))
    return cfg, prepare(cfg)


def shard_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in shard_paths(directory)}


def test_ray_and_local_write_the_same_shards(ray_session, corpus, packed, tmp_path):
    """The same config and seed give the same shards on Ray Data (2 actors, blocks in whatever order Ray runs
    them) as in one process: same names, same bytes, same counts."""
    local_cfg, local = packed
    cfg = make_cfg(copy_of(corpus, tmp_path / "run"), "data.engine=ray")
    on_ray = prepare(cfg)
    for split in ("train", "validation"):
        assert shard_bytes(getattr(local, split)) == shard_bytes(getattr(on_ray, split)), split
    assert len(shard_paths(on_ray.train)) == local.stats["train"]["blocks"] > 1
    assert on_ray.stats == local.stats
    assert (Path(cfg.output_dir) / "train/data_stats.json").read_text() == (
        Path(local_cfg.output_dir) / "train/data_stats.json"
    ).read_text()


def _samples_in_rows(directory: Path) -> Counter:
    """Every sample of every packed row (split at the position-id restarts), as (ids, labels, weights)."""
    out: Counter = Counter()
    for r in read_packed(directory).to_pylist():
        pos = r["position_ids"][: r["n_real"]]
        starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
        for a, b in zip(starts, starts[1:], strict=False):
            out[tuple(r["input_ids"][a:b]), tuple(r["labels"][a:b]), tuple(r["weights"][a:b])] += 1
    return out


def test_block_packing_keeps_every_sample_exactly_once(packed):
    """The packed rows hold exactly the samples the encoder makes of the split (cut to seq_len, those with
    nothing to train dropped): none lost, none twice, across all blocks."""
    cfg, data = packed
    tok = AutoTokenizer.from_pretrained(data.tokenizer_dir)
    for split in ("train", "validation"):
        expected: Counter = Counter()
        for c in corpus_split(Path(cfg.output_dir), split):
            s = encode_conversation(c.messages, tok, encoding_template(cfg), tools=c.tools)
            s = s.truncate(cfg.train.seq_len)
            if s.n_trained:
                expected[tuple(s.input_ids), tuple(s.labels), tuple(np.float32(s.weights).tolist())] += 1
        assert _samples_in_rows(getattr(data, split)) == expected
        stats = data.stats[split]
        assert stats["samples"] == sum(expected.values())
        assert stats["blocks"] == len(shard_paths(getattr(data, split)))
        assert stats["blocks"] == -(-(stats["samples"] + stats["dropped_untrained"]) // BLOCK)
    assert data.stats["train"]["blocks"] > 1


def test_the_order_is_fixed_by_the_seed_not_by_the_input_order(packed, tmp_path):
    """Blocks are cut in key order (a hash of seed and id): shards read in another order give the same plan
    and the same shards; another seed, another draw."""
    cfg, data = packed
    sources = corpus_sources(cfg)
    plans = plan_blocks(sources, cfg.seed, BLOCK)
    ids = [i for s in sources if s.split == "train" for i in _ids(s)]
    assert BlockPlan.of("train", reversed(ids), cfg.seed, BLOCK) == plans["train"]
    assert BlockPlan.of("train", ids, cfg.seed + 1, BLOCK) != plans["train"]
    job = PackJob.of(cfg, [replace(s, files=s.files[::-1]) for s in sources], 0)
    job = replace(
        job,
        pad_id=AutoTokenizer.from_pretrained(data.tokenizer_dir).pad_token_id,
        out_dirs={s: str(tmp_path / s) for s in job.out_dirs},
    )
    stats = run_pack(job, plans, "local")
    assert stats == data.stats
    assert shard_bytes(tmp_path / "train") == shard_bytes(data.train)


def _ids(source) -> list[str]:
    from agentflan.train.pack_corpus import corpus_ids

    return corpus_ids(source)


def test_real_token_share_is_reported_against_one_global_packing(packed, corpus, tmp_path):
    cfg, data = packed
    stats = json.loads((Path(cfg.output_dir) / "train/data_stats.json").read_text())
    train = stats["train"]
    lengths = [n for sample in _samples_in_rows(data.train).elements() for n in [len(sample[0])]]
    assert train["global_rows"] == count_rows(lengths, cfg.train.seq_len)
    assert train["rows"] >= train["global_rows"]
    assert train["global_real_token_share"] >= train["real_token_share"] > 0.5
    assert train["real_token_share"] == round(train["real_tokens"] / (train["rows"] * cfg.train.seq_len), 4)
    # One block holding the whole split is the global packing.
    whole = make_cfg(copy_of(corpus, tmp_path / "run"), "train.pack_block_samples=100000")
    one = prepare(whole).stats["train"]
    assert one["blocks"] == 1 and one["rows"] == one["global_rows"] == train["global_rows"]
    assert one["real_token_share"] == one["global_real_token_share"] == train["global_real_token_share"]


def test_a_worker_reads_the_rows_of_the_whole_table(packed):
    """By row from the shards, the rows ``step_rows`` names (2 ranks, 3 epochs) are those of the whole table
    at the same index; only the row groups they fall in are read."""
    cfg, data = packed
    table = read_packed(data.train)
    whole, shards = PackedBatches(table), PackedShards(data.train)
    by_row = PackedBatches(shards)
    assert by_row.n_rows == whole.n_rows == len(shards) and by_row.seq_len == whole.seq_len
    assert (by_row.n_trained == whole.n_trained).all() and (by_row.n_real == whole.n_real).all()
    per_step = 2 * 2 * 2
    for step in range(3 * -(-whole.n_rows // per_step)):
        for rank in range(2):
            for rows in step_rows(step, rank, 2, 2, 2, whole.n_rows, cfg.seed):
                a, b = whole.batch(rows), by_row.batch(rows)
                for name in ("input_ids", "labels", "weights", "position_ids"):
                    assert torch.equal(getattr(a, name), getattr(b, name)), (step, rank, name)
                assert (a.n_real, a.slots) == (b.n_real, b.slots)
                assert whole.trained_tokens(rows) == by_row.trained_tokens(rows)
    lazy = PackedShards(data.train, cache_groups=2)
    lazy.take([lazy.n_rows - 1])
    assert lazy.groups_read <= 2 < len(shard_paths(data.train))  # the first group (seq_len) and the last


def _plan(cfg, n_rows: int, rank: int, start: int, steps: int):
    state = SimpleNamespace(cfg=cfg, start_step=start, steps=steps, rank=rank, world=2)
    state.rows = SimpleNamespace(n_rows=n_rows)
    return _micro_batch_plan(state)


def test_a_resumed_worker_reads_what_an_uninterrupted_one_reads(packed):
    """The plan of a worker resumed at step k (a fresh reader, as after a restart) gives the batches the
    uninterrupted worker got from step k on."""
    cfg, data = packed
    n_rows = PackedShards(data.train).n_rows
    steps, resume_at = 2 * -(-n_rows // cfg.train.global_batch_size), 5
    for rank in range(2):
        full = Prefetcher(PackedBatches(PackedShards(data.train)), _plan(cfg, n_rows, rank, 0, steps), CPU)
        uninterrupted = [full.next()[0] for _ in range(steps * cfg.train.grad_accum_steps)]
        resumed_rows = PackedBatches(PackedShards(data.train))
        resumed = Prefetcher(resumed_rows, _plan(cfg, n_rows, rank, resume_at, steps), CPU)
        for batch in uninterrupted[resume_at * cfg.train.grad_accum_steps :]:
            again, _ = resumed.next()
            assert torch.equal(batch.input_ids, again.input_ids) and torch.equal(batch.weights, again.weights)
        with pytest.raises(StopIteration):
            resumed.next()


def test_a_second_epoch_reads_the_rows_in_another_order(packed):
    cfg, data = packed
    rows = PackedBatches(PackedShards(data.train))
    n = rows.n_rows
    per_step = cfg.train.global_batch_size
    stream = [
        i for step in range(3 * n // per_step + 1) for i in sum(step_rows(step, 0, 1, per_step, 1, n, 0), [])
    ]
    first, second = stream[:n], stream[n : 2 * n]
    assert first == list(range(n)) and sorted(second) == first and second != first
    ids = lambda order: [tuple(t) for t in rows.batch(order).input_ids.tolist()]  # noqa: E731
    assert sorted(ids(first)) == sorted(ids(second)) and ids(first) != ids(second)


@pytest.mark.ray  # slow: Ray in a subprocess
def test_tokenize_pack_benchmark_small(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/tokenize_pack.py"), "--conversations", "600", "--seq-len", "256",
         "--block-samples", "128", "--sweep", "32", "--workdir", str(tmp_path / "b")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| one process " in proc.stdout and "| Ray Data, 2 actors (first run) " in proc.stdout
    results = json.loads((tmp_path / "b/results.json").read_text())
    assert [r["same"] for r in results] == [True, True, True]
    assert "| whole split " in proc.stdout


def _kill_an_encoder(find, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first Ray actor process of this session seen encoding (a tokenizer actor in its work)."""
    while not stop.is_set() and not killed:
        pid = find("ray::MapWorker", "Encoder")
        if pid is not None:
            time.sleep(0.2)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.02)


def test_a_killed_tokenizer_actor_changes_no_shard(ray_session, own_ray_process, corpus, packed, tmp_path):
    """Ray Data restarts a dead actor and retries its work; shards are written whole by the packing tasks,
    so the result is the same bytes as the one-process run's. With a pool of one actor the job can only finish
    through the restart, so this also proves the restarted actor rebuilt its encoder from its constructor
    arguments (paths and numbers: the block plans are read from the file beside the shards)."""
    _, local = packed
    cfg = make_cfg(copy_of(corpus, tmp_path / "run"), "data.engine=ray", "train.tokenize_actors=1")
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_an_encoder, args=(own_ray_process, killed, stop))
    killer.start()
    try:
        on_ray = prepare(cfg)
    finally:
        stop.set()
        killer.join()
    assert killed, "no tokenizer actor was seen to kill"
    for split in ("train", "validation"):
        assert shard_bytes(getattr(local, split)) == shard_bytes(getattr(on_ray, split)), split
    assert on_ray.stats == local.stats
