"""Benchmark: training throughput on one GPU, attention implementation x loss, against a plain padded HF loop of
the same model and the card's bf16 matmul peak, all measured in the same run; then a Llama-2-7B-shaped row
under ZeRO-3 with the optimizer offloaded to the CPU (the paper spec's memory path).

Prepare the data on any machine (the GPU machine needs none of the data pipeline), then run on the GPU:

    python benchmarks/gpu_train.py prepare DIR                 # corpus, 32k BPE tokenizer, rows packed to 8192
    python benchmarks/gpu_train.py run DIR --out results.json  # padded loop, the sweep in value order, 7b last
    python benchmarks/gpu_train.py prepare DIR --seq-len 256 && \\
        python benchmarks/gpu_train.py run DIR --size tiny --steps 2 --warmup 1   # the same path on a CPU

On the lent GPU machine, ``bash benchmarks/gpu/run.sh`` installs the carried wheels and runs this with a time
budget (docs/benchmarks.md, "GPU run").

Rows (``--rows``): ``ATTN/LOSS[/compile]`` with ATTN in sdpa, flex_attention, flash_attention_2,
flash_attention_3, eager and LOSS in full, chunked, liger; ``7b`` for the ZeRO-3 offload row; ``all`` (default)
for every row that can run here, in value order (sdpa/chunked, flex_attention/chunked, the Liger rows, the
rest, 7b). Each row runs in a fresh process with its own time cap (``--cap``), killed with its process group
when the cap is reached, so a slow row costs its cap and no more; results are written after every row. Rows
named in ``--ray-rows`` are a ``TorchTrainer`` fit of the real worker loop
(:func:`agentflan.train.loop.train_loop_per_worker`, one worker, a Ray started in the row's process); the
others run the same ``setup``/``train_step`` in the row's process, their last step under torch.profiler.
The baseline is a plain loop (no DeepSpeed, fp32 weights under bf16 autocast, fused AdamW, sdpa) over 8
conversations padded to the longest.

MFU = real tokens/s x FLOPs per token / the bf16 matmul rate measured here (8192^3, median of 10). FLOPs per
token = 6 x (parameters in matmuls) + 12 x layers x hidden x (mean causal context of a real token): the useful
work only, so skipped padding and cross-sample attention blocks count for nothing. Targets: MFU >= 50% and
>= 3x the padded loop's real tokens/s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import gpu_profile
import gpu_rows

ATTNS = ("flex_attention", "sdpa", "flash_attention_3", "flash_attention_2", "eager")
LOSSES = ("liger", "chunked", "full")
FIRST = (  # value order: the default GPU path's candidates first, compile rows after them
    "sdpa/chunked",
    "flex_attention/chunked",
    "flex_attention/liger",
    "sdpa/liger",
    "flex_attention/chunked/compile",
    "flex_attention/liger/compile",
)
# Seconds per row on an H200 (estimates: docs/benchmarks.md, "GPU run"); sdpa/chunked goes through Ray.
CAPS = {
    "peak": 60,
    "padded": 90,
    "sdpa/chunked": 100,
    "7b": 180,
    "flex_attention": 130,
    "compile": 150,
    "*": 80,
}


def skipped_rows(args: argparse.Namespace, seq_len: int) -> dict[str, str]:
    """Rows that cannot run here, with the reason (they still get a line in the table)."""
    import importlib.util

    skipped = {}
    for attn, package in (("flash_attention_3", "flash_attn_interface"), ("flash_attention_2", "flash_attn")):
        if not importlib.util.find_spec(package):
            skipped[attn] = f"not installed ({package})"
    if args.gpu and args.size == "1b":
        dims = gpu_rows.SIZES[args.size]
        gib = args.micro * dims["num_heads"] * seq_len**2 * 2 * dims["num_layers"] / 2**30
        skipped["eager"] = (
            f"not run: eager keeps B x heads x L x L bf16 attention probabilities for backward, "
            f"{gib:.0f} GiB at L={seq_len}"
        )
    if not args.gpu:
        skipped["liger"] = "needs a GPU"
        skipped["flex_attention"] = "no backward on CPU"
    elif not importlib.util.find_spec("liger_kernel"):
        skipped["liger"] = "not installed (liger_kernel)"
    return skipped


def default_rows(skipped: dict[str, str]) -> list[str]:
    rest = [f"{a}/{loss}" for a in ATTNS for loss in LOSSES if f"{a}/{loss}" not in FIRST]
    rows = [r for r in (*FIRST, *rest) if not any(part in skipped for part in r.split("/"))]
    return [*rows, "7b"]


def cap_of(name: str, caps: dict[str, float]) -> float:
    """A row's time cap: its own, else its attention's or flag's (``compile`` first), else ``*``."""
    parts = name.split("/")
    for key in (name, *reversed(parts)):
        if key in caps:
            return caps[key]
    return caps["*"]


