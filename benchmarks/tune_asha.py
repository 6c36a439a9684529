"""Benchmark: ASHA early stopping against running every trial of the same grid to the end.

Runs the study of ``tune_spaces/asha_vs_grid.yaml`` (lr x negative share, objective: validation loss) twice
on one Ray instance, with the same corpus, seeds and trial settings: once with ``scheduler.kind=none`` (every
trial trains all its steps: the baseline) and once with the space's ASHA scheduler. Prints, per arm, the
trials, how many ASHA stopped, the optimizer steps trained in all (the compute), the wall time, and the
configuration each picked with its validation loss.

    python benchmarks/tune_asha.py [--steps 24] [--out /tmp/asha_bench]

The corpus is the bundled sample's FireAct + FastChat files (small, so trials are short); the model is the
embedded default's tiny Llama. On 2 CPU cores a trial's fixed cost (starting the trainer's workers, ~30 s)
is large next to its steps, so the wall-time saving is smaller than the step saving; at GPU scale the steps
dominate.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from agentflan.config import load_config
from agentflan.tune.space import SchedulerSpec, load_space
from agentflan.tune.study import run_study

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "platform/agentflan/sample_data"


def trained_steps(study_dir: Path) -> int:
    total = 0
    for log in study_dir.glob("trials/*/train/steps.jsonl"):
        total += len([line for line in log.read_text().splitlines() if line])
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=24, help="optimizer steps per trial")
    ap.add_argument("--out", default="/tmp/agentflan_asha_bench")
    ap.add_argument("--evaluate", action="store_true", help="also run Agent-H/tool-use eval per trial")
    ap.add_argument("--validate-only", action="store_true", help="check the config and space, run nothing")
    args = ap.parse_args()

    overrides = [
        f"data.inputs=[{{path: {SAMPLE}/react/fireact_hotpotqa.jsonl, source: react}}, "
        f"{{path: {SAMPLE}/general/fastchat_dummy_conversation.json, source: sharegpt, kind: general}}]",
        "data.engine=local",
        "train.seq_len=512",
        "train.global_batch_size=4",
        "train.micro_batch_size=1",
        f"train.max_steps={args.steps}",
        f"train.checkpoint_every={args.steps}",
        f"tune.evaluate={str(args.evaluate).lower()}",
    ]
    rows = []
    for arm in ("full grid (no early stopping)", "ASHA"):
        out = Path(args.out) / ("grid" if arm.startswith("full") else "asha")
        cfg = load_config("pipelines/local.yaml", [*overrides, f"output_dir={out}"])
        space = load_space(REPO / "tune_spaces/asha_vs_grid.yaml", cfg)
        if arm.startswith("full"):
            space = space.model_copy(update={"scheduler": SchedulerSpec(kind="none")})
        if args.validate_only:
            print(f"{arm}: {len(space.params)} params, scheduler {space.scheduler.kind}: valid")
            continue
        t0 = time.time()
        summary = run_study(cfg, space)
        wall = time.time() - t0
        best = summary["best"] or {}
        rows.append(
            {
                "arm": arm,
                "trials": len(summary["rows"]),
                "stopped early": sum(r["status"] == "stopped early" for r in summary["rows"]),
                "steps trained": trained_steps(Path(summary["study_dir"])),
                "wall s": round(wall, 1),
                "best": ", ".join(
                    f"{k.removeprefix('param.')}={v}" for k, v in best.items() if k.startswith("param.")
                ),
                "best val_loss": round(best.get("val_loss", float("nan")), 4),
            }
        )
    if not rows:
        return
    headers = list(rows[0])
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for r in rows:
        print("| " + " | ".join(str(r[h]) for h in headers) + " |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
