"""Benchmark: eval generation with and without the KV cache, on the embedded default's eval prompts.

The exported model's config used to say ``use_cache: false`` (training turns the cache off), so ``generate``
recomputed every prompt token at every new token. Both arms run here in one process on the same model and
prompts (Agent-H + tool-use sets of ``pipelines/local.yaml``), greedy, ``eval.max_new_tokens``:

    python benchmarks/eval_generation.py MODEL_DIR [--output-dir DIR]   # DIR: the run that trained MODEL_DIR
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--output-dir", type=Path, help="the run's output_dir (its corpus is excluded from eval)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (an eval actor gets 1 CPU)")
    ap.add_argument("--limit", type=int, help="only the first N prompts (a quick check)")
    args = ap.parse_args()

    import torch

    from agentflan.config import load_config
    from agentflan.data.pipeline import read_corpus
    from agentflan.eval.agent_h import build_agent_h
    from agentflan.eval.sources import EvalSources, training_queries
    from agentflan.eval.tool_calls import build_tool_use_set
    from agentflan.generation import ChatGenerator

    torch.set_num_threads(args.threads)
    cfg = load_config(REPO / "pipelines/local.yaml")
    e = cfg.eval
    corpus = read_corpus(args.output_dir) if args.output_dir else []
    exclude = training_queries(corpus)
    sources = EvalSources.from_dir(e.data_dir)
    agent_h = build_agent_h(sources, cfg.seed, exclude_queries=exclude, max_per_case=e.max_per_case,
                            max_hotpot=e.max_hotpot, output_format=e.output_format)  # fmt: skip
    tool_use = build_tool_use_set(sources, cfg.seed, exclude_queries=exclude,
                                  max_per_source=e.max_tool_use_per_source, output_format=e.output_format)  # fmt: skip
    prompts = [s.messages for s in [*agent_h.samples, *tool_use.samples]][: args.limit]

    gen = ChatGenerator(str(args.model), e.sampling.max_new_tokens, e.batch_size, "cpu")
    results = {}
    for use_cache in (True, False):
        gen.model.generation_config.use_cache = use_cache
        t0 = time.perf_counter()
        replies = gen.generate(prompts)
        results[use_cache] = (time.perf_counter() - t0, replies)
    same = results[True][1] == results[False][1]
    print(
        f"{len(prompts)} prompts, max_new_tokens {e.sampling.max_new_tokens}, batch {e.batch_size}, {args.threads} thread(s)\n"
    )
    print("| KV cache | seconds | replies/s |")
    print("|---|---|---|")
    for use_cache in (False, True):
        secs = results[use_cache][0]
        print(f"| {'on' if use_cache else 'off'} | {secs:.1f} | {len(prompts) / secs:.1f} |")
    print(f"\nsame greedy replies with and without the cache: {same}")


if __name__ == "__main__":
    main()