class Budget:
    """The run's deadline, with time held back for the rows in ``reserve`` until they have run: a row of
    lower value never eats the time of a reserved row after it."""

    def __init__(self, seconds: float, caps: dict[str, float], reserve: list[str]) -> None:
        self.deadline = time.time() + seconds
        self.caps = caps
        self.pending = list(reserve)

    def timeout(self, name: str) -> float:
        held = sum(cap_of(r, self.caps) for r in self.pending if r != name)
        return min(cap_of(name, self.caps), self.deadline - time.time() - held)

    def done(self, name: str) -> None:
        if name in self.pending:
            self.pending.remove(name)


def _subprocess(kind: str, data: Path, extra: list[str], timeout: float, log: Path) -> Any:
    """One measurement in a fresh process (clean GPU memory; a crash or a hang costs one row, not the run),
    its output appended to ``log``; killed with its process group (Ray included) at ``timeout`` seconds."""
    result = Path(tempfile.gettempdir()) / f"gpu_train-{os.getpid()}-{kind}.json"  # $OUT takes 8 files
    result.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "one", str(data), "--kind", kind, "--result", str(result), *extra]
    with log.open("a") as f:
        f.write(f"\n===== {kind} {' '.join(extra)[:300]} (cap {timeout:.0f} s)\n")
        f.flush()
        start = f.tell()
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, cwd=gpu_rows.REPO, start_new_session=True
        )
        try:
            code = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise RuntimeError(
                f"{kind}: stopped at its time cap ({timeout:.0f} s){_tail(log, start)}"
            ) from None
        finally:
            _kill_group(proc)  # what the measurement left behind (Ray's processes) goes with it
    if code != 0:
        raise RuntimeError(f"{kind} failed (exit {code}){_tail(log, start)}")
    return json.loads(result.read_text())


