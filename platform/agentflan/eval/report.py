"""The eval report for people (Markdown) and for MLflow (flat metrics)."""

from __future__ import annotations

import math
from typing import Any

from agentflan.eval.contamination import flat_metrics as contamination_metrics


def _interval_cell(iv: dict[str, Any] | None) -> str:
    if not iv or iv.get("value") is None:
        return "- | - | " + str((iv or {}).get("n", 0))
    return f"{iv['value']:.3f} | [{iv['low']:.3f}, {iv['high']:.3f}] | {iv['n']}"


def markdown_report(report: dict[str, Any]) -> str:
    """The report for people: every rate with its 95% interval and n, and a plain verdict on whether the
    model says enough for Agent-H to mean anything."""
    h = report["agent_h"]
    q = report["quality"]
    lines = [f"# Evaluation of `{report['model']}`", ""]
    if q["too_weak"]:
        lines += [
            f"> **The model is too weak for Agent-H to mean anything:** {q['degenerate']} of its {q['n']} replies "
            f"({q['degenerate'] / q['n']:.0%}) are degenerate (empty, or one word or 3-gram repeated over half "
            "the reply). A model that says nothing contains no ReAct words and announces no tool, so its "
            "H_Score would be perfect for the wrong reason: no Agent-H verdict is given. Train longer or larger.",
            "",
        ]
    lines += [
        "## Replies",
        "",
        "| replies | degenerate | degenerate_reply_rate | 95% CI | n |",
        "|---|---|---|---|---|",
        f"| {q['n']} | {q['degenerate']} | {_interval_cell(q['degenerate_reply_rate'])} |",
        "",
        "## Agent-H (hallucination)",
        "",
        "| score | value | 95% CI | n |",
        "|---|---|---|---|",
    ]
    names = {
        "h_react": "H_ReAct",
        "h_general": "H_General",
        "h_score": "H_Score",
        "missed_call_rate": "missed-call rate (d)",
        "combined": "combined",
        "plain_call_rate": "plain-call rate (a-c)",
        "irrelevance_rate": "irrelevance rate (b, c: no call)",
    }
    for key, label in names.items():
        iv = dict(h["intervals"].get(key, {}))
        if q["too_weak"] and key in ("h_score", "combined"):
            lines.append(f"| {label} | not scored: model too weak | - | {iv.get('n', 0)} |")
        else:
            lines.append(f"| {label} | {_interval_cell(iv)} |")
    lines += [
        "",
        "| case | n | ReAct words | rate [95% CI] | tool phrases | rate [95% CI] | calls | rate [95% CI] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, c in sorted(h["per_case"].items()):
        cells = []
        for key, rate in (("react", "react_rate"), ("general", "general_rate"), ("calls", "call_rate")):
            iv = c.get("intervals", {}).get(rate, {})
            ci = "-" if iv.get("value") is None else f"{iv['value']:.2f} [{iv['low']:.2f}, {iv['high']:.2f}]"
            cells += [str(c.get(key, 0)), ci]
        lines.append(f"| {case} | {c.get('n', 0)} | " + " | ".join(cells) + " |")
    t = report["tool_use"]["overall"]
    lines += ["", "## Tool use", "", "| score | value | 95% CI | n |", "|---|---|---|---|"]
    for key, label in (
        ("retrieval", "retrieval (tool name)"),
        ("understanding_exact", "understanding (arguments exact)"),
        ("understanding_f1", "understanding (argument F1)"),
        ("instruction_following", "instruction following (valid call)"),
    ):
        lines.append(f"| {label} | {_interval_cell(t['intervals'].get(key))} |")
    if report.get("bfcl"):
        lines += [
            "",
            "## BFCL (AST checker rules)",
            "",
            "| category | accuracy | 95% CI | n |",
            "|---|---|---|---|",
        ]
        for category, iv in report["bfcl"]["summary"].items():
            lines.append(f"| {category} | {_interval_cell(iv)} |")
    if report.get("general"):
        lines += general_section(report["general"])
    lines += [
        "",
        "## Held-out loss per capability",
        "",
        "| capability | loss | tokens |",
        "|---|---|---|",
    ]
    for cap, v in report["validation_loss"].items():
        lines.append(f"| {cap} | {v['loss']:.4f} | {v['tokens']} |")
    if c := report.get("contamination"):
        lines += ["", "## Contamination (13-gram overlap with the corpus: eval/contamination.md)", ""]
        lines += ["| eval set | items | contaminated | share | dropped |", "|---|---|---|---|---|"]
        for name, s in c["sets"].items():
            share = "-" if s["share"] is None else f"{s['share']:.3f}"
            lines.append(f"| {name} | {s['n']} | {s['contaminated']} | {share} | {s['dropped']} |")
    if report.get("plots"):
        lines += ["", "## Plots"]
        for title, path in report["plots"].items():
            lines += ["", f"![{title}]({path})"]
    return "\n".join(lines) + "\n"


def general_section(general: dict[str, Any]) -> list[str]:
    """GSM8K / MMLU through lm-eval: each task's metric (and its other filters) with n and the normal 95%
    interval from lm-eval's stderr, and the command that reproduces the numbers with lm-eval's own CLI."""
    lines = [
        "",
        "## General capability (lm-evaluation-harness)",
        "",
        "| task | metric | n | value | 95% CI |",
        "|---|---|---|---|---|",
    ]
    for task, row in general["tasks"].items():
        for r in [row, *row.get("also", {}).values()]:
            metric = r["metric"] if r["filter"] in ("none", "") else f"{r['metric']} ({r['filter']})"
            if r["value"] is None:
                lines.append(f"| {task} | {metric} | {r['n']} | - | - |")
                continue
            ci = "-" if r["low"] is None else f"[{r['low']:.3f}, {r['high']:.3f}]"
            lines.append(f"| {task} | {metric} | {r['n']} | {r['value']:.3f} | {ci} |")
    excluded = {t: r["excluded"] for t, r in general["tasks"].items() if r.get("excluded")}
    if excluded:
        lines += ["", "Excluded (contaminated) items: " + ", ".join(f"{t} {k}" for t, k in excluded.items())]
    lines += [
        "",
        "Intervals: value ± 1.96 × lm-eval's stderr, clipped to [0, 1]. "
        "The same numbers from lm-eval's CLI:",
        "",
        f"    {general['command']}",
    ]
    return lines


def general_metrics(general: dict[str, Any]) -> dict[str, float]:
    """``general.<task>`` (its primary metric) with ``.ci_low`` / ``.ci_high``; a task without a value (no
    item left) is left out."""
    out: dict[str, float] = {}
    for task, row in general["tasks"].items():
        if row["value"] is None:
            continue
        out[f"general.{task}"] = float(row["value"])
        if row["low"] is not None:
            out[f"general.{task}.ci_low"] = float(row["low"])
            out[f"general.{task}.ci_high"] = float(row["high"])
    return out


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's numbers as MLflow metrics: agent_h.*, tool_use.*, val_loss.*, quality.*, bfcl.*, general.*,
    contamination.*
    and each rate's interval as ``<name>.ci_low`` / ``.ci_high`` (None and NaN left out)."""
    sections = {"agent_h": report["agent_h"], "tool_use": report["tool_use"]["overall"]}
    out: dict[str, float] = {}
    for name, d in sections.items():
        for k, v in d.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{name}.{k}"] = float(v)
        for k, iv in d.get("intervals", {}).items():
            for end in ("low", "high"):
                if iv.get(end) is not None:
                    out[f"{name}.{k}.ci_{end}"] = float(iv[end])
    out.update({f"val_loss.{cap}": v["loss"] for cap, v in report["validation_loss"].items()})
    for category, iv in (report.get("bfcl") or {}).get("summary", {}).items():
        if iv.get("value") is not None:
            out[f"bfcl.{category}"] = float(iv["value"])
            out[f"bfcl.{category}.ci_low"], out[f"bfcl.{category}.ci_high"] = (
                float(iv["low"]),
                float(iv["high"]),
            )
    if report.get("general"):  # added by run_eval after the agent evals (a Tune trial reads it here)
        out.update(general_metrics(report["general"]))
    if report.get("rollout"):  # added by run_eval after its own metrics are logged (a Tune trial reads it)
        from agentflan.rollout.report import flat_metrics as rollout_metrics

        out.update(rollout_metrics(report["rollout"]))
    out.update(contamination_metrics(report.get("contamination")))
    q = report["quality"]
    out["quality.degenerate_reply_rate"] = float(q["degenerate_reply_rate"]["value"] or 0.0)
    out["quality.too_weak"] = float(q["too_weak"])
    return {k: v for k, v in out.items() if not math.isnan(v)}
