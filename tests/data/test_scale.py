"""The corpus pipeline at scale: a large file read by several tasks (JSONL line ranges, JSON array elements,
parquet row groups), shards written by the tasks, retries that change nothing, a killed Ray worker.

Inputs are the real corpora made larger by repeating them, with a few broken lines written in (a repeated
record keeps its id; the pipeline does not dedupe, so repeats only add rows)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agentflan.config import load_config
from agentflan.data import passes
from agentflan.data.pipeline import run_data
from agentflan.data.readers import iter_raw_items
from agentflan.data.splits import plan_parts, read_part

BAD_LINES = {7: b"{not json", 300: b'{"conversations": 3}', 1201: b'{"a": "\xff"}'}


def big_jsonl(shared: Path, tmp_path: Path, copies: int = 3) -> Path:
    """FireAct repeated ``copies`` times, with broken lines at known line numbers."""
    lines = (shared / "react/fireact_hotpotqa.jsonl").read_bytes().splitlines() * copies
    for number, raw in BAD_LINES.items():
        lines.insert(number - 1, raw)
    path = tmp_path / f"fireact_x{copies}.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def items_of(parts) -> list[tuple]:
    out = [(i["path"], i["line"], i["raw"], i["error"]) for p in parts for i in read_part(p.to_dict(), 10**7)]
    return sorted(out, key=lambda x: x[1])


def whole(path: Path) -> list[tuple]:
    items = iter_raw_items(str(path), path.read_bytes(), 10**7)
    return [(i["path"], i["line"], i["raw"], i["error"]) for i in items]


def test_jsonl_line_ranges_read_every_line_once_with_its_number(shared_data, tmp_path):
    path = big_jsonl(shared_data, tmp_path)
    parts = plan_parts(str(path), "react", "agent", "train", split_bytes=100_000)
    assert len(parts) == -(-path.stat().st_size // 100_000) and {p.mode for p in parts} == {"bytes"}
    assert parts[0].start == 0 and parts[-1].stop == path.stat().st_size
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:], strict=False))  # contiguous, no overlap
    got = items_of(parts)
    assert got == whole(path)
    errors = {line: error for _, line, _, error in got if error}
    assert set(errors) == {1201} and errors[1201].startswith("not_utf8")  # the others fail when parsed
    assert [raw for _, line, raw, _ in got if line in (7, 300)] == ["{not json", '{"conversations": 3}']


def test_json_array_elements_are_shared_out_with_their_lines(shared_data, tmp_path):
    path = shared_data / "agentinstruct/mixed_sample_200.messages.json"
    parts = plan_parts(str(path), "agentinstruct", "agent", "train", split_bytes=300_000)
    assert len(parts) == 4 and {p.mode for p in parts} == {"stripe"}
    got = items_of(parts)
    assert got == whole(path) and len(got) == 200


def test_parquet_row_groups_are_shared_out_with_their_rows(shared_data, tmp_path):
    rows = [
        json.loads(line) for line in (shared_data / "react/fireact_hotpotqa.jsonl").read_text().splitlines()
    ]
    path = tmp_path / "fireact.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=64)
    parts = plan_parts(str(path), "react", "agent", "train", split_bytes=-(-path.stat().st_size // 3))
    assert len(parts) == 3 and {p.mode for p in parts} == {"row_groups"}
    assert [p.first_line for p in parts] == [1, 1 + 64 * parts[1].start, 1 + 64 * parts[2].start]
    assert items_of(parts) == whole(path) and len(items_of(parts)) == len(rows)


def config(shared: Path, out: Path, inputs: list[str], *extra: str):
    return load_config(
        "pipelines/local.yaml",
        [
            f"data.inputs=[{', '.join(inputs)}]",
            f"data.negatives.tool_pool_files=[{shared}/toolbench/G1_query.json]",
            f"output_dir={out}",
            *extra,
        ],
    )


def inputs(shared: Path, big: Path) -> list[str]:
    return [
        f"{{path: {big}, source: react}}",
        f"{{path: {shared}/agentinstruct/mixed_sample_200.messages.json, source: agentinstruct}}",
        f"{{path: {shared}/general/fastchat_dummy_conversation.json, source: sharegpt, kind: general}}",
    ]


def shard_tables(out: Path) -> dict[str, pa.Table]:
    return {
        str(p.relative_to(out)): pq.read_table(p)
        for name in ("decomposed", "corpus", "quarantine", "filtered")
        for p in sorted((out / name).rglob("part-*.parquet"))
    }


@pytest.mark.slow  # the whole corpus twice (~5 s on a busy 2-core machine)
def test_a_split_file_gives_the_same_corpus_and_keeps_file_line(shared_data, tmp_path):
    big = big_jsonl(shared_data, tmp_path)
    one = run_data(config(shared_data, tmp_path / "one", inputs(shared_data, big), "data.engine=local"))
    cut = run_data(
        config(
            shared_data,
            tmp_path / "cut",
            inputs(shared_data, big),
            "data.engine=local",
            "data.split_bytes=100000",
        )
    )
    assert cut["units"]["pass_a"] > one["units"]["pass_a"] == 3
    assert (cut["fingerprint"], cut["decomposed_fingerprint"]) == (
        one["fingerprint"],
        one["decomposed_fingerprint"],
    )
    assert cut["stages"] == one["stages"] and cut["rows"] == one["rows"]
    quarantined = pq.read_table(tmp_path / "cut" / "quarantine" / "decomposed").to_pylist()
    origins = {q["origin"] for q in quarantined if q["origin"].startswith(str(big))}
    assert origins == {f"{big}:{line}" for line in BAD_LINES}


@pytest.mark.slow  # the whole corpus twice (~4 s on a busy 2-core machine)
def test_a_unit_that_fails_once_is_retried_and_changes_nothing(shared_data, tmp_path, monkeypatch):
    big = big_jsonl(shared_data, tmp_path)
    args = (inputs(shared_data, big), "data.engine=local", "data.split_bytes=100000")
    clean = run_data(config(shared_data, tmp_path / "clean", *args))
    real, failed = passes.read_part, []
    monkeypatch.setattr(passes, "read_part", lambda part, limit: _once(real, part, limit, failed))
    again = run_data(config(shared_data, tmp_path / "again", *args))
    assert failed == [2]
    assert again["fingerprint"] == clean["fingerprint"] and again["stages"] == clean["stages"]
    assert shard_tables(tmp_path / "again").keys() == shard_tables(tmp_path / "clean").keys()


def _once(real, part, limit, failed):
    """``read_part``, except that unit 2 raises after 50 items the first time it is read."""
    for n, item in enumerate(real(part, limit)):
        if part["unit"] == 2 and not failed and n == 50:
            failed.append(part["unit"])
            raise OSError("connection reset by peer")
        yield item


def test_a_unit_that_always_fails_half_way_fails_the_job(shared_data, tmp_path, monkeypatch):
    """Retried, then a clear error: quarantining the rest of a file that broke half-way would lose records
    (a file that cannot be opened at all is quarantined as ``unreadable_file``, the test below)."""
    big = big_jsonl(shared_data, tmp_path)
    real = passes.read_part

    def broken(part, limit):
        for n, item in enumerate(real(part, limit)):
            if n == 10:
                raise OSError("no route to host")
            yield item

    monkeypatch.setattr(passes, "read_part", broken)
    cfg = config(shared_data, tmp_path / "out", inputs(shared_data, big), "data.engine=local")
    with pytest.raises(OSError, match="no route to host"):
        run_data(cfg)


def test_a_file_that_cannot_be_opened_is_quarantined_after_its_retries(shared_data, tmp_path, monkeypatch):
    big = big_jsonl(shared_data, tmp_path)
    real, tries = passes.read_part, []

    def unopenable(part, limit):
        if part["path"] == str(big):
            tries.append(part["unit"])
            raise OSError("permission denied")
        yield from real(part, limit)

    monkeypatch.setattr(passes, "read_part", unopenable)
    m = run_data(config(shared_data, tmp_path / "out", inputs(shared_data, big), "data.engine=local"))
    assert tries == [0, 0, 0]  # three attempts
    read = next(s for s in m["stages"] if s["name"] == "read")
    assert read["quarantined_reasons"] == {"unreadable_file": 1}
    (q,) = [
        r
        for r in pq.read_table(tmp_path / "out/quarantine/decomposed").to_pylist()
        if r["origin"].startswith(str(big))
    ]
    assert q["reason"] == "unreadable_file: permission denied" and q["origin"] == f"{big}:0"


def test_ray_tasks_write_the_same_shards_as_the_local_engine(ray_session, shared_data, tmp_path):
    big = big_jsonl(shared_data, tmp_path)
    args = (inputs(shared_data, big), "data.split_bytes=100000")
    local = run_data(config(shared_data, tmp_path / "local", *args, "data.engine=local"))
    on_ray = run_data(config(shared_data, tmp_path / "ray", *args, "data.engine=ray"))
    assert on_ray["fingerprint"] == local["fingerprint"] and on_ray["stages"] == local["stages"]
    a, b = shard_tables(tmp_path / "local"), shard_tables(tmp_path / "ray")
    assert a.keys() == b.keys() and len(a) > 10
    assert all(a[k].equals(b[k]) for k in a), [k for k in a if not a[k].equals(b[k])]
    assert on_ray["nodes"] and not local["nodes"]


def _kill_a_pass_a_worker(find, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first Ray worker of this session seen running a pass-A task."""
    while not stop.is_set() and not killed:
        pid = find("ray::", "_pass_a_task")
        if pid is not None:
            time.sleep(0.3)  # let it write some shards first
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.05)


