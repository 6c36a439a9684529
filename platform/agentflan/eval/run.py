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
from agentflan.data.pipeline import read_corpus
from agentflan.data.record import TRAINED_CAPABILITIES, Record
from agentflan.eval.agent_h import build_agent_h
from agentflan.eval.hallucination import score_agent_h
from agentflan.eval.sources import EvalSources, training_queries
from agentflan.eval.tool_calls import build_tool_use_set, score_tool_use


class _Generate:
    """Ray Data actor: loads the model once, answers a batch of prompts."""

    def __init__(self, model_path: str, max_new_tokens: int, batch_size: int, use_gpu: bool) -> None:
        from agentflan.generation import ChatGenerator

        self.gen = ChatGenerator(model_path, max_new_tokens, batch_size, "cuda" if use_gpu else "cpu")

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        replies = self.gen.generate([json.loads(m) for m in batch["messages"]])
        return {"id": list(batch["id"]), "reply": replies}


def generate(cfg: Config, model_path: str, prompts: dict[str, list[dict[str, str]]]) -> dict[str, str]:
    import ray

    from agentflan.ray_utils import ensure_ray

    ensure_ray()
    e = cfg.eval
    items = [{"id": k, "messages": json.dumps(v)} for k, v in prompts.items()]
    ds = ray.data.from_items(items).map_batches(
        _Generate,
        fn_constructor_kwargs={
            "model_path": model_path,
            "max_new_tokens": e.max_new_tokens,
            "batch_size": e.batch_size,
            "use_gpu": e.use_gpu,
        },
        batch_size=e.batch_size,
        concurrency=e.num_actors,
        num_gpus=1 if e.use_gpu else 0,
        batch_format="numpy",
    )
    return {row["id"]: row["reply"] for row in ds.take_all()}


def validation_loss(cfg: Config, model_path: str, records: list[Record]) -> dict[str, dict[str, float]]:
    """Mean token loss of the model on the validation split, per capability of the trained turns."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentflan.train.loss import weighted_token_loss
    from agentflan.train.templates import encode_conversation

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    template = None if cfg.train.model.template == "model" else cfg.train.model.template
    sums = {c: [0.0, 0] for c in TRAINED_CAPABILITIES}
    for rec in records:
        for cap in {m.capability for m in rec.messages if m.role == "assistant"} & set(sums):
            msgs = [
                {**m.to_dict(), "loss": m.role == "assistant" and m.capability == cap, "weight": 1.0}
                for m in rec.messages
            ]
            sample = encode_conversation(msgs, tok, template, max_length=cfg.train.seq_len)
            if sample.n_trained == 0:
                continue
            ids = torch.tensor([sample.input_ids])
            with torch.no_grad():
                logits = model(input_ids=ids, use_cache=False).logits
            loss_sum, n = weighted_token_loss(
                logits, torch.tensor([sample.labels]), torch.tensor([sample.weights])
            )
            sums[cap][0] += float(loss_sum)
            sums[cap][1] += int(n)
    return {c: {"loss": s / n, "tokens": n} for c, (s, n) in sums.items() if n}


def heldout_records(cfg: Config, corpus: list[Record]) -> list[Record]:
    """The validation split: the corpus's own, or that of ``data.heldout_from`` (a Tune study's base)."""
    if cfg.data.heldout_from:
        return read_corpus(cfg.data.heldout_from, "validation")
    return [r for r in corpus if r.meta.get("split") == "validation"]


def markdown_report(report: dict[str, Any]) -> str:
    h = report["agent_h"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        f"# Evaluation of `{report['model']}`",
        "",
        "## Agent-H (hallucination)",
        "",
        "| H_ReAct | H_General | H_Score | missed-call rate (d) | combined |",
        "|---|---|---|---|---|",
        f"| {fmt(h['h_react'])} | {fmt(h['h_general'])} | {fmt(h['h_score'])} | {fmt(h['missed_call_rate'])} | "
        f"{fmt(h['combined'])} |",
        "",
        "| case | n | ReAct words | tool phrases | calls |",
        "|---|---|---|---|---|",
    ]
    for case, c in sorted(h["per_case"].items()):
        lines.append(
            f"| {case} | {c.get('n', 0)} | {c.get('react', 0)} | {c.get('general', 0)} | {c.get('call', 0)} |"
        )
    t = report["tool_use"]["overall"]
    lines += [
        "",
        "## Tool use",
        "",
        "| n | retrieval | understanding exact | understanding F1 | instruction following |",
        "|---|---|---|---|---|",
        f"| {t['n']} | {fmt(t['retrieval'])} | {fmt(t['understanding_exact'])} | {fmt(t['understanding_f1'])} | "
        f"{fmt(t['instruction_following'])} |",
        "",
        "## Held-out loss per capability",
        "",
        "| capability | loss | tokens |",
        "|---|---|---|",
    ]
    for cap, v in report["validation_loss"].items():
        lines.append(f"| {cap} | {v['loss']:.4f} | {v['tokens']} |")
    return "\n".join(lines) + "\n"


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's numbers as MLflow metrics: agent_h.*, tool_use.*, val_loss.* (None and NaN left out)."""
    sections = {"agent_h": report["agent_h"], "tool_use": report["tool_use"]["overall"]}
    out = {
        f"{name}.{k}": float(v)
        for name, d in sections.items()
        for k, v in d.items()
        if isinstance(v, (int, float))
    }
    out.update({f"val_loss.{cap}": v["loss"] for cap, v in report["validation_loss"].items()})
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
    progress(f"eval: generating {len(prompts)} replies with {model_path}")
    replies = generate(cfg, model_path, prompts)
    progress("eval: scoring")
    report = {
        "model": model_path,
        "agent_h": score_agent_h(agent_h.samples, [replies[s.id] for s in agent_h.samples]).to_dict(),
        "agent_h_set": agent_h.manifest,
        "tool_use": score_tool_use(
            tool_use.samples, [replies[s.id] for s in tool_use.samples], e.output_format
        ),
        "tool_use_set": tool_use.manifest,
        "validation_loss": validation_loss(cfg, model_path, heldout_records(cfg, corpus)),
    }
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
    report["mlflow_run_id"] = run_id
    return report
