"""Benchmark: the corpus pipeline on Ray Data against the same stages in one Python process.

The real corpus (the bundled sample: AgentInstruct, FireAct, ToolBench, ShareGPT) is replicated into many
files until it holds at least ``--trajectories`` agent trajectories; both engines run the whole pipeline
(``agentflan data``) on it in the same run, each in its own process, while a sampler records the peak
proportional set size (PSS) of that process and all its children (Ray's raylet, GCS and workers
included). Records/s is taken over the pipeline itself; starting a local Ray instance (which a cluster
job does not pay) is reported in its own column. Then the input grows ``--scale`` times to show that memory
stays flat (streaming): the whole tree's peak, and the driver's own (its RSS), which must not grow at all
now that the tasks write the shards and the driver only adds up their summaries.

``--single-file-mb N`` is the other shape: the real JSONL corpora (AgentInstruct, FireAct) repeated into ONE
file of at least N MB, read by Ray in line ranges (``data.split_bytes``), against one plain process and two
plain processes each on half of the lines (this machine's ceiling for two-way parallelism).

    python benchmarks/data_pipeline.py                      # 50k trajectories, then 10x
    python benchmarks/data_pipeline.py --trajectories 2000 --scale 2   # a quick look
    python benchmarks/data_pipeline.py --single-file-mb 120  # one 120 MB JSONL

Targets (2-core machine): one file: Ray >= 0.9x the two-process ceiling; peak memory at 10x < 1.3x of 1x,
and a flat driver.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "platform/agentflan/sample_data"
SOURCES = {  # bucket -> (files, kind)
    "agentinstruct": (["agentinstruct/db.jsonl", "agentinstruct/mixed_sample_200.messages.json"], "agent"),
    "react": (["react/fireact_hotpotqa.jsonl"], "agent"),
    "toolbench": (["toolbench/toolllama_G1_demo.json", "toolbench/answer_G1_10_DFS.json"], "agent"),
    "sharegpt": (["general/sharegpt_examples.json", "general/fastchat_dummy_conversation.json"], "general"),
}
TRAJECTORIES_PER_COPY = 430 + 200 + 500 + 4 + 1


def build_corpus(root: Path, copies: int) -> list[dict]:
    """``copies`` copies of every sample file, each under its own name (so record ids stay unique)."""
    inputs = []
    for source, (files, kind) in SOURCES.items():
        d = root / source
        d.mkdir(parents=True, exist_ok=True)
        for rel in files:
            src = SAMPLE / rel
            for i in range(copies):
                shutil.copyfile(src, d / f"c{i:04d}_{src.name}")
        inputs.append({"path": str(d), "source": source, "kind": kind})
    return inputs


class PeakMemory:
    """Samples the PSS of a process tree every ``interval`` seconds; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.25, tree: bool = True) -> None:
        self.root = psutil.Process(pid)
        self.tree = tree  # the tree's PSS costs CPU to read (every process's smaps): off for throughput runs
        self.interval = interval
        self.peak = 0
        self.driver_peak = 0  # the root process's RSS
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree_pss(self) -> int:
        total = 0
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_full_info().pss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.tree:
                self.peak = max(self.peak, self._tree_pss())
            with contextlib.suppress(psutil.Error):
                self.driver_peak = max(self.driver_peak, self.root.memory_info().rss)
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def data_cmd(engine: str, inputs: list[dict], out: Path, num_cpus: int) -> list[str]:
    """``agentflan data`` on the bundled spec with these inputs, engine and output dir."""
    return [
        sys.executable,
        "-m",
        "agentflan.cli",
        "data",
        str(REPO / "pipelines/local.yaml"),
        f"data.inputs={json.dumps(inputs)}",
        f"data.engine={engine}",
        f"data.num_cpus={num_cpus}",
        f"data.negatives.tool_pool_files=[{SAMPLE / 'tools/G1_query.json'}]",
        f"output_dir={out}",
    ]


