"""Benchmark: our trainer (Ray Train, one worker, DeepSpeed ZeRO-2, bf16, packed rows) against a plain padded
HF training loop of the same model, in the same run. Meant for the lent GPU machine (see
../shared/gpu/README.md for carrying ray and deepspeed there); ``--size tiny`` runs it on a CPU.

    python benchmarks/gpu_train.py                       # ~1B Llama, random init, on cuda:0
    python benchmarks/gpu_train.py --size tiny --steps 3 # the same path on a CPU, in a minute

Prints real tokens/s (padding not counted), the real-token share and MFU (model FLOPs utilisation: 6 x
parameters x tokens, plus the attention term, over the card's peak bf16 matmul rate; pass --peak-tflops
for your card, default 794 = measured on an H200). Targets: >= 3x the padded loop and MFU >= 50%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from agentflan.config import load_config
from agentflan.data.pipeline import run_data
from agentflan.train.data import corpus_split, encode_split, load_tokenizer
from agentflan.train.model import build_model, tiny_llama_config
from agentflan.train.packing import collate_padded
from train_throughput import measure  # a sibling script: benchmarks/ is on sys.path when run

REPO = Path(__file__).resolve().parents[1]
SIZES = {
    "1b": {"hidden_size": 2048, "num_layers": 20, "num_heads": 16},
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4},
}


def flops_per_token(n_params: int, layers: int, hidden: int, mean_context: float) -> float:
    """Training FLOPs per token: 6N for the matmuls with parameters, plus causal attention scores."""
    return 6 * n_params + 6 * layers * hidden * mean_context


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="1b")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seq-len", type=int, default=8192)
    ap.add_argument("--rows", type=int, default=2, help="packed rows per step (our trainer)")
    ap.add_argument("--batch", type=int, default=8, help="conversations per padded batch (baseline)")
    ap.add_argument("--peak-tflops", type=float, default=794.0)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()

    gpu = torch.cuda.is_available()
    device = torch.device("cuda:0" if gpu else "cpu")
    size = SIZES[args.size]
    tmp = Path(tempfile.mkdtemp(prefix="agentflan-gpu-bench-"))
    overrides = [
        f"output_dir={tmp}",
        "data.engine=local",
        f"train.seq_len={args.seq_len}",
        f"train.max_steps={args.steps + 2}",
        f"train.global_batch_size={args.rows}",
        f"train.micro_batch_size={args.rows}",
        "train.scaling.num_workers=1",
        f"train.scaling.use_gpu={str(gpu).lower()}",
        "train.deepspeed.zero_stage=2",
        "train.lr=1e-5",
        f"train.checkpoint_every={args.steps + 10}",
        "train.model.vocab_size=32000",
        *(f"train.model.{k}={v}" for k, v in size.items()),
    ]
    if gpu:
        overrides.append("train.scaling.resources_per_worker={CPU: 4}")
    cfg = load_config(REPO / "pipelines/local.yaml", overrides)
    run_data(cfg)

    # Baseline: a plain HF loop over conversations padded to the longest in each batch.
    convs = corpus_split(tmp, "train")
    tok = load_tokenizer(cfg, [m["content"] for c in convs for m in c], tmp / "tok")
    samples = [s.truncate(args.seq_len) for s in encode_split(convs, tok, cfg)]
    samples = [s for s in samples if s.n_trained > 0]
    mean_len = statistics.mean(len(s) for s in samples)
    config = tiny_llama_config(
        len(tok),
        size["hidden_size"],
        size["num_layers"],
        size["num_heads"],
        max(2048, args.seq_len),
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    model = build_model(config=config, seed=0).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    pad = tok.pad_token_id
    batches = [
        collate_padded(samples[i * args.batch : (i + 1) * args.batch], pad) for i in range(args.steps + 1)
    ]
    padded_tps, padded_share = measure(model, batches, lr=1e-5, device=device, bf16=gpu)
    del model
    if gpu:
        torch.cuda.empty_cache()

    # Ours: the real recipe (Ray Train + DeepSpeed ZeRO-2, bf16 on GPU, packed rows).
    from agentflan.train.recipe import run_train

    run_train(cfg)
    steps = [json.loads(x) for x in (tmp / "train/steps.jsonl").read_text().splitlines()][2:]  # skip warm-up
    ours_tps = statistics.mean(s["tokens_per_s"] for s in steps)
    ours_share = statistics.mean(s["real_token_share"] for s in steps)

    fpt = flops_per_token(n_params, size["num_layers"], size["hidden_size"], mean_len / 2)
    peak = args.peak_tflops * 1e12
    card = torch.cuda.get_device_name(0) if gpu else "CPU"
    rows = [
        ("plain loop, padded to the longest", padded_tps, padded_share),
        ("agentflan: Ray Train + DeepSpeed ZeRO-2, packed", ours_tps, ours_share),
    ]
    print(
        f"{card}; {n_params / 1e9:.2f}B params; seq_len {args.seq_len}; mean sample {mean_len:.0f} tokens\n"
    )
    print("| setup | real tokens/s | real-token share | MFU | vs padded |")
    print("|---|---|---|---|---|")
    for name, tps, share in rows:
        print(f"| {name} | {tps:,.0f} | {share:.0%} | {tps * fpt / peak:.1%} | {tps / padded_tps:.2f}x |")
    if args.out:
        args.out.write_text(json.dumps({"card": card, "params": n_params, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
