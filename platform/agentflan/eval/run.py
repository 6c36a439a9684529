"""``agentflan eval``: build the eval sets, generate with the model on Ray Data, score, report.

1. Agent-H and the tool-use set are built deterministically from ``eval.data_dir``, excluding every user
   query of the training corpus under ``output_dir`` (the sets are disjoint from training).
2. Replies are generated greedily with HF transformers as a Ray Data ``map_batches`` over an actor pool:
   each actor loads the model once (on one GPU when ``eval.use_gpu``) and answers batches of prompts.
3. Scores: Agent-H (H_ReAct, H_General, H_Score, missed calls, combined), tool use (retrieval,
   understanding, instruction following) and the held-out loss per capability on the corpus's validation
   split.
4. ``eval/report.json``, ``eval/report.md``, and MLflow metrics in the run that trained the model (found
   through ``train/summary.json``), else in a new run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentflan.config import Config
from agentflan.console import count
from agentflan.data.pipeline import read_corpus
from agentflan.eval import bfcl, bfcl_data
from agentflan.eval.agent_h import build_agent_h
from agentflan.eval.hallucination import score_agent_h
from agentflan.eval.heldout import heldout_records, validation_loss
from agentflan.eval.quality import degenerate_count, too_weak
from agentflan.eval.sources import EvalSources, prompt_tools, training_queries
from agentflan.eval.stats import wilson
from agentflan.eval.tool_calls import build_tool_use_set, score_tool_use


class _Generate:
    """Ray Data actor: loads the model once, answers a batch of prompts."""

    def __init__(self, model_path: str, max_new_tokens: int, batch_size: int, use_gpu: bool) -> None:
        from agentflan.generation import ChatGenerator

        self.gen = ChatGenerator(model_path, max_new_tokens, batch_size, "cuda" if use_gpu else "cpu")

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        replies = self.gen.generate(
            [json.loads(m) for m in batch["messages"]], [json.loads(t) for t in batch["tools"]]
        )
        return {"id": list(batch["id"]), "reply": replies}


def generate(
    cfg: Config,
    model_path: str,
    prompts: dict[str, list[dict[str, str]]],
    on_reply: Callable[[int], None] = lambda n: None,
    tools: dict[str, list[dict[str, Any]] | None] | None = None,
) -> dict[str, str]:
    """Greedy replies to every prompt, on a Ray Data actor pool. Prompts go in longest first, so a batch holds
    prompts of similar length (less left padding) and the slowest batches start first; ``on_reply`` is
    told how many replies have arrived (the console's progress bar). ``tools[id]``, where given, is offered
    natively (``tools=``) to that prompt."""
    import ray

    from agentflan.ray_utils import ensure_ray

    ensure_ray()
    e = cfg.eval
    tools = tools or {}
    items = [
        {"id": k, "messages": json.dumps(v), "tools": json.dumps(tools.get(k))} for k, v in prompts.items()
    ]
    items.sort(key=lambda it: (-len(it["messages"]), it["id"]))
    ds = ray.data.from_items(items).map_batches(
        _Generate,
        fn_constructor_kwargs={
            "model_path": model_path,
            "max_new_tokens": e.max_new_tokens,
            "batch_size": e.batch_size,
            "use_gpu": e.use_gpu,
        },
        batch_size=e.batch_size,
        compute=ray.data.ActorPoolStrategy(size=e.num_actors),
        num_gpus=1 if e.use_gpu else 0,
        batch_format="numpy",
    )
    replies = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        replies.update(zip(batch["id"].tolist(), batch["reply"].tolist(), strict=True))
        on_reply(len(replies))
    return replies


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
    lines += [
        "",
        "## Held-out loss per capability",
        "",
        "| capability | loss | tokens |",
        "|---|---|---|",
    ]
    for cap, v in report["validation_loss"].items():
        lines.append(f"| {cap} | {v['loss']:.4f} | {v['tokens']} |")
    if report.get("plots"):
        lines += ["", "## Plots"]
        for title, path in report["plots"].items():
            lines += ["", f"![{title}]({path})"]
    return "\n".join(lines) + "\n"


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's numbers as MLflow metrics: agent_h.*, tool_use.*, val_loss.*, quality.* and each rate's
    interval as ``<name>.ci_low`` / ``.ci_high`` (None and NaN left out)."""
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
    q = report["quality"]
    out["quality.degenerate_reply_rate"] = float(q["degenerate_reply_rate"]["value"] or 0.0)
    out["quality.too_weak"] = float(q["too_weak"])
    return {k: v for k, v in out.items() if not math.isnan(v)}


def run_eval(cfg: Config, progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    from agentflan import tracking

    out = Path(cfg.output_dir)
    e = cfg.eval
    model_path = e.model or str(out / "model")
    if not (Path(model_path) / "config.json").exists() and not e.model:
        raise FileNotFoundError(f"no model at {model_path}: train first, or pass model=PATH")
    eval_dir = out / "eval"
    progress("eval: building Agent-H and tool-use sets (disjoint from the training corpus)")
    corpus = read_corpus(out) if (out / "corpus").exists() else []
    exclude = training_queries(corpus)
    sources = EvalSources.from_dir(e.data_dir)
    agent_h = build_agent_h(
        sources,
        cfg.seed,
        exclude_queries=exclude,
        max_per_case=e.max_per_case,
        max_hotpot=e.max_hotpot,
        output_format=e.output_format,
    )
    tool_use = build_tool_use_set(
        sources,
        cfg.seed,
        exclude_queries=exclude,
        max_per_source=e.max_tool_use_per_source,
        output_format=e.output_format,
    )
    agent_h.write(eval_dir)
    tool_use.write(eval_dir)
    prompts = {s.id: s.messages for s in [*agent_h.samples, *tool_use.samples]}
    b = e.bfcl
    bfcl_set = (
        bfcl_data.prompts(b.data_dir, b.categories, b.max_per_category, e.output_format) if b.data_dir else {}
    )
    prompts.update({f"bfcl/{qid}": item[3] for qid, item in bfcl_set.items()})
    native_tools = None
    if e.output_format == "native":  # the tools go to the chat template, as a server offers them
        native_tools = {s.id: prompt_tools(s.tools) for s in [*agent_h.samples, *tool_use.samples]}
        native_tools.update(
            {f"bfcl/{qid}": bfcl_data.openai_tools(item[1]["function"]) for qid, item in bfcl_set.items()}
        )
    progress(f"eval: generating {len(prompts)} replies with {model_path}")
    replies = generate(
        cfg,
        model_path,
        prompts,
        lambda n: count(progress, "eval: generate", n, len(prompts), unit="replies"),
        native_tools,
    )
    progress("eval: scoring")
    every = list(replies.values())
    degenerate = degenerate_count(every)
    report = {
        "model": model_path,
        "agent_h": score_agent_h(agent_h.samples, [replies[s.id] for s in agent_h.samples]).to_dict(),
        "agent_h_set": agent_h.manifest,
        "tool_use": score_tool_use(
            tool_use.samples, [replies[s.id] for s in tool_use.samples], e.output_format
        ),
        "tool_use_set": tool_use.manifest,
        "validation_loss": validation_loss(cfg, model_path, heldout_records(cfg, corpus)),
        "bfcl": _score_bfcl(bfcl_set, replies, e.output_format == "native") if bfcl_set else None,
        "quality": {
            "n": len(every),
            "degenerate": degenerate,
            "degenerate_reply_rate": wilson(degenerate, len(every)).to_dict(),
            "too_weak": too_weak(degenerate, len(every)),
        },
    }
    report["plots"] = _plots(report, out)
    (eval_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (eval_dir / "report.md").write_text(markdown_report(report))
    with (eval_dir / "replies.jsonl").open("w") as f:
        for k in sorted(replies):
            f.write(json.dumps({"id": k, "reply": replies[k]}) + "\n")

    summary = out / "train" / "summary.json"
    run_id = None
    if summary.exists() and json.loads(summary.read_text()).get("model_dir") == str(
        Path(model_path).resolve()
    ):
        run_id = json.loads(summary.read_text())["run_id"]
    if run_id is None:
        run_id = tracking.start_run(cfg, f"{cfg.name}-eval", tags={"agentflan.stage": "eval"})
        tracking.client(cfg).set_terminated(run_id, "FINISHED")
    tracking.log_metrics(cfg, run_id, flat_metrics(report), step=0)
    tracking.client(cfg).log_artifact(run_id, str(eval_dir / "report.json"), "eval")
    tracking.client(cfg).log_artifact(run_id, str(eval_dir / "report.md"), "eval")
    for rel in report["plots"].values():
        tracking.client(cfg).log_artifact(run_id, str((eval_dir / rel).resolve()), "plots")
    report["mlflow_run_id"] = run_id
    return report


def _plots(report: dict[str, Any], out: Path) -> dict[str, str]:
    """Title -> path relative to ``eval/`` of each picture the report embeds: the held-out loss drawn now,
    and the training run's loss curves and mixture when they are there."""
    from agentflan import plots

    made = {}
    if report["validation_loss"]:
        plots.heldout_loss(report["validation_loss"], out / "eval" / "plots" / "heldout_loss.png")
        made["Held-out loss per capability"] = "plots/heldout_loss.png"
    for title, name in (("Training and validation loss", "loss.png"), ("Mixture", "mixture.png")):
        if (out / "train" / "plots" / name).exists():
            made[title] = f"../train/plots/{name}"
    return made


def _score_bfcl(questions: dict[str, tuple], replies: dict[str, str], native: bool) -> dict[str, Any]:
    """BFCL verdicts of the model's replies (agentflan.eval.bfcl), and accuracy per category with intervals."""
    verdicts = [
        bfcl.judge(category, question, answers, replies[f"bfcl/{qid}"], native_prompt=native)
        for qid, (category, question, answers, _) in questions.items()
    ]
    return {"summary": bfcl.summarize(verdicts), "verdicts": [v.to_dict() for v in verdicts]}
