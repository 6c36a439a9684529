"""An ablation study's tables from its finished trials: the paper-style table, and each arm against a reference
arm, paired by seed.

A study writes ``results.md`` when it ends, with the columns its space named then. This script reads the
trials' ``trial.json`` (every metric a trial reported) again, so a column added to the space later (a rollout
score, a second general task) is filled without training anything. It also prints what the per-arm table
cannot show: each arm's difference from the reference arm on the *same* seed (the same Agent-H draw, the same
held-out split), with the 95% t-interval of the mean difference over seeds. With 3 seeds the t quantile is
4.30: a difference is told apart from zero only when it is about 2.5 times its spread over seeds.

    python benchmarks/ablation_table.py STUDY_DIR [STUDY_DIR ...] SPACE.yaml [--reference LABEL]

Several study directories are read as one study: an arm run later, in a space of its own with the same
study name, joins the arms run before it.

    python benchmarks/ablation_table.py outputs/ablations/negatives/tune/ablation_negatives \\
        tune_spaces/ablation_negatives.yaml --reference "w/o negatives"

The paths of a study's trials also name the study directory: ``<output_dir>/tune/<study name>``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from agentflan.config import load_config
from agentflan.eval.stats import t_interval
from agentflan.tune import report
from agentflan.tune.space import arm_label, load_space

REPO = Path(__file__).resolve().parents[1]


def trial_rows(studies: list[Path]) -> list[dict]:
    """One row per finished trial, as the study's own table builds it (``tune.report.trial_row``)."""
    rows = []
    for path in (p for study in studies for p in sorted(study.glob("trials/*/trial.json"))):
        t = json.loads(path.read_text())
        rows.append(report.trial_row(t["trial_id"], t["config"], t["metrics"], error=False))
    return rows


def paired(rows: list[dict], columns: dict[str, str], reference: str) -> str:
    """Mean difference from the reference arm over the seeds both ran, with its 95% t-interval."""
    by_arm: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_arm.setdefault(r["param.arm"], {})[r["param.seed"]] = r
    if reference not in by_arm:
        raise SystemExit(f"--reference {reference!r}: no such arm (arms: {sorted(by_arm)})")
    lines = [
        "| arm − " + reference + " | " + " | ".join(columns.values()) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for arm, seeds in by_arm.items():
        if arm == reference:
            continue
        cells = []
        for metric in columns:
            diffs = [
                seeds[s][metric] - by_arm[reference][s][metric]
                for s in sorted(seeds)
                if s in by_arm[reference]
                and isinstance(seeds[s].get(metric), float | int)
                and isinstance(by_arm[reference][s].get(metric), float | int)
                and not math.isnan(seeds[s][metric])
            ]
            interval = t_interval(diffs)
            if not diffs:
                cells.append("-")
            elif interval is None:
                cells.append(f"{diffs[0]:+.3f} (1)")
            else:
                mean = sum(diffs) / len(diffs)
                apart = "" if interval[0] <= 0 <= interval[1] else " *"
                cells.append(f"{mean:+.3f} [{interval[0]:+.3f}, {interval[1]:+.3f}]{apart}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + (
        "\n\nmean difference over seeds [95% t-interval]; * where the interval excludes 0 (the arms are told apart)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", type=Path, nargs="+", help="the study's directories, then its space")
    parser.add_argument("--reference", help="the arm the others are compared with (default: the first)")
    args = parser.parse_args()
    *studies, space_path = args.paths
    space = load_space(space_path, load_config(REPO / "pipelines/local.yaml"))
    rows = trial_rows(studies)
    if not studies or not rows:
        raise SystemExit(
            f"{studies}: no trials/*/trial.json (give finished studies' directories, then the space)"
        )
    reference = args.reference or arm_label(space.params["arm"].grid[0])
    print(report.paper_table(rows, space))
    print()
    print(paired(rows, space.report.columns, reference))


if __name__ == "__main__":
    main()