def _kill_group(proc: subprocess.Popen) -> None:
    """TERM to the measurement's process group (Ray shuts down on it), then KILL to whatever is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _tail(log: Path, start: int) -> str:
    with log.open() as f:
        f.seek(start)
        return ":\n" + f.read()[-2500:]


def _offload_adam(status: Path | None, budget: Budget) -> str:
    """``deepspeed`` when run.sh's background build of DeepSpeed's CPU Adam succeeded, else ``torch``."""
    if status is None:
        return "deepspeed"
    limit = time.time() + max(0.0, min(30.0, budget.deadline - time.time() - 150))
    while not status.exists() and time.time() < limit:
        time.sleep(2)
    ok = status.exists() and status.read_text().strip() == "ok"
    print(
        f"DeepSpeed CPU Adam build: {'ok' if ok else 'not ready or failed: torch AdamW on the CPU'}",
        flush=True,
    )
    return "deepspeed" if ok else "torch"


def run(args: argparse.Namespace) -> None:
    import torch

    data = args.data.resolve()
    args.gpu = torch.cuda.is_available()
    meta = json.loads((data / "bench.json").read_text())
    card = torch.cuda.get_device_name(0) if args.gpu else "CPU"
    skipped = skipped_rows(args, meta["seq_len"])
    rows = default_rows(skipped) if args.rows == "all" else args.rows.split(",")
    ray_rows = set(filter(None, args.ray_rows.split(",")))
    caps = {**CAPS, **{k: float(v) for k, v in (c.split("=") for c in args.cap)}}
    budget = Budget(args.budget_s, caps, [r for r in args.reserve.split(",") if r in rows])
    out = args.out or data / "gpu_results.json"
    log = args.log or out.with_suffix(".log")
    results: dict[str, Any] = {"card": card, "args": {k: str(v) for k, v in vars(args).items()}, "rows": []}
    results["skipped"] = skipped

    def save() -> None:
        out.write_text(json.dumps(results, indent=2))
        out.with_suffix(".md").write_text(table(results) + "\n")

    if args.gpu:
        try:
            results["peak_tflops"] = _subprocess("peak", data, [], budget.timeout("peak"), log)
        except RuntimeError as e:
            results["peak_tflops"], results["peak_error"] = 989.0, str(e)[-800:]  # the datasheet's dense bf16
        print(f"bf16 matmul peak: {results['peak_tflops']:.0f} TFLOP/s", flush=True)
    else:
        results["peak_tflops"] = args.peak_tflops
    if any(r != "7b" for r in rows):
        try:
            extra = ["--size", args.size, "--steps", str(args.steps), "--batch", str(args.batch)]
            results["padded"] = _subprocess("padded", data, extra, budget.timeout("padded"), log)
        except RuntimeError as e:
            results["padded"] = {"error": _clip(str(e))}
        print(f"padded baseline: {json.dumps(results['padded'])[:1600]}", flush=True)
    save()

    for row in rows:
        run_args = {**vars(args), "engine_of_row": "ray" if row in ray_rows else "single"}
        if row == "7b":
            run_args["offload_adam"] = _offload_adam(args.cpu_adam_status, budget)
        timeout = budget.timeout(row)
        if timeout < args.min_row_s:
            results["rows"].append(
                {"row": row, "error": f"not run: {max(0, timeout):.0f} s left of the budget"}
            )
            budget.done(row)
            save()
            continue
        print(f"row {row} (cap {timeout:.0f} s) ...", flush=True)
        try:
            res = _subprocess(
                "row", data, ["--row", row, "--args", json.dumps(run_args, default=str)], timeout, log
            )
        except Exception as e:  # one row's failure is a line in the table, not the end of the run
            res = {"row": row, "error": _clip("".join(traceback.format_exception_only(type(e), e)))}
        budget.done(row)
        print(json.dumps(res)[:3000], flush=True)
        results["rows"].append(res)
        save()
    print(table(results))


def table(results: dict[str, Any]) -> str:
    peak = results["peak_tflops"] * 1e12
    padded = results.get("padded", {})
    lines = [
        f"{results['card']}; bf16 matmul peak measured in this run: {results['peak_tflops']:.0f} TFLOP/s",
        "",
        "| setup | real tokens/s | real-token share | MFU | vs padded | step s | fwd / bwd / opt s | data wait s "
        "| peak GPU GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = padded.get("tokens_per_s")
    shape = next((r["model"] for r in results["rows"] if "model" in r and r["row"] != "7b"), None)
    if base and shape:
        mfu = base * gpu_profile.flops_per_token(shape, padded["mean_context"]) / peak
        mem = padded.get("gpu_peak_mem_gib")
        lines.append(
            f"| plain HF loop, sdpa, padded to the longest | {base:,.0f} | {padded['real_token_share']:.0%} | "
            f"{mfu:.1%} | 1.00x | | | | {f'{mem:.1f}' if mem else '-'} |"
        )
    elif base:
        lines.append(
            f"| plain HF loop, sdpa, padded | {base:,.0f} | {padded['real_token_share']:.0%} | | 1.00x | | | | |"
        )
    elif "error" in padded:
        lines.append(f"| plain HF loop, padded | failed: {_last_line(padded['error'])} | | | | | | | |")
    for r in results["rows"]:
        if "error" in r:
            lines.append(f"| {r['row']} | failed: {_last_line(r['error'])} | | | | | | | |")
            continue
        mfu = r["tokens_per_s"] * gpu_profile.flops_per_token(r["model"], r["mean_context"]) / peak
        vs = f"{r['tokens_per_s'] / base:.2f}x" if base and r["row"] != "7b" else "-"
        mem = f"{r['gpu_peak_mem_gib']:.1f}" if r.get("gpu_peak_mem_gib") else "-"
        phases = " / ".join(f"{r.get(p, 0):.2f}" for p in gpu_rows.PHASES)
        name = f"{r['row']} ({r.get('engine', 'single')})"
        lines.append(
            f"| {name} | {r['tokens_per_s']:,.0f} | {r['real_token_share']:.0%} | {mfu:.1%} | {vs} | "
            f"{r['step_time_s']:.2f} | {phases} | {r['data_wait_s']:.4f} | {mem} |"
        )
    for name, why in results.get("skipped", {}).items():
        lines.append(f"| {name} | {why} | | | | | | | |")
    for r in results["rows"]:
        if r.get("kernels"):
            kinds = ", ".join(
                f"{k} {v:.2f}" for k, v in sorted(r["kernels"]["by_kind_s"].items(), key=lambda x: -x[1])
            )
            lines.append(f"\n{r['row']}, one profiled step, kernel seconds by kind: {kinds}")
    return "\n".join(lines)


def _clip(error: str) -> str:
    """The error's first line (what happened: a cap, an exit code, the exception) and the end of its output."""
    head, _, rest = error.partition("\n")
    return head[:300] + ("\n" + rest[-2500:] if rest else "")