def run_engine(engine: str, inputs: list[dict], out: Path, num_cpus: int, tree: bool = True) -> dict:
    cmd = data_cmd(engine, inputs, out, num_cpus)
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    mem = PeakMemory(proc.pid, tree=tree)
    log, _ = proc.communicate()
    peak = mem.stop()
    driver_peak = mem.driver_peak
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{engine} run failed:\n{log[-4000:]}")
    m = json.loads((out / "manifest.json").read_text())
    records = m["stages"][0]["in"]
    return {
        "engine": engine,
        "records": records,
        "seconds": m["seconds"],
        "startup_seconds": m["startup_seconds"],
        "wall_seconds": round(wall, 1),
        "records_per_s": records / m["seconds"],
        "peak_pss_mb": peak / 2**20 if tree else float("nan"),
        "driver_peak_mb": driver_peak / 2**20,
        "fingerprint": m["fingerprint"],
    }


def build_single_file(root: Path, megabytes: int) -> tuple[Path, Path, Path]:
    """The real JSONL corpora repeated into one file of >= ``megabytes`` MB, and its two halves by line."""
    lines = []
    for rel in ("agentinstruct/db.jsonl", "react/fireact_hotpotqa.jsonl"):
        lines += (SAMPLE / rel).read_bytes().splitlines()
    size = sum(len(line) + 1 for line in lines)
    copies = -(-megabytes * 2**20 // size)
    root.mkdir(parents=True, exist_ok=True)
    whole, half_a, half_b = root / "big.jsonl", root / "half_a.jsonl", root / "half_b.jsonl"
    with whole.open("wb") as w, half_a.open("wb") as a, half_b.open("wb") as b:
        for i in range(copies):
            block = b"\n".join(lines) + b"\n"
            w.write(block)
            (a if i < copies // 2 else b).write(block)
    return whole, half_a, half_b


def single_file(args: argparse.Namespace, root: Path) -> None:
    whole, half_a, half_b = build_single_file(root / "single", args.single_file_mb)
    mb = whole.stat().st_size / 2**20
    inp = lambda p: [{"path": str(p), "source": "agentinstruct", "kind": "agent"}]  # noqa: E731
    results = []
    for engine in ("ray", "local"):
        print(f"running {engine} on one {mb:.0f} MB file ...", file=sys.stderr, flush=True)
        results.append(run_engine(engine, inp(whole), root / f"single_{engine}", args.num_cpus, tree=False))
    print("running 2 plain processes on halves ...", file=sys.stderr, flush=True)
    results.append(run_two_plain(inp(half_a), inp(half_b), root / "single_halves", args.num_cpus))
    rows = [
        ["engine", "file", "records", "pipeline s", "records/s", "driver peak RSS (MB)", "tree peak PSS (MB)"]
    ]
    for r in results:
        rows.append([
            r["engine"], f"{mb:.0f} MB", str(r["records"]), f"{r['seconds']:.1f}", f"{r['records_per_s']:.0f}",
            "-" if r.get("driver_peak_mb") is None else f"{r['driver_peak_mb']:.0f}",
            "-" if r["peak_pss_mb"] != r["peak_pss_mb"] else f"{r['peak_pss_mb']:.0f}",
        ])  # fmt: skip
    print(table(rows))
    by = {r["engine"]: r for r in results}
    ceiling = by["2 plain processes"]["records_per_s"]
    print(
        f"\none file: ray / two-process ceiling = {by['ray']['records_per_s'] / ceiling:.2f} (target >= 0.9); "
        f"ray / one plain process = {by['ray']['records_per_s'] / by['local']['records_per_s']:.2f}; "
        f"same output fingerprint: {by['ray']['fingerprint'] == by['local']['fingerprint']}"
    )


def run_two_plain(inputs_a: list[dict], inputs_b: list[dict], out: Path, num_cpus: int) -> dict:
    """The machine's own ceiling: two plain processes at once, each on half of the input (no Ray)."""
    t0 = time.time()
    procs = []
    for name, inputs in (("a", inputs_a), ("b", inputs_b)):
        cmd = data_cmd("local", inputs, out / name, num_cpus)
        procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for p in procs:
        p.wait()
    wall = time.time() - t0
    records = sum(json.loads((out / n / "manifest.json").read_text())["stages"][0]["in"] for n in "ab")
    return {
        "engine": "2 plain processes",
        "records": records,
        "seconds": wall,
        "startup_seconds": 0.0,
        "wall_seconds": wall,
        "records_per_s": records / wall,
        "peak_pss_mb": float("nan"),
        "driver_peak_mb": None,
        "fingerprint": "",
    }


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trajectories", type=int, default=50_000)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--engines", default="ray,local")
    ap.add_argument("--scale-engines", default="ray,local", help="engines to run at the larger input")
    ap.add_argument("--num-cpus", type=int, default=psutil.cpu_count())
    ap.add_argument(
        "--ceiling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time two plain processes on half the input each: the machine's parallel ceiling",
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--single-file-mb", type=int, help="benchmark one JSONL file of this size instead")
    args = ap.parse_args()
    if args.single_file_mb:
        with tempfile.TemporaryDirectory(prefix="agentflan-bench-") as tmp:
            single_file(args, Path(tmp))
        return

    copies = -(-args.trajectories // TRAJECTORIES_PER_COPY)
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="agentflan-bench-") as tmp:
        root = Path(tmp)
        for scale, engines in ((1, args.engines), (args.scale, args.scale_engines)):
            if scale > 1 and not engines:
                continue
            corpus = root / f"corpus_x{scale}"
            inputs = build_corpus(corpus, copies * scale)
            for engine in engines.split(","):
                print(f"running {engine} on {copies * scale} copies ...", file=sys.stderr, flush=True)
                r = run_engine(engine, inputs, root / f"out_{engine}_x{scale}", args.num_cpus)
                r["scale"] = scale
                r["trajectories"] = copies * scale * TRAJECTORIES_PER_COPY
                results.append(r)
            shutil.rmtree(corpus)
            if scale == 1 and args.ceiling and copies >= 2:
                half = copies // 2
                a = build_corpus(root / "half_a", half)
                b = build_corpus(root / "half_b", copies - half)
                print("running 2 plain processes on halves ...", file=sys.stderr, flush=True)
                r = run_two_plain(a, b, root / "out_halves", args.num_cpus)
                r["scale"] = 1
                r["trajectories"] = copies * TRAJECTORIES_PER_COPY
                results.append(r)

    rows = [
        [
            "engine",
            "input",
            "trajectories",
            "records",
            "start-up s",
            "pipeline s",
            "records/s",
            "driver peak RSS (MB)",
            "tree peak PSS (MB)",
        ]
    ]
    for r in results:
        rows.append(
            [
                r["engine"],
                f"{r['scale']}x",
                str(r["trajectories"]),
                str(r["records"]),
                f"{r['startup_seconds']:.1f}",
                f"{r['seconds']:.1f}",
                f"{r['records_per_s']:.0f}",
                "-" if r.get("driver_peak_mb") is None else f"{r['driver_peak_mb']:.0f}",
                "-" if r["peak_pss_mb"] != r["peak_pss_mb"] else f"{r['peak_pss_mb']:.0f}",
            ]
        )
    print(table(rows))
    by = {(r["engine"], r["scale"]): r for r in results}
    if ("ray", 1) in by and ("local", 1) in by:
        ratio = by["ray", 1]["records_per_s"] / by["local", 1]["records_per_s"]
        same = by["ray", 1]["fingerprint"] == by["local", 1]["fingerprint"]
        print(f"\nthroughput ratio ray/plain: {ratio:.2f} (target >= 1.8); same output fingerprint: {same}")
    if ("2 plain processes", 1) in by and ("local", 1) in by:
        ceiling = by["2 plain processes", 1]["records_per_s"] / by["local", 1]["records_per_s"]
        print(f"machine ceiling (2 plain processes on halves / 1 plain process): {ceiling:.2f}")
    for engine in ("ray", "local"):
        if (engine, 1) in by and (engine, args.scale) in by and args.scale > 1:
            growth = by[engine, args.scale]["peak_pss_mb"] / by[engine, 1]["peak_pss_mb"]
            driver = by[engine, args.scale]["driver_peak_mb"] / by[engine, 1]["driver_peak_mb"]
            print(
                f"{engine}: peak memory at {args.scale}x input = {growth:.2f}x of 1x (target < 1.3); "
                f"driver {driver:.2f}x"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
