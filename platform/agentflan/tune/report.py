"""A study's results: one row per trial (CSV, markdown), the paper-style table, and PNG plots.

The paper-style table has one row per *arm* (a trial's parameter values except ``seed``) and, per metric
column, the mean and spread over the arm's seeds: ``0.912 ± 0.031 (3)`` is mean ± sample standard
deviation over 3 trials, followed by the 95% t-interval of the mean. Trials ASHA stopped early have no evaluation; they are listed in the trial table
and left out of the arm means of evaluation metrics.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

from agentflan.eval.stats import t_interval
from agentflan.tune.space import SearchSpace, arm_label

COMPLETED, STOPPED, ERROR = "completed", "stopped early", "error"


def trial_row(trial_id: str, config: dict[str, Any], metrics: dict[str, Any], error: bool) -> dict[str, Any]:
    status = ERROR if error else COMPLETED if "trial_seconds" in metrics else STOPPED
    row: dict[str, Any] = {"trial": trial_id, "status": status}
    row.update({f"param.{k}": arm_label(v) for k, v in sorted(config.items())})
    row.update(
        {k: v for k, v in sorted(metrics.items()) if isinstance(v, (int, float)) and not isinstance(v, bool)}
    )
    return row


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return "-" if v is None else str(v)


def markdown(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def trials_markdown(rows: list[dict[str, Any]], space: SearchSpace) -> str:
    metrics = [space.objective.metric, *space.report.columns]
    metrics = list(dict.fromkeys(m for m in [*metrics, "val_loss", "step", "trial_seconds"]))
    params = [f"param.{p}" for p in space.params]
    return markdown(
        ["trial", "status", *params, *metrics],
        [[r.get(c) for c in ["trial", "status", *params, *metrics]] for r in rows],
    )


def mean_spread(values: list[float]) -> str:
    """``mean ± sd [95% t-interval of the mean] (trials)``; the interval needs two trials or more."""
    if not values:
        return "-"
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    interval = t_interval(values)
    ci = f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
    return f"{mean:.3f} ± {spread:.3f}{ci} ({len(values)})"


def arms(rows: list[dict[str, Any]], space: SearchSpace) -> dict[tuple[str, ...], list[dict[str, Any]]]:
    """Trials grouped by their values of every parameter but the seed, in the space's order."""
    keys = [p for p in space.params if p != "seed"]
    order = {
        p: [arm_label(v) for v in d.values] for p, d in space.params.items() if d.kind in ("grid", "choice")
    }
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(str(r.get(f"param.{k}")) for k in keys), []).append(r)

    def rank(arm: tuple[str, ...]) -> tuple[Any, ...]:
        return tuple(
            order[k].index(v) if v in order.get(k, []) else v for k, v in zip(keys, arm, strict=True)
        )

    return dict(sorted(groups.items(), key=lambda kv: rank(kv[0])))


def paper_table(rows: list[dict[str, Any]], space: SearchSpace) -> str:
    """Mean ± spread of each report column per arm, over the arm's trials that reported it."""
    columns = space.report.columns or {space.objective.metric: space.objective.metric}
    keys = [p for p in space.params if p != "seed"] or ["trials"]
    body = []
    for arm, trials in arms(rows, space).items():
        cells = [
            mean_spread([t[m] for t in trials if isinstance(t.get(m), (int, float)) and not math.isnan(t[m])])
            for m in columns
        ]
        body.append([*(arm or ("all",)), *cells])
    title = f"### {space.report.title or space.name}\n\n" if space.report.title or space.name else ""
    note = (
        "\n\nmean ± sample standard deviation [95% t-interval of the mean] (trials) over seeds; with few "
        "seeds the interval is wide: compare arms by it, not by the means."
    )
    return title + markdown([*keys, *columns.values()], body) + note


def best(rows: list[dict[str, Any]], space: SearchSpace) -> dict[str, Any] | None:
    metric, sign = space.objective.metric, (1 if space.objective.mode == "min" else -1)
    scored = [r for r in rows if isinstance(r.get(metric), (int, float)) and not math.isnan(r[metric])]
    return min(scored, key=lambda r: sign * r[metric]) if scored else None


def plots(rows: list[dict[str, Any]], space: SearchSpace, study_dir: Path) -> list[Path]:
    """objective_vs_<param>.png per parameter and loss_curves.png (training loss and val_loss per trial)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = study_dir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    metric = space.objective.metric
    made = []
    for p in space.params:
        pts = [(r.get(f"param.{p}"), r[metric]) for r in rows if isinstance(r.get(metric), (int, float))]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        numeric = all(_is_number(x) for x, _ in pts)
        if numeric:
            ax.scatter([float(x) for x, _ in pts], [y for _, y in pts])
        else:
            labels = list(dict.fromkeys(str(x) for x, _ in pts))
            ax.scatter([labels.index(str(x)) for x, _ in pts], [y for _, y in pts])
            ax.set_xticks(range(len(labels)), labels, rotation=15, fontsize=8)
        ax.set_xlabel(p)
        ax.set_ylabel(metric)
        ax.set_title(f"{space.name}: {metric} against {p}", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"objective_vs_{p}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(path)
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        log = study_dir / "trials" / r["trial"] / "train" / "steps.jsonl"
        if not log.exists():
            continue
        steps = [json.loads(line) for line in log.read_text().splitlines() if line]
        (line,) = ax.plot([s["step"] for s in steps], [s["loss"] for s in steps], lw=0.8, label=r["trial"])
        val = [(s["step"], s["val_loss"]) for s in steps if "val_loss" in s]
        if val:
            ax.plot(*zip(*val, strict=True), "o--", color=line.get_color(), ms=3, lw=0.8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (lines: train, dashed: validation)")
    ax.set_title(f"{space.name}: loss curves", fontsize=9)
    if len(rows) <= 12:
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = out_dir / "loss_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [*made, path]


def _is_number(x: Any) -> bool:
    try:
        float(x)
    except (TypeError, ValueError):
        return False
    return True
