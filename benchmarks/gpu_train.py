"""Benchmark: training throughput on one GPU, every attention implementation x loss, against a plain padded HF
loop of the same model and the card's bf16 matmul peak, all measured in the same run.

Prepare the data on any machine (the GPU machine needs none of the data pipeline), then run on the GPU:

    python benchmarks/gpu_train.py prepare DIR                 # corpus, 32k BPE tokenizer, rows packed to 8192
    python benchmarks/gpu_train.py run DIR --out results.json  # the 1B sweep (Ray Train, one worker, ZeRO-2)
    python benchmarks/gpu_train.py run DIR --rows 7b           # Llama-2-7B shape, ZeRO-3, optimizer on the CPU
    python benchmarks/gpu_train.py prepare DIR --seq-len 256 && \\
        python benchmarks/gpu_train.py run DIR --size tiny --steps 2 --warmup 1   # the same path on a CPU

Rows of the sweep (``--rows``): ``ATTN/LOSS[/compile]`` with ATTN in sdpa, flex_attention, flash_attention_2,
flash_attention_3, eager and LOSS in full, chunked, liger; ``7b`` for the ZeRO-3 offload row; ``all`` (default)
for every combination that can run here. Each row is one ``TorchTrainer`` fit of the real worker loop
(:func:`agentflan.train.loop.train_loop_per_worker`) with one worker (``--engine single`` runs the same loop in
a subprocess without Ray). The baseline is a plain loop (no DeepSpeed, fp32 weights under bf16 autocast, fused
AdamW, sdpa) over 8 conversations padded to the longest.

MFU = real tokens/s x FLOPs per token / the bf16 matmul rate measured here (8192^3, median of 10). FLOPs per
token = 6 x (parameters in matmuls) + 12 x layers x hidden x (mean causal context of a real token): the useful
work only, so skipped padding and cross-sample attention blocks count for nothing. Targets: MFU >= 50% and
>= 3x the padded loop's real tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SIZES = {
    "1b": {"hidden_size": 2048, "num_layers": 20, "num_heads": 16},
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4},
}
LLAMA2_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
# The ZeRO-3 offload row's model: Llama-2-7B's shape; with --size tiny, a tiny untied Llama (CPU check).
BIG = {
    "1b": LLAMA2_7B,
    "tiny": {**LLAMA2_7B, "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 4},
}  # fmt: skip
ATTNS = ("flex_attention", "sdpa", "flash_attention_3", "flash_attention_2", "eager")
LOSSES = ("liger", "chunked", "full")


# --------------------------------------------------------------------------------------------- prepare


def base_overrides(data: Path, seq_len: int, vocab: int) -> list[str]:
    return [
        f"output_dir={data}",
        "data.engine=local",
        f"train.seq_len={seq_len}",
        f"train.model.vocab_size={vocab}",
        "train.scaling.num_workers=1",
    ]


def prepare(data: Path, seq_len: int, vocab: int) -> None:
    """Corpus (the bundled sample), the tokenizer trained on it, and its rows packed to ``seq_len``."""
    from agentflan.config import load_config
    from agentflan.data.pipeline import run_data
    from agentflan.train.data import prepare as pack

    cfg = load_config(REPO / "pipelines/local.yaml", base_overrides(data, seq_len, vocab))
    run_data(cfg)
    packed = pack(cfg)
    (data / "bench.json").write_text(json.dumps({"seq_len": seq_len, "vocab": vocab}))
    print(json.dumps(packed.stats))


# ------------------------------------------------------------------------------------------ one-process parts


def measure_peak() -> float:
    """bf16 matmul TFLOP/s on 8192^3 random matrices: median of 10 after 3 warm-ups."""
    import torch

    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    times = []
    for i in range(13):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / statistics.median(times) / 1e12


def padded_baseline(data: Path, size: str, steps: int, batch: int) -> dict[str, Any]:
    """The plain loop: batches of ``batch`` conversations padded to the longest (seeded sample of the corpus)."""
    import torch

    from agentflan.config import load_config
    from agentflan.train.corpus import corpus_split
    from agentflan.train.model import build_model, tiny_llama_config
    from collate import collate_padded, encode_split  # sibling scripts: benchmarks/ is on sys.path when run
    from train_throughput import measure

    meta = json.loads((data / "bench.json").read_text())
    cfg = load_config(REPO / "pipelines/local.yaml", base_overrides(data, meta["seq_len"], meta["vocab"]))
    tok = load_tokenizer_from(data)
    convs = corpus_split(data, "train")
    samples = [s.truncate(meta["seq_len"]) for s in encode_split(convs, tok, cfg)]
    samples = [s for s in samples if s.n_trained > 0]
    random.Random(0).shuffle(samples)
    used = samples[: (steps + 1) * batch]
    gpu = torch.cuda.is_available()
    device = torch.device("cuda:0" if gpu else "cpu")
    dims = SIZES[size]
    config = tiny_llama_config(
        len(tok), dims["hidden_size"], dims["num_layers"], dims["num_heads"], max(2048, meta["seq_len"]),
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id,
    )  # fmt: skip
    model = build_model(config=config, seed=0, device=device)
    batches = [collate_padded(used[i * batch : (i + 1) * batch], tok.pad_token_id) for i in range(steps + 1)]
    tps, share = measure(model, batches, lr=1e-5, device=device, bf16=gpu)
    timed = used[batch:]  # the first batch is measure()'s warm-up
    context = sum(len(s) * (len(s) + 1) / 2 for s in timed) / sum(len(s) for s in timed)
    peak = torch.cuda.max_memory_allocated() / 2**30 if gpu else None
    return {"tokens_per_s": tps, "real_token_share": share, "mean_context": context, "gpu_peak_mem_gib": peak}


def load_tokenizer_from(data: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(data / "train" / "tokenizer")


def make_7b_checkpoint(path: Path, data: Path, size: str) -> None:
    """A Llama-2-7B-shaped model at random init, saved as a hub checkpoint would be (bf16 safetensors + the
    corpus tokenizer), so the 7B row loads it through from_pretrained under ZeRO-3 like a real checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = load_tokenizer_from(data)
    config = LlamaConfig(
        **BIG[size],
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    assert len(tok) <= config.vocab_size, (len(tok), config.vocab_size)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(path)
    tok.save_pretrained(path)


# ------------------------------------------------------------------------------------------------- rows


def row_overrides(row: str, data: Path, args: argparse.Namespace) -> list[str]:
    """The config of one row: ``ATTN/LOSS[/compile]`` on the sized model, or ``7b``."""
    meta = json.loads((data / "bench.json").read_text())
    gpu = args.gpu
    common = [
        *base_overrides(data, meta["seq_len"], meta["vocab"]),
        f"name=bench-{row.replace('/', '-')}",
        f"train.scaling.use_gpu={str(gpu).lower()}",
        f"train.scaling.resources_per_worker={{CPU: {8 if gpu else 1}{', GPU: 1' if gpu else ''}}}",
        "train.lr=1e-5",
        "train.checkpoint_every=1000000",
        "train.save_final=false",
        f"train.max_steps={args.warmup + args.steps}",
    ]
    if row == "7b":
        return [
            *common,
            f"output_dir={data}-7b",
            f"train.model.name_or_path={data}-7b/checkpoint",
            "train.seq_len=4096",
            "train.micro_batch_size=1",
            "train.global_batch_size=4",
            "train.deepspeed.zero_stage=3",
            "train.deepspeed.offload_optimizer=true",
            "train.deepspeed.overrides={zero_optimization: {offload_optimizer: {pin_memory: false}}}",
            "train.model.gradient_checkpointing=full",
            "train.loss=chunked",
            "train.model.attn_implementation=flex_attention"
            if gpu
            else "train.model.attn_implementation=sdpa",
        ]
    attn, loss, *flags = row.split("/")
    dims = SIZES[args.size]
    return [
        *common,
        *(f"train.model.{k}={v}" for k, v in dims.items()),
        f"train.micro_batch_size={args.micro}",
        f"train.global_batch_size={args.micro * args.accum}",
        "train.deepspeed.zero_stage=2",
        f"train.model.attn_implementation={attn}",
        f"train.loss={loss}",
        f"train.model.compile={str('compile' in flags).lower()}",
    ]


def fit_with_ray(cfg, rows_path: Path, val_path: Path, tokenizer_dir: Path, log: Path) -> None:
    """One Ray Train fit of the real worker loop, one worker (what ``agentflan train`` starts, minus MLflow)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from agentflan.train.loop import train_loop_per_worker

    t = cfg.train
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "rows_dir": str(rows_path),  # the packed shards: the worker reads the rows of its steps
            "val_rows_dir": str(val_path),
            "tokenizer_dir": str(tokenizer_dir),
            "model_dir": str(Path(cfg.output_dir) / "model"),
            "steps_log": str(log),
            "run_id": None,
        },
        scaling_config=ScalingConfig(
            num_workers=1,
            use_gpu=t.scaling.use_gpu,
            resources_per_worker=dict(t.scaling.resources_per_worker),
        ),
        run_config=RunConfig(name=cfg.name, storage_path=str(Path(cfg.output_dir) / "ray")),
    )
    result = trainer.fit()
    if result.error:
        raise result.error


def fit_single(cfg, rows_path: Path, val_path: Path, tokenizer_dir: Path, log: Path) -> None:
    from agentflan.train.loop import train_single_process
    from agentflan.train.shards import PackedShards

    out = log.parent
    train_single_process(cfg, PackedShards(rows_path), PackedShards(val_path), str(tokenizer_dir), out)
    (out / "train" / "steps.jsonl").replace(log)


def run_row(row: str, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    from agentflan.config import load_config
    from agentflan.train.data import prepare as pack

    cfg = load_config(REPO / "pipelines/local.yaml", row_overrides(row, data, args))
    out = Path(cfg.output_dir)
    if row == "7b" and not (out / "checkpoint" / "config.json").exists():
        import shutil

        shutil.copytree(data, out, ignore=shutil.ignore_patterns("train", "runs", "*-7b"), dirs_exist_ok=True)
        _subprocess("checkpoint", data, ["--path", str(out / "checkpoint"), "--size", args.size])
    packed = pack(cfg)  # reused when the packed rows match (packing_key)
    log = out / "runs" / cfg.name / "steps.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    fit = fit_with_ray if args.engine == "ray" else fit_single
    t0 = time.time()
    fit(cfg, packed.train, packed.validation, packed.tokenizer_dir, log)
    steps = [json.loads(x) for x in log.read_text().splitlines()]
    timed = steps[args.warmup :]
    real = sum(s["tokens_per_s"] * s["step_time_s"] for s in timed)
    seconds = sum(s["step_time_s"] for s in timed)
    return {
        "row": row,
        "tokens_per_s": real / seconds,
        "real_token_share": statistics.mean(s["real_token_share"] for s in timed),
        "step_time_s": seconds / len(timed),
        "data_wait_s": statistics.mean(s["data_wait_s"] for s in timed),
        "gpu_peak_mem_gib": max((s.get("gpu_peak_mem_gib") or 0) for s in steps) or None,
        "loss_first_last": [steps[0]["loss"], steps[-1]["loss"]],
        "wall_s": time.time() - t0,
        "model": _model_shape(cfg, packed.tokenizer_dir),
        "mean_context": _mean_context(packed.train),
    }


def _model_shape(cfg, tokenizer_dir: Path) -> dict[str, Any]:
    """Parameters in matmuls (the input embedding is a lookup unless tied to the head), layers, hidden."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from agentflan.train.model import tiny_llama_config

    m = cfg.train.model
    if m.name_or_path:
        config = AutoConfig.from_pretrained(m.name_or_path)
    else:
        tok = load_tokenizer_from(Path(cfg.output_dir))
        config = tiny_llama_config(len(tok), m.hidden_size, m.num_layers, m.num_heads)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    lookup = 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size
    return {
        "params": total,
        "matmul_params": total - lookup,
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
    }


def _mean_context(rows_path: Path) -> float:
    """Mean causal context of a real token (its position in its sample + 1), over the packed rows."""
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(rows_path, columns=["position_ids", "n_real"])
    total = count = 0
    for positions, n_real in zip(
        table.column("position_ids").to_pylist(), table.column("n_real").to_pylist(), strict=True
    ):
        real = np.asarray(positions[:n_real], dtype=np.int64) + 1
        total, count = total + int(real.sum()), count + len(real)
    return total / count


def flops_per_token(shape: dict[str, Any], mean_context: float) -> float:
    return 6 * shape["matmul_params"] + 12 * shape["layers"] * shape["hidden"] * mean_context


def skipped_rows(args: argparse.Namespace, seq_len: int) -> dict[str, str]:
    """Rows that cannot run here, with the reason (they still get a line in the table)."""
    import importlib.util

    skipped = {}
    for attn, package in (("flash_attention_3", "flash_attn_interface"), ("flash_attention_2", "flash_attn")):
        if not importlib.util.find_spec(package):
            skipped[attn] = f"not installed ({package})"
    if args.gpu and args.size == "1b":
        dims = SIZES[args.size]
        gib = args.micro * dims["num_heads"] * seq_len**2 * 2 * dims["num_layers"] / 2**30
        skipped["eager"] = (
            f"not run: eager keeps B x heads x L x L bf16 attention probabilities for backward, "
            f"{gib:.0f} GiB at L={seq_len}"
        )
    if not args.gpu:
        skipped["liger"] = "needs a GPU"
        skipped["flex_attention"] = "no backward on CPU"
    return skipped


def default_rows(args: argparse.Namespace, skipped: dict[str, str]) -> list[str]:
    rows = [f"{a}/{loss}" for a in ATTNS for loss in LOSSES]
    rows += [f"{a}/{loss}/compile" for a in ("flex_attention",) for loss in ("liger", "chunked")]
    return [r for r in rows if not any(part in skipped for part in r.split("/"))]


# ------------------------------------------------------------------------------------------------- driver


def _subprocess(kind: str, data: Path, extra: list[str]) -> Any:
    """Run one measurement in a fresh process (clean GPU memory; a crash costs one row, not the run)."""
    cmd = [sys.executable, __file__, "one", str(data), "--kind", kind, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> None:
    import torch

    data = args.data.resolve()
    args.gpu = torch.cuda.is_available()
    meta = json.loads((data / "bench.json").read_text())
    card = torch.cuda.get_device_name(0) if args.gpu else "CPU"
    skipped = skipped_rows(args, meta["seq_len"])
    rows = default_rows(args, skipped) if args.rows == "all" else args.rows.split(",")
    results: dict[str, Any] = {"card": card, "args": {k: str(v) for k, v in vars(args).items()}, "rows": []}
    deadline = time.time() + args.budget_s

    if args.gpu:
        results["peak_tflops"] = _subprocess("peak", data, [])
        print(f"bf16 matmul peak: {results['peak_tflops']:.0f} TFLOP/s", flush=True)
    else:
        results["peak_tflops"] = args.peak_tflops
    if any(r != "7b" for r in rows):
        try:
            results["padded"] = _subprocess(
                "padded", data, ["--size", args.size, "--steps", str(args.steps), "--batch", str(args.batch)]
            )
            print(f"padded baseline: {results['padded']}", flush=True)
        except RuntimeError as e:
            results["padded"] = {"error": str(e)[-1500:]}
            print(e, flush=True)

    if args.engine == "ray":
        import ray

        ray.init(
            num_cpus=os.cpu_count(),
            num_gpus=1 if args.gpu else 0,
            include_dashboard=False,
            object_store_memory=2 * 2**30,
            log_to_driver=args.verbose,
        )
    for row in rows:
        if time.time() > deadline:
            results["rows"].append({"row": row, "error": "not run: --budget-s spent"})
            continue
        print(f"row {row} ...", flush=True)
        try:
            if args.engine == "ray":
                res = run_row(row, data, args)
            else:  # in a fresh process: the rows share no GPU memory, compile cache or process group
                res = _subprocess("row", data, ["--row", row, "--args", json.dumps(vars(args), default=str)])
        except Exception as e:  # one row's failure is a line in the table, not the end of the run
            res = {"row": row, "error": "".join(traceback.format_exception_only(type(e), e))[-1500:]}
        print(json.dumps(res), flush=True)
        results["rows"].append(res)
        if args.out:
            args.out.write_text(json.dumps(results, indent=2))
    results["skipped"] = skipped
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(table(results))


def table(results: dict[str, Any]) -> str:
    peak = results["peak_tflops"] * 1e12
    padded = results.get("padded", {})
    lines = [
        f"{results['card']}; bf16 matmul peak measured in this run: {results['peak_tflops']:.0f} TFLOP/s",
        "",
        "| setup | real tokens/s | real-token share | MFU | vs padded | step s | data wait s | peak GPU GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = padded.get("tokens_per_s")
    shape = next((r["model"] for r in results["rows"] if "model" in r and r["row"] != "7b"), None)
    if base and shape:
        mfu = base * flops_per_token(shape, padded["mean_context"]) / peak
        mem = padded.get("gpu_peak_mem_gib")
        lines.append(
            f"| plain HF loop, sdpa, padded to the longest | {base:,.0f} | {padded['real_token_share']:.0%} | "
            f"{mfu:.1%} | 1.00x | - | - | {mem:.1f} |"
            if mem
            else f"| plain HF loop, sdpa, padded | {base:,.0f} | {padded['real_token_share']:.0%} | {mfu:.1%} | 1.00x | | | |"
        )
    elif "error" in padded:
        lines.append(
            f"| plain HF loop, padded | failed: {padded['error'].splitlines()[-1][:120]} | | | | | | |"
        )
    for r in results["rows"]:
        if "error" in r:
            lines.append(f"| {r['row']} | failed: {r['error'].strip().splitlines()[-1][:160]} | | | | | | |")
            continue
        mfu = r["tokens_per_s"] * flops_per_token(r["model"], r["mean_context"]) / peak
        vs = f"{r['tokens_per_s'] / base:.2f}x" if base and r["row"] != "7b" else "-"
        mem = f"{r['gpu_peak_mem_gib']:.1f}" if r.get("gpu_peak_mem_gib") else "-"
        lines.append(
            f"| {r['row']} | {r['tokens_per_s']:,.0f} | {r['real_token_share']:.0%} | {mfu:.1%} | {vs} | "
            f"{r['step_time_s']:.2f} | {r['data_wait_s']:.4f} | {mem} |"
        )
    for name, why in results.get("skipped", {}).items():
        lines.append(f"| {name} | {why} | | | | | | |")
    return "\n".join(lines)


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
    r.add_argument("--size", choices=sorted(SIZES), default="1b")
    r.add_argument("--engine", choices=["ray", "single"], default="ray")
    r.add_argument("--steps", type=int, default=5, help="timed optimizer steps per row")
    r.add_argument("--warmup", type=int, default=2, help="optimizer steps before timing (compile, autotune)")
    r.add_argument("--micro", type=int, default=2, help="packed rows per micro-batch")
    r.add_argument("--accum", type=int, default=4, help="micro-batches per optimizer step")
    r.add_argument("--batch", type=int, default=8, help="conversations per padded batch (baseline)")
    r.add_argument("--peak-tflops", type=float, default=1.0, help="used only without a GPU")
    r.add_argument("--budget-s", type=float, default=1e9, help="start no row after this many seconds")
    r.add_argument("--out", type=Path)
    r.add_argument("--verbose", action="store_true", help="stream the Ray workers' logs")
    o = sub.add_parser("one")  # internal: one measurement in this process, a JSON line on stdout
    o.add_argument("data", type=Path)
    o.add_argument("--kind", choices=["peak", "padded", "checkpoint", "row"], required=True)
    o.add_argument("--size", default="1b")
    o.add_argument("--steps", type=int, default=5)
    o.add_argument("--batch", type=int, default=8)
    o.add_argument("--path", type=Path)
    o.add_argument("--row")
    o.add_argument("--args", help="the run's arguments, as JSON")
    args = ap.parse_args()
    if args.command == "prepare":
        prepare(args.data.resolve(), args.seq_len, args.vocab)
    elif args.command == "run":
        run(args)
    elif args.kind == "peak":
        print(json.dumps(measure_peak()))
    elif args.kind == "row":
        run_args = argparse.Namespace(**json.loads(args.args))
        print(json.dumps(run_row(args.row, args.data.resolve(), run_args)))
    elif args.kind == "padded":
        print(json.dumps(padded_baseline(args.data, args.size, args.steps, args.batch)))
    else:
        make_7b_checkpoint(args.path, args.data, args.size)
        print(json.dumps(str(args.path)))


if __name__ == "__main__":
    main()
