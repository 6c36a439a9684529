"""Benchmark: padded against packed training throughput on the real corpus length mix (CPU, tiny model).

Builds the corpus from the bundled sample, trains the corpus tokenizer, then runs the same number of
optimizer steps of the same tiny Llama twice in one process: once on batches of conversations padded to the
longest (the plain baseline), once on packed rows with per-sample position ids. Prints real tokens/s (padding
not counted) and the real-token share of each.

    python benchmarks/train_throughput.py [--steps 8] [--seq-len 1024] [--batch 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from agentflan.config import load_config
from agentflan.data.pipeline import run_data
from agentflan.train.corpus import corpus_split
from agentflan.train.loss import weighted_token_loss
from agentflan.train.model import build_model, model_inputs, tiny_llama_config
from agentflan.train.packing import pack_samples
from agentflan.train.tokenizer import load_tokenizer
from collate import (  # a sibling script: benchmarks/ is on sys.path
    collate_packed,
    collate_padded,
    encode_split,
)

REPO = Path(__file__).resolve().parents[1]


def measure(
    model, batches, lr: float = 1e-3, device: torch.device | None = None, bf16: bool = False
) -> tuple[float, float]:
    """Real tokens/s and real-token share over the batches (one optimizer step each; the first is warm-up).

    Shared with ``gpu_train.py`` for its padded baseline (there on cuda, with bf16 autocast)."""
    device = device or torch.device("cpu")
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=cuda)
    real = slots = 0
    elapsed = 0.0
    for i, cpu_batch in enumerate(batches):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in cpu_batch.items()}
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(**model_inputs(batch)).logits
        loss_sum, n = weighted_token_loss(logits, batch["labels"], batch["weights"])
        (loss_sum / n.clamp(min=1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i == 0:
            continue
        elapsed += time.perf_counter() - t0
        real += int(batch["real_mask"].sum())
        slots += batch["real_mask"].numel()
    return real / elapsed, real / slots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument(
        "--batch", type=int, default=4, help="conversations per padded batch / rows per packed batch"
    )
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            REPO / "pipelines/local.yaml",
            [f"output_dir={tmp}", "data.engine=local", f"train.seq_len={args.seq_len}"],
        )
        run_data(cfg)
        convs = corpus_split(Path(tmp), "train")
        tok = load_tokenizer(cfg, [t for c in convs for t in c.texts()], Path(tmp) / "tok")
    samples = [s.truncate(args.seq_len) for s in encode_split(convs, tok, cfg)]
    samples = [s for s in samples if s.n_trained > 0]
    config = tiny_llama_config(
        len(tok), 128, 4, 4, max(2048, args.seq_len), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    )

    n_padded = (args.steps + 1) * args.batch
    padded = [
        collate_padded(samples[i : i + args.batch], tok.pad_token_id) for i in range(0, n_padded, args.batch)
    ]
    rows, _ = pack_samples(samples, args.seq_len, tok.pad_token_id)
    packed = [
        collate_packed(rows[i : i + args.batch]) for i in range(0, (args.steps + 1) * args.batch, args.batch)
    ]

    results = {}
    for name, batches in (("padded to longest", padded), ("packed", packed)):
        model = build_model(config=config, seed=0)
        results[name] = measure(model, batches)
    base = results["padded to longest"][0]
    print(
        f"tiny Llama ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params), {args.threads} threads, "
        f"seq_len {args.seq_len}, {args.batch} per batch, {args.steps} timed steps\n"
    )
    print("| layout | real tokens/s | real-token share | speed-up |")
    print("|---|---|---|---|")
    for name, (tps, share) in results.items():
        print(f"| {name} | {tps:,.0f} | {share:.0%} | {tps / base:.2f}x |")


if __name__ == "__main__":
    main()