def test_a_killed_worker_changes_neither_output_nor_counts(
    ray_session, own_ray_process, shared_data, tmp_path
):
    big = big_jsonl(shared_data, tmp_path, copies=6)
    args = (inputs(shared_data, big), "data.split_bytes=400000")
    local = run_data(config(shared_data, tmp_path / "local", *args, "data.engine=local"))
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_a_pass_a_worker, args=(own_ray_process, killed, stop))
    killer.start()
    try:
        on_ray = run_data(config(shared_data, tmp_path / "ray", *args, "data.engine=ray"))
    finally:
        stop.set()
        killer.join()
    assert killed, "no pass-A worker was seen to kill"
    assert on_ray["fingerprint"] == local["fingerprint"] and on_ray["stages"] == local["stages"]
    a, b = shard_tables(tmp_path / "local"), shard_tables(tmp_path / "ray")
    assert a.keys() == b.keys() and all(a[k].equals(b[k]) for k in a)


def test_many_units_share_a_few_blocks_per_cpu(ray_session):
    """Ray Data keeps memory in the driver for every block it has run, so units of work (files' parts,
    shards) go a few to a block: the block count follows the cluster's CPUs, not the input. Every unit is
    in exactly one block, and adjacent units (one large file's parts) land in different blocks."""
    from agentflan.ray_utils import BLOCKS_PER_CPU, MIN_BLOCKS, units_dataset

    cpus = int(ray_session.cluster_resources()["CPU"])
    blocks = max(MIN_BLOCKS, BLOCKS_PER_CPU * cpus)
    for n in (3, 1000):
        ds = units_dataset([{"unit": i} for i in range(n)])
        per_block = ds.map_batches(
            lambda b: {"units": [sorted(int(u) for u in b["unit"])]}, batch_size=None
        ).take_all()
        assert len(per_block) == min(n, blocks)
        assert sorted(u for r in per_block for u in r["units"]) == list(range(n))
    assert all(len(set(r["units"]) & set(range(blocks))) == 1 for r in per_block)
