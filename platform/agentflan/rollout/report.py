"""What a rollout run found: accuracy per environment and category with n and a 95% Wilson interval, how
episodes ended, and what they cost (steps and tokens per episode); as JSON, Markdown and MLflow metrics."""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from agentflan.eval.stats import wilson
from agentflan.rollout.engine import EpisodeResult
from agentflan.rollout.types import END_REASONS


def _spread(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "max": 0.0}
    return {"mean": statistics.fmean(values), "median": float(statistics.median(values)), "max": max(values)}


def summarize(results: Sequence[EpisodeResult], seconds: float | None = None) -> dict[str, Any]:
    """Per environment: ``categories`` (each a Wilson interval dict), ``overall`` (pooled, with interval),
    ``overall_cat_accuracy`` (the mean over categories, as BFCL and AgentBench report it), ``endings`` (a
    count for every EndReason), and ``steps`` / ``tokens`` per episode."""
    by_env: dict[str, list[EpisodeResult]] = defaultdict(list)
    for r in results:
        by_env[r.env].append(r)
    envs: dict[str, Any] = {}
    for env, rs in sorted(by_env.items()):
        cats: dict[str, list[bool]] = defaultdict(list)
        for r in rs:
            cats[r.verdict.category or r.category].append(r.verdict.passed)
        categories = {c: wilson(sum(p), len(p)).to_dict() for c, p in sorted(cats.items())}
        endings = Counter(r.reason for r in rs)
        envs[env] = {
            "n": len(rs),
            "categories": categories,
            "overall": wilson(sum(r.verdict.passed for r in rs), len(rs)).to_dict(),
            "overall_cat_accuracy": statistics.fmean(c["value"] for c in categories.values()),
            "endings": {reason: endings.get(reason, 0) for reason in END_REASONS},
            "steps": _spread([r.steps for r in rs]),
            "prompt_tokens": _spread([r.prompt_tokens for r in rs]),
            "completion_tokens": _spread([r.completion_tokens for r in rs]),
        }
    out: dict[str, Any] = {"episodes": len(results), "envs": envs}
    if seconds is not None:
        out["seconds"] = round(seconds, 2)
        out["episodes_per_s"] = round(len(results) / seconds, 3) if seconds > 0 else None
    return out


def _cell(iv: dict[str, Any]) -> str:
    if iv.get("value") is None:
        return "- | - | 0"
    return f"{iv['value']:.3f} | [{iv['low']:.3f}, {iv['high']:.3f}] | {iv['n']}"


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Rollouts of `{report.get('model', '?')}`", ""]
    if report.get("backend"):
        lines += [f"Backend: `{report['backend']}`; {report['episodes']} episodes.", ""]
    for env, e in report["envs"].items():
        lines += [f"## {env}", "", "| category | accuracy | 95% CI | n |", "|---|---|---|---|"]
        lines += [f"| {c} | {_cell(iv)} |" for c, iv in e["categories"].items()]
        lines += [f"| **overall (pooled)** | {_cell(e['overall'])} |"]
        lines += ["", f"Mean over categories (overall_cat_accuracy): {e['overall_cat_accuracy']:.3f}", ""]
        lines += ["| ending | episodes |", "|---|---|"]
        lines += [f"| {reason} | {n} |" for reason, n in e["endings"].items()]
        lines += ["", "| per episode | mean | median | max |", "|---|---|---|---|"]
        for key in ("steps", "prompt_tokens", "completion_tokens"):
            s = e[key]
            lines.append(f"| {key} | {s['mean']:.1f} | {s['median']:.1f} | {s['max']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """``rollout.<env>.<category>`` with ``.ci_low`` / ``.ci_high``, ``rollout.<env>.overall`` (the same),
    ``rollout.<env>.overall_cat_accuracy`` and ``rollout.<env>.ending.<reason>``."""
    out: dict[str, float] = {}
    for env, e in report["envs"].items():
        for name, iv in [*e["categories"].items(), ("overall", e["overall"])]:
            if iv.get("value") is None:
                continue
            key = f"rollout.{env}.{name}"
            out[key] = float(iv["value"])
            out[f"{key}.ci_low"], out[f"{key}.ci_high"] = float(iv["low"]), float(iv["high"])
        out[f"rollout.{env}.overall_cat_accuracy"] = float(e["overall_cat_accuracy"])
        out.update({f"rollout.{env}.ending.{k}": float(v) for k, v in e["endings"].items()})
    return {k: v for k, v in out.items() if not math.isnan(v)}
