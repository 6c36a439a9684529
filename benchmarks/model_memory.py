"""Benchmark: per-worker host memory while a pretrained checkpoint is loaded and trained, ZeRO-2 against ZeRO-3.

A random-init Llama of ~0.55B parameters is saved to disk as a hub checkpoint (bf16 safetensors and a
tokenizer), then trained for one optimizer step by the real worker code (``train.loop.setup`` and
``train_step``) on 2 CPU Ray Train workers, once with ZeRO-2 and once with ZeRO-3, in the same run. Each worker
samples its own memory every 20 ms on a thread: private anonymous memory (tensors and heap: what the model and
optimizer cost it; RSS and USS also count the page cache of the memory-mapped checkpoint it read) and RSS.
Reported per worker as peaks over its baseline (torch, transformers and DeepSpeed imported, no model), in GB:
once the model is built, once DeepSpeed's engine exists (setup), and over the first optimizer step.

    python benchmarks/model_memory.py [--hidden 1536 --layers 16] [--dtype bfloat16]

Target: under ZeRO-3 no worker's peak during model loading exceeds its baseline + 0.6x the full model's size in
its dtype (ZeRO-2 loads the whole model on every rank). The first step adds the optimizer: fp32 master weights,
gradients and Adam's two moments, partitioned over the workers by both stages; the table shows them apart.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def anonymous_bytes() -> int:
    """Private anonymous memory of this process (tensors, heap): what it really holds. Not RSS or USS, which
    also count the pages of the memory-mapped checkpoint it read (clean page cache, dropped under pressure)."""
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Anonymous:"):
                return int(line.split()[1]) * 1024
    return 0


class MemorySampler:
    """Peak anonymous memory and RSS of this process, sampled every 20 ms on a thread; ``mark(name)`` records
    the peaks so far."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak_anon = self.peak_rss = 0
        self.marks: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        self.peak_anon = max(self.peak_anon, anonymous_bytes())
        self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._sample()

    def mark(self, name: str) -> None:
        self._sample()
        self.marks[name] = {"anon_gb": self.peak_anon / 1e9, "rss_gb": self.peak_rss / 1e9}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def worker(config: dict) -> None:
    """One Ray Train worker: baseline, then the real setup (model + engine) and one real step."""
    import deepspeed  # noqa: F401 - imported before the baseline: every worker pays for it
    import pyarrow.parquet as pq
    import ray.train
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from agentflan.config import Config
    from agentflan.train.loop import setup, train_step

    sampler = MemorySampler()
    sampler.mark("baseline")
    cfg = Config.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rows = pq.read_table(config["rows"])
    import agentflan.train.loop as loop

    built = loop.training_model

    def build_and_mark(*args, **kwargs):
        model = built(*args, **kwargs)
        sampler.mark("model")
        return model

    loop.training_model = build_and_mark  # mark the moment the model exists, inside the real setup (benchmark only)
    state = setup(cfg, rows, None, config["tokenizer_dir"], ctx.get_world_rank(), ctx.get_world_size(), 0)
    sampler.mark("setup")
    train_step(state, 0)
    sampler.mark("first step")
    sampler.stop()
    out = Path(config["out"]) / f"rank{ctx.get_world_rank()}.json"
    out.write_text(
        json.dumps(
            {"marks": sampler.marks, "params_local": state.params_local, "params_total": state.params_total}
        )
    )


def make_checkpoint(path: Path, tokenizer_dir: Path, hidden: int, layers: int) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=32000, hidden_size=hidden, intermediate_size=-(-8 * hidden // 3 // 256) * 256,
        num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
        max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    with torch.device("meta"):
        n = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    del model
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=1536)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--stages", default="2,3", help="ZeRO stages to measure")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the workers' environment")
    args = ap.parse_args()

    import pyarrow.parquet as pq
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from agentflan.config import load_config
    from agentflan.data.pipeline import run_data
    from agentflan.train.data import prepare

    work = args.workdir or Path(tempfile.mkdtemp(prefix="agentflan-memory-"))
    base = [f"output_dir={work}/corpus", "data.engine=local", f"train.seq_len={args.seq_len}"]
    cfg0 = load_config(REPO / "pipelines/local.yaml", base)
    run_data(cfg0)
    prepare(cfg0)  # the corpus tokenizer, saved: the checkpoint ships it
    ckpt = work / "checkpoint"
    n_params = make_checkpoint(ckpt, work / "corpus/train/tokenizer", args.hidden, args.layers)
    model_gb = n_params * (2 if args.dtype == "bfloat16" else 4) / 1e9
    print(f"checkpoint: {n_params / 1e9:.2f}B parameters, {model_gb:.2f} GB in {args.dtype}", flush=True)

    env = dict(kv.split("=", 1) for kv in args.env)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    results = {}
    for stage in (int(s) for s in args.stages.split(",")):
        cfg = load_config(
            REPO / "pipelines/local.yaml",
            [*base, f"output_dir={work}/z{stage}", f"train.model.name_or_path={ckpt}", f"train.model.dtype={args.dtype}",
             "train.model.template=chatml", f"train.deepspeed.zero_stage={stage}", "train.micro_batch_size=1",
             "train.global_batch_size=2", "train.max_steps=1", "train.save_final=false"],
        )  # fmt: skip
        import shutil

        shutil.copytree(work / "corpus", work / f"z{stage}", dirs_exist_ok=True)
        packed = prepare(cfg)
        out = work / f"z{stage}" / "memory"
        out.mkdir(exist_ok=True)
        trainer = TorchTrainer(
            worker,
            train_loop_config={
                "cfg": cfg.model_dump(mode="json"),
                "rows": str(packed.train),
                "tokenizer_dir": str(packed.tokenizer_dir),
                "out": str(out),
            },
            scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name=f"memory-z{stage}", storage_path=str(work / "ray")),
        )
        t0 = time.time()
        result = trainer.fit()
        if result.error:
            raise result.error
        results[stage] = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
        print(f"ZeRO-{stage}: {time.time() - t0:.0f} s", flush=True)
        pq.read_table(packed.train)  # keep the import used

    print(f"\n{n_params / 1e9:.2f}B-parameter Llama from disk, {args.dtype} ({model_gb:.2f} GB), 2 CPU workers, "
          f"{os.cpu_count()} cores; GB over the worker's baseline (torch + transformers + DeepSpeed imported)\n")  # fmt: skip
    print("| ZeRO | rank | params held | baseline | model built | setup (engine) | first step | first step, RSS | "
          "model built / model size |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for stage, ranks in results.items():
        for rank, r in enumerate(ranks):
            m = r["marks"]
            over = {k: m[k]["anon_gb"] - m["baseline"]["anon_gb"] for k in ("model", "setup", "first step")}
            rss = m["first step"]["rss_gb"] - m["baseline"]["rss_gb"]
            held = r["params_local"] / r["params_total"]
            print(f"| {stage} | {rank} | {held:.0%} | {m['baseline']['anon_gb']:.2f} | +{over['model']:.2f} | "
                  f"+{over['setup']:.2f} | +{over['first step']:.2f} | +{rss:.2f} | {over['model'] / model_gb:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
