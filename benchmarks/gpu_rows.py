"""The measurements of ``gpu_train.py``, each run in a process of its own: the prepared data, the bf16 matmul
peak, the plain padded loop, the 7B-shaped checkpoint and one row of the sweep (the real worker loop, through
Ray Train or in this process), with the time breakdown and kernel profile that explain a row's number."""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

from gpu_profile import kernel_breakdown, mean_context, profiler_activities

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
PHASES = ("forward_s", "backward_s", "optimizer_s")


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
    from train_throughput import measure  # a sibling script: benchmarks/ is on sys.path when run

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


def row_overrides(row: str, data: Path, args: argparse.Namespace) -> list[str]:
    """The config of one row: ``ATTN/LOSS[/compile]`` on the sized model, or ``7b``.

    Every row runs ``warmup + steps`` optimizer steps, plus one profiled step for rows in this process."""
    meta = json.loads((data / "bench.json").read_text())
    gpu = args.gpu
    profiled = int(row != "7b" and args.engine_of_row == "single" and args.profile)
    common = [
        *base_overrides(data, meta["seq_len"], meta["vocab"]),
        f"name=bench-{row.replace('/', '-')}",
        f"train.scaling.use_gpu={str(gpu).lower()}",
        f"train.scaling.resources_per_worker={{CPU: {8 if gpu else 1}{', GPU: 1' if gpu else ''}}}",
        "train.lr=1e-5",
        "train.checkpoint_every=1000000",
        "train.save_final=false",
    ]
    if row == "7b":
        # DeepSpeed's CPU Adam is a C++ op built on first use (run.sh builds it in the background while the
        # 1B rows run); where that build failed, torch's AdamW steps the offloaded fp32 weights instead.
        adam = "{optimizer: {params: {torch_adam: true}}, " if args.offload_adam == "torch" else "{"
        return [
            *common,
            f"train.max_steps={args.warmup_7b + args.steps_7b}",
            f"output_dir={data}-7b",
            f"train.model.name_or_path={data}-7b/checkpoint",
            "train.seq_len=4096",
            "train.micro_batch_size=1",
            "train.global_batch_size=4",
            "train.deepspeed.zero_stage=3",
            "train.deepspeed.offload_optimizer=true",
            f"train.deepspeed.overrides={adam}zero_optimization: {{offload_optimizer: {{pin_memory: false}}}}}}",
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
        f"train.max_steps={args.warmup + args.steps + profiled}",
        *(f"train.model.{k}={v}" for k, v in dims.items()),
        f"train.micro_batch_size={args.micro}",
        f"train.global_batch_size={args.micro * args.accum}",
        "train.deepspeed.zero_stage=2",
        f"train.model.attn_implementation={attn}",
        f"train.loss={loss}",
        f"train.model.compile={str('compile' in flags).lower()}",
    ]


def fit_with_ray(cfg, rows_path: Path, tokenizer_dir: Path, log: Path, gpu: bool) -> None:
    """One Ray Train fit of the real worker loop, one worker (what ``agentflan train`` starts, minus MLflow and
    validation), on a Ray started here: this process is the row's, so the row owns its Ray."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from agentflan.train.loop import train_loop_per_worker

    ray.init(
        num_cpus=os.cpu_count(),
        num_gpus=1 if gpu else 0,
        include_dashboard=False,
        object_store_memory=2 * 2**30,
    )
    t = cfg.train
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "rows_dir": str(rows_path),  # the packed shards: the worker reads the rows of its steps
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
    ray.shutdown()
    if result.error:
        raise result.error


def fit_single(cfg, rows_path: Path, tokenizer_dir: Path, log: Path, profile: bool) -> dict[str, Any] | None:
    """The same worker loop in this process (setup and train_step of :mod:`agentflan.train.loop`), its last
    step under torch.profiler when ``profile``: the kernel time by kind (attention, matmul, loss, ...)."""
    import torch

    from agentflan.train import loop
    from agentflan.train.shards import PackedShards

    # a process group of one, made as train_single_process makes it (in-process store, no port)
    state = loop.setup(
        cfg, PackedShards(rows_path), None, str(tokenizer_dir), rank=0, world=1, local_rank=0, single_process=True
    )
    kernels = None
    with log.open("w") as f:
        for step in range(state.steps):
            if profile and step + 1 == state.steps:
                with torch.profiler.profile(activities=profiler_activities()) as prof:
                    metrics = loop.train_step(state, step)
                try:  # the profile explains a row; its failure must not lose the row's numbers
                    kernels = kernel_breakdown(prof)
                except Exception as e:  # noqa: BLE001
                    kernels = {"by_kind_s": {}, "top": [], "error": repr(e)[:300]}
            else:
                metrics = loop.train_step(state, step)
            f.write(json.dumps(metrics) + "\n")
    return kernels


def run_row(row: str, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    from agentflan.config import load_config
    from agentflan.train.data import prepare as pack

    cfg = load_config(REPO / "pipelines/local.yaml", row_overrides(row, data, args))
    out = Path(cfg.output_dir)
    t0 = time.time()
    if row == "7b" and not (out / "checkpoint" / "config.json").exists():
        import shutil

        shutil.copytree(data, out, ignore=shutil.ignore_patterns("train", "runs", "*-7b"), dirs_exist_ok=True)
        make_7b_checkpoint(out / "checkpoint", data, args.size)
        _forget_gpu_memory()  # the row's peak memory is the training's, not the checkpoint's
    packed = pack(cfg)  # reused when the packed rows match (packing_key)
    setup_s = time.time() - t0
    log = out / "runs" / cfg.name / "steps.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    t1 = time.time()
    kernels = None
    if args.engine_of_row == "ray":
        fit_with_ray(cfg, packed.train, packed.tokenizer_dir, log, args.gpu)
    else:
        kernels = fit_single(cfg, packed.train, packed.tokenizer_dir, log, args.profile and row != "7b")
    steps = [json.loads(x) for x in log.read_text().splitlines()]
    warmup = args.warmup_7b if row == "7b" else args.warmup
    timed = steps[warmup : warmup + (args.steps_7b if row == "7b" else args.steps)]
    real = sum(s["tokens_per_s"] * s["step_time_s"] for s in timed)
    seconds = sum(s["step_time_s"] for s in timed)
    return {
        "row": row,
        "engine": args.engine_of_row,
        "tokens_per_s": real / seconds,
        "real_token_share": statistics.mean(s["real_token_share"] for s in timed),
        "step_time_s": seconds / len(timed),
        "data_wait_s": statistics.mean(s["data_wait_s"] for s in timed),
        **{p: statistics.mean(s.get(p, 0.0) for s in timed) for p in PHASES},
        "first_step_s": steps[0]["step_time_s"],  # compile, autotune, allocator warm-up
        "gpu_peak_mem_gib": max((s.get("gpu_peak_mem_gib") or 0) for s in steps) or None,
        "loss_first_last": [steps[0]["loss"], steps[-1]["loss"]],
        "kernels": kernels,
        "setup_s": setup_s,
        "fit_s": time.time() - t1,
        "model": _model_shape(cfg, packed.tokenizer_dir),
        "mean_context": mean_context(packed.train),
    }


def _forget_gpu_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


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