def _last_line(error: str) -> str:
    """For the table: the error's first line when it names the cause, else its last line."""
    lines = [line for line in error.strip().splitlines() if line.strip()]
    first = lines[0] if lines else error
    named = first.startswith(("row", "padded", "peak", "not run")) or "Error" in first
    return (first if named else lines[-1])[:160].replace("|", "/")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("data", type=Path)
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--vocab", type=int, default=32000)
    r = sub.add_parser("run")
    r.add_argument("data", type=Path)
    r.add_argument("--rows", default="all")
    r.add_argument(
        "--ray-rows", default="", help="rows run as a Ray Train fit (the others in a plain process)"
    )
    r.add_argument("--size", choices=sorted(gpu_rows.SIZES), default="1b")
    r.add_argument("--steps", type=int, default=3, help="timed optimizer steps per row")
    r.add_argument("--warmup", type=int, default=1, help="optimizer steps before timing (compile, autotune)")
    r.add_argument("--steps-7b", type=int, default=2)
    r.add_argument("--warmup-7b", type=int, default=1)
    r.add_argument("--micro", type=int, default=2, help="packed rows per micro-batch")
    r.add_argument("--accum", type=int, default=4, help="micro-batches per optimizer step")
    r.add_argument("--batch", type=int, default=8, help="conversations per padded batch (baseline)")
    r.add_argument("--no-profile", dest="profile", action="store_false", help="no profiled step per row")
    r.add_argument("--peak-tflops", type=float, default=1.0, help="used only without a GPU")
    r.add_argument("--budget-s", type=float, default=1e9, help="the whole run's time; no row outlives it")
    r.add_argument("--cap", action="append", default=[], help="NAME=SECONDS: a row's (or attention's) cap")
    r.add_argument("--reserve", default="7b", help="rows whose caps the rows before them may not use")
    r.add_argument("--min-row-s", type=float, default=25.0, help="start no row with less time than this")
    r.add_argument("--cpu-adam-status", type=Path, help="file run.sh writes 'ok' to once CPU Adam is built")
    r.add_argument("--offload-adam", choices=["deepspeed", "torch"], default="deepspeed")
    r.add_argument("--out", type=Path, help="results JSON (a .md table and a .log beside it)")
    r.add_argument("--log", type=Path, help="the measurements' output (default: beside --out)")
    o = sub.add_parser("one")  # internal: one measurement in this process, its JSON written to --result
    o.add_argument("data", type=Path)
    o.add_argument("--kind", choices=["peak", "padded", "row"], required=True)
    o.add_argument("--result", type=Path, required=True)
    o.add_argument("--size", default="1b")
    o.add_argument("--steps", type=int, default=3)
    o.add_argument("--batch", type=int, default=8)
    o.add_argument("--row")
    o.add_argument("--args", help="the run's arguments, as JSON")
    args = ap.parse_args()
    if args.command == "prepare":
        gpu_rows.prepare(args.data.resolve(), args.seq_len, args.vocab)
        return
    if args.command == "run":
        run(args)
        return
    if args.kind == "peak":
        value: Any = gpu_rows.measure_peak()
    elif args.kind == "padded":
        value = gpu_rows.padded_baseline(args.data, args.size, args.steps, args.batch)
    else:
        value = gpu_rows.run_row(args.row, args.data.resolve(), argparse.Namespace(**json.loads(args.args)))
    args.result.write_text(json.dumps(value))
    print(json.dumps(value)[:2000])


if __name__ == "__main__":
    main()
