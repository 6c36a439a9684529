"""``agentflan eval``: build the eval sets, generate with the model on Ray Data, score, report.

1. Agent-H and the tool-use set are built deterministically from ``eval.data_dir``, excluding every user
   query of the training corpus under ``output_dir`` (the sets are disjoint from training); then every eval
   set's 13-gram overlap with the corpus is reported (``eval/contamination.md``), and with
   ``eval.decontaminate`` the overlapping items are dropped (:mod:`agentflan.eval.decontaminate`).
2. Replies come from one backend made for the whole run (``eval``'s backend keys; :mod:`agentflan.backends`):
   by default the exported model on long-lived Ray actors, each loading it once (on a GPU with
   ``eval.use_gpu``); or any OpenAI-compatible server (``eval.kind: openai``). With ``rollout.envs`` set, the
   same run then plays the rollouts (:mod:`agentflan.rollout.run`).
3. Scores: Agent-H (H_ReAct, H_General, H_Score, missed calls, combined), tool use (retrieval,
   understanding, instruction following) and the held-out loss per capability on the corpus's validation
   split.
4. ``eval/report.json``, ``eval/report.md``, and MLflow metrics in the run that trained the model (found
   through ``train/summary.json``), else in a new run.
5. With ``eval.general.tasks`` set, once the backend's actors are gone: GSM8K / MMLU through
   lm-evaluation-harness on the HF model (:mod:`agentflan.eval.general`), added to the report as ``general``
   and to MLflow as ``general.<task>``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentflan.backends import Backend, BackendFailure, Result, make_backend
from agentflan.config import Config
from agentflan.console import count
from agentflan.data.pipeline import read_corpus
from agentflan.data.record import Record
from agentflan.eval import bfcl, bfcl_data, decontaminate, eval_sets
from agentflan.eval.contamination import summary as contamination_summary
from agentflan.eval.general.run import general_model
from agentflan.eval.hallucination import score_agent_h
from agentflan.eval.heldout import heldout_records, validation_loss
from agentflan.eval.quality import degenerate_count, too_weak
from agentflan.eval.report import flat_metrics, general_metrics, markdown_report
from agentflan.eval.sources import prompt_tools, training_queries
from agentflan.eval.stats import wilson
from agentflan.eval.tool_calls import score_tool_use
from agentflan.rollout.types import EnvironmentFactory


def eval_backend(cfg: Config, model_path: str) -> Backend:
    """The model eval talks to (``eval``'s backend keys): made once per run, so an hf model loads once per
    actor however many prompts, rollouts included, it answers."""
    return make_backend(cfg.eval, None, model_path)


def reply_text(answer: Result) -> str:
    """The raw reply eval scores; a request the backend could not answer scores as an empty reply."""
    return "" if isinstance(answer, BackendFailure) else answer.content


def generate(
    cfg: Config,
    model_path: str,
    prompts: dict[str, list[dict[str, str]]],
    on_reply: Callable[[int], None] = lambda n: None,
    tools: dict[str, list[dict[str, Any]] | None] | None = None,
    backend: Backend | None = None,
) -> dict[str, str]:
    """Replies to every prompt from ``backend`` (else a new :func:`eval_backend`, closed afterwards). Prompts go
    in longest first, in slices of a batch per actor, so a batch holds prompts of similar length and
    ``on_reply`` (the console's progress bar) hears as each slice lands. ``tools[id]``, where given, is offered
    natively (``tools=``) to that prompt."""
    own = backend is None
    backend = backend or eval_backend(cfg, model_path)
    tools = tools or {}
    ids = sorted(prompts, key=lambda k: (-len(json.dumps(prompts[k])), k))
    step = cfg.eval.batch_size * max(1, cfg.eval.num_actors) if cfg.eval.kind != "openai" else len(ids) or 1
    futures = []
    try:
        for start in range(0, len(ids), step):
            part = ids[start : start + step]
            futures += zip(part, backend.submit([(prompts[k], tools.get(k)) for k in part]), strict=True)
        replies: dict[str, str] = {}
        for k, f in futures:
            replies[k] = reply_text(f.result())
            on_reply(len(replies))
    finally:
        if own:
            backend.close()
    return replies


def run_eval(cfg: Config, progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    out = Path(cfg.output_dir)
    e = cfg.eval
    model_path = e.model or str(out / "model")
    if e.kind == "hf" and not (Path(model_path) / "config.json").exists() and not e.model:
        raise FileNotFoundError(f"no model at {model_path}: train first, or pass model=PATH")
    if e.general.tasks and not (Path(general_model(cfg)) / "config.json").exists():
        # before the agent evals: their minutes are not spent on a run that cannot finish
        raise FileNotFoundError(f"eval.general: no model at {general_model(cfg)}: train first, or model=PATH")
    eval_dir = out / "eval"
    progress("eval: building Agent-H and tool-use sets (disjoint from the training corpus)")
    corpus = read_corpus(out) if (out / "corpus").exists() else []
    built = eval_sets.build(cfg, training_queries(corpus))
    progress("eval: contamination of the eval sets by the corpus (13-gram overlap)")
    contamination, built = decontaminate.for_eval(cfg, corpus, built)
    agent_h, tool_use, bfcl_set = built.agent_h, built.tool_use, built.bfcl
    agent_h.write(eval_dir)
    tool_use.write(eval_dir)
    prompts = {s.id: s.messages for s in [*agent_h.samples, *tool_use.samples]}
    prompts.update({f"bfcl/{qid}": item[3] for qid, item in bfcl_set.items()})
    native_tools = None
    if e.output_format == "native":  # the tools go to the chat template, as a server offers them
        native_tools = {s.id: prompt_tools(s.tools) for s in [*agent_h.samples, *tool_use.samples]}
        native_tools.update(
            {f"bfcl/{qid}": bfcl_data.openai_tools(item[1]["function"]) for qid, item in bfcl_set.items()}
        )
    progress(f"eval: generating {len(prompts)} replies with {model_path}")
    backend = eval_backend(cfg, model_path)
    try:
        report = _score_and_log(
            cfg, progress, backend, model_path, prompts, native_tools, built, corpus, contamination
        )
    finally:
        backend.close()
    if e.general.tasks:
        _add_general(cfg, report, progress, decontaminate.general_exclude(cfg, contamination))
    return report


def _add_general(
    cfg: Config,
    report: dict[str, Any],
    progress: Callable[[str], None],
    exclude: dict[str, set[str]] | None,
) -> None:
    """GSM8K / MMLU (eval.general) after the agent evals, in this process: the report is written again with
    its ``general`` section, and ``general.*`` logged into the same MLflow run."""
    from agentflan import tracking
    from agentflan.eval.general import run_general

    eval_dir = Path(cfg.output_dir) / "eval"
    report["general"] = run_general(cfg, exclude=exclude, progress=progress)
    saved = {k: v for k, v in report.items() if k not in ("rollout", "mlflow_run_id")}
    (eval_dir / "report.json").write_text(json.dumps(saved, indent=2, default=str))
    (eval_dir / "report.md").write_text(markdown_report(report))
    run_id = report["mlflow_run_id"]
    tracking.log_metrics(cfg, run_id, general_metrics(report["general"]), step=0)
    for name in ("report.json", "report.md"):
        tracking.client(cfg).log_artifact(run_id, str(eval_dir / name), "eval")
    tracking.client(cfg).log_artifact(run_id, str(eval_dir / "general" / "results.json"), "eval/general")


def _score_and_log(
    cfg: Config,
    progress: Callable[[str], None],
    backend: Backend,
    model_path: str,
    prompts: dict[str, Any],
    native_tools: dict[str, Any] | None,
    built: eval_sets.Built,
    corpus: list[Record],
    contamination: dict[str, Any] | None,
) -> dict[str, Any]:
    from agentflan import tracking

    agent_h, tool_use, bfcl_set = built.agent_h, built.tool_use, built.bfcl
    out = Path(cfg.output_dir)
    e = cfg.eval
    eval_dir = out / "eval"
    replies = generate(
        cfg,
        model_path,
        prompts,
        lambda n: count(progress, "eval: generate", n, len(prompts), unit="replies"),
        native_tools,
        backend,
    )
    rollouts = _rollouts(
        cfg, model_path, backend, progress, decontaminate.rollout_factories(cfg, contamination)
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
        "contamination": contamination_summary(contamination) if contamination else None,
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
    if rollouts is not None:
        report["rollout"] = rollouts(run_id)
    tracking.client(cfg).log_artifact(run_id, str(eval_dir / "report.json"), "eval")
    tracking.client(cfg).log_artifact(run_id, str(eval_dir / "report.md"), "eval")
    for rel in report["plots"].values():
        tracking.client(cfg).log_artifact(run_id, str((eval_dir / rel).resolve()), "plots")
    report["mlflow_run_id"] = run_id
    return report


def _rollouts(
    cfg: Config,
    model_path: str,
    backend: Backend,
    progress: Callable[[str], None],
    factories: dict[str, EnvironmentFactory] | None = None,
) -> Callable[[str], dict[str, Any]] | None:
    """With ``rollout.envs`` set: the rollouts, to run once the eval's MLflow run is known. Eval's backend
    plays them when ``rollout.backend`` names the same model (no second load), else their own does.
    ``factories``: the environments less their contaminated tasks (``eval.decontaminate``)."""
    if not cfg.rollout.envs:
        return None
    from agentflan.rollout.run import model_path as rollout_model
    from agentflan.rollout.run import rollout_syntax, run_rollouts

    rb = cfg.rollout.backend
    same = rb.kind == cfg.eval.kind == "hf" and rollout_model(cfg) == model_path
    same = same and rb.backend_fields() | {"model": None} == cfg.eval.backend_fields() | {"model": None}

    def run(run_id: str) -> dict[str, Any]:
        if not same:
            return run_rollouts(cfg, progress, factories=factories, log_to=run_id)
        backend.syntax = rollout_syntax(cfg)
        return run_rollouts(cfg, progress, backend=backend, factories=factories, log_to=run_id)

    return run


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
