"""The ``agentflan`` command.

    agentflan data SPEC.yaml [key=value ...]     build the Agent-FLAN corpus
    agentflan train SPEC.yaml [key=value ...]    fine-tune on it (builds the corpus first if needed)
    agentflan eval SPEC.yaml [model=PATH] [key=value ...]   Agent-H, tool use, held-out loss
    agentflan rollout SPEC.yaml [key=value ...]  multi-turn episodes in rollout.envs against rollout.backend
    agentflan run SPEC.yaml [key=value ...]      the whole job: corpus -> train -> eval
    agentflan tune SPEC.yaml SPACE.yaml [key=value ...]   a Ray Tune study (tune_spaces/), e.g. an ablation
    agentflan bfcl DATA_DIR REPLIES.jsonl          score any model's replies the way BFCL does

A bad spec, input, path or ratio key is reported in one line before any work starts (exit code 2). While a
command runs, the console shows a progress bar per stage and the summary tables; every library's output goes
to ``<output_dir>/logs/agentflan.log`` (see :mod:`agentflan.console`). A failure prints one line naming what
failed and where the full log is (exit code 1). Two jobs on one output directory are refused (a lock file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from agentflan.config import Config, ConfigError, load_config
from agentflan.console import Console, job_console
from agentflan.preflight import PreflightError, output_dir_lock, preflight


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        lines.append(
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summarize_data(manifest: dict[str, Any], out_dir: Path) -> str:
    stage_rows = []
    for s in manifest["stages"]:
        reasons = {**s["filtered_reasons"], **{f"Q:{k}": v for k, v in s["quarantined_reasons"].items()}}
        top = ", ".join(f"{k}={v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
        stage_rows.append(
            [s["name"], s["in"], s["out"], s["filtered"], s["quarantined"], s.get("repeated", ""), top]
        )
    parts = [
        format_table(
            ["stage", "in", "out", "filtered", "quarantined", "repeated", "top reasons"], stage_rows
        ),
        "",
        format_table(
            ["bucket", "records", "tokens", "trained tokens"],
            [
                [b, v.get("records", 0), v.get("tokens", 0), v.get("trained_tokens", 0)]
                for b, v in sorted(manifest["buckets"].items())
            ],
        ),
        "",
        format_table(
            ["capability", "turns", "trained turns", "trained tokens"],
            [
                [c, v.get("turns", 0), v.get("trained_turns", 0), v.get("trained_tokens", 0)]
                for c, v in sorted(manifest["capabilities"].items())
            ],
        ),
        "",
        f"corpus rows: {manifest['rows']['corpus']} {manifest['splits']}   fingerprint: {manifest['fingerprint'][:16]}",
        f"written to {out_dir} (manifest.json, corpus/, quarantine/) in {manifest['seconds']} s",
    ]
    if c := manifest.get("contamination"):
        sets = ", ".join(f"{k} {v['contaminated']}/{v['n']}" for k, v in c["sets"].items())
        parts.append(f"eval items sharing a 13-gram with the corpus: {sets} ({c['report']})")
    q = sum(s["quarantined"] for s in manifest["stages"])
    if q:
        parts.append(f"{q} records quarantined, with file:line and reason, in {out_dir / 'quarantine'}")
    return "\n".join(parts)


class UsageError(Exception):
    """A problem the user can fix (bad inputs, no model): one line, exit code 2."""


def cmd_data(cfg: Config, console: Console, trains_next: bool = False) -> int:
    """``trains_next``: training runs in this process afterwards, so a local Ray instance needs the
    dashboard (see :func:`~agentflan.ray_utils.ensure_ray`); the data stage alone runs without it."""
    from agentflan.data.pipeline import PipelineError, run_data

    try:
        manifest = run_data(cfg, progress=console, dashboard=trains_next)
    except PipelineError as e:
        raise UsageError(str(e)) from None
    console.print(summarize_data(manifest, Path(cfg.output_dir)))
    return 0


def cmd_train(cfg: Config, console: Console) -> int:
    from agentflan.data.pipeline import NO_CORPUS, corpus_staleness
    from agentflan.train.recipe import run_train

    stale = corpus_staleness(cfg)
    if stale is None:
        console.message(f"corpus under {cfg.output_dir} is current: skipping the data stage")
    else:
        if stale != NO_CORPUS:
            console.message(f"rebuilding the corpus under {cfg.output_dir}: {stale}")
        if (code := cmd_data(cfg, console, trains_next=True)) != 0:
            return code
    summary = run_train(cfg, progress=console)
    final = summary["final"]
    console.print(
        format_table(
            ["steps", "loss", "val_loss", "tokens/s", "real-token share", "model", "mlflow run"],
            [
                [
                    summary["steps"],
                    f"{final.get('loss', float('nan')):.4f}",
                    f"{final['val_loss']:.4f}" if "val_loss" in final else "-",
                    f"{final.get('tokens_per_s', 0):.0f}",
                    f"{final.get('real_token_share', 0):.2f}",
                    summary["model_dir"] or "- (train.save_final: false)",
                    summary["run_id"],
                ]
            ],
        )
    )
    return 0


def cmd_eval(cfg: Config, console: Console) -> int:
    from agentflan.eval.run import markdown_report, run_eval

    try:
        report = run_eval(cfg, progress=console)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    console.print(markdown_report(report))
    console.print(
        f"report: {Path(cfg.output_dir) / 'eval' / 'report.md'}   mlflow run: {report['mlflow_run_id']}"
    )
    return 0


def cmd_rollout(cfg: Config, console: Console) -> int:
    from agentflan.rollout.report import markdown
    from agentflan.rollout.run import run_rollouts

    if not cfg.rollout.envs:
        raise UsageError("rollout.envs is empty: name the environments, e.g. rollout.envs=[agentbench_db]")
    try:
        report = run_rollouts(cfg, progress=console)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    out = Path(cfg.output_dir) / "rollout"
    console.print(markdown(report))
    kept = f"   kept: {out / 'kept.jsonl'} ({report['kept']})" if "kept" in report else ""
    console.print(f"report: {out / 'report.md'}   trajectories: {out / 'trajectories.jsonl'}{kept}")
    console.print(f"mlflow run: {report['mlflow_run_id']}")
    return 0


def cmd_run(cfg: Config, console: Console) -> int:
    """corpus -> train -> eval: a current corpus is reused, and training resumes from its last checkpoint."""
    if (code := cmd_train(cfg, console)) != 0:
        return code
    return cmd_eval(cfg, console)


def cmd_tune(cfg: Config, console: Console, space_path: str) -> int:
    from agentflan.tune.space import SpaceError, load_space
    from agentflan.tune.study import StudyError, run_study

    try:
        space = load_space(space_path, cfg)
    except SpaceError as e:
        raise UsageError(str(e)) from None
    try:
        summary = run_study(cfg, space, progress=console)
    except StudyError as e:
        raise UsageError(str(e)) from None
    console.print(summary["table"])
    console.print()
    console.print(summary["best_line"])
    console.print(
        f"results: {summary['study_dir']}/results.md   mlflow parent run: {summary['parent_run_id']}"
    )
    failed = [r["trial"] for r in summary["rows"] if r["status"] == "error"]
    if failed:
        console.message(f"{len(failed)} trial(s) failed: {', '.join(failed)}")
        return 1
    return 0


def cmd_bfcl(data_dir: str, replies_path: str, categories: list[str] | None) -> int:
    """Score a replies file against a BFCL data folder: a table per category on stdout, a verdict per reply in
    ``<replies>.verdicts.jsonl`` beside it. Needs no spec, no Ray: it runs anywhere."""
    import json

    from agentflan.eval import bfcl, bfcl_data

    path = Path(replies_path)
    try:
        replies = bfcl_data.read_replies(path)
        known = bfcl_data.categories(data_dir)
        if not known:
            raise bfcl_data.BfclError(f"{data_dir}: no BFCL_v*_<category>.json files")
        if unknown := sorted(set(categories or []) - set(known)):
            raise bfcl_data.BfclError(f"--categories: {', '.join(unknown)} not in {data_dir}")
        verdicts = bfcl.score_replies(data_dir, replies, categories)
    except (bfcl_data.BfclError, OSError) as e:
        print(f"agentflan: {e}", file=sys.stderr)
        return 2
    out = path.with_name(path.name.removesuffix(".jsonl") + ".verdicts.jsonl")
    with out.open("w") as f:
        for v in verdicts:
            f.write(
                json.dumps({"id": v.id, "category": v.category, "valid": v.valid, "error": v.error}) + "\n"
            )
    summary = bfcl.summarize(verdicts)
    questions = bfcl_data.question_counts(data_dir, categories)
    rows = [
        [c, f"{s['value']:.3f}" if s["value"] is not None else "-",
         f"[{s['low']:.3f}, {s['high']:.3f}]" if s["value"] is not None else "-", s["n"],
         questions.get(c, sum(questions.values()) if c == "overall" else 0)]
        for c, s in summary.items()
    ]  # fmt: skip
    print(format_table(["category", "accuracy", "95% CI", "scored", "questions"], rows))
    unmatched = len(replies) - len(verdicts)
    skipped = sorted(c for c in known if not bfcl_data.scorable(c) and (not categories or c in categories))
    if unmatched:
        print(f"{unmatched} replies matched no question of a scored category", file=sys.stderr)
    if skipped:
        print(f"not scored (multi-turn, agentic, Java, JavaScript): {', '.join(skipped)}", file=sys.stderr)
    print(f"verdicts: {out}")
    return 0


COMMANDS = {"data": cmd_data, "train": cmd_train, "eval": cmd_eval, "rollout": cmd_rollout, "run": cmd_run}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="agentflan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("data", "build the Agent-FLAN corpus"),
        ("train", "fine-tune on the corpus"),
        ("eval", "evaluate a model: Agent-H, tool use, held-out loss (model=PATH)"),
        ("rollout", "multi-turn rollouts: rollout.envs against rollout.backend (rollout.keep=passed: data)"),
        ("run", "the whole job: corpus -> train -> eval"),
        ("tune", "a Ray Tune study over the mixture (SPACE: tune_spaces/*.yaml)"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("spec", help="pipeline spec (YAML), e.g. pipelines/local.yaml")
        if name == "tune":
            p.add_argument("space", help="search space (YAML), e.g. tune_spaces/ablation_negatives.yaml")
        p.add_argument(
            "overrides",
            nargs="*",
            metavar="key=value",
            help="config overrides, e.g. seed=1 data.engine=local",
        )
    bfcl = sub.add_parser(
        "bfcl", help="score any model's replies on BFCL questions (BFCL's AST checker rules)"
    )
    bfcl.add_argument("data_dir", help="folder with BFCL_v4_<category>.json and possible_answer/")
    bfcl.add_argument(
        "replies", help='JSON lines {"id", "reply"}: the raw text, or a list of OpenAI tool_calls'
    )
    bfcl.add_argument("--categories", nargs="*", help="only these categories (default: every scorable one)")
    args = parser.parse_args(argv)
    if args.command == "bfcl":
        return cmd_bfcl(args.data_dir, args.replies, args.categories)
    # `agentflan eval SPEC model=PATH`: the model to evaluate is eval.model
    overrides = [f"eval.{o}" if o.startswith("model=") else o for o in args.overrides]
    try:
        cfg = load_config(args.spec, overrides)
        if args.command == "tune":
            from agentflan.tune.space import SpaceError, load_space

            try:
                load_space(args.space, cfg)  # a bad space is refused before anything starts
            except SpaceError as e:
                raise UsageError(str(e)) from None
        preflight(cfg, args.command)
    except (ConfigError, PreflightError, UsageError) as e:
        print(f"agentflan: {e}", file=sys.stderr)
        return 2
    try:
        with output_dir_lock(cfg.output_dir), job_console(cfg.output_dir) as console:
            try:
                if args.command == "tune":
                    return cmd_tune(cfg, console, args.space)
                return COMMANDS[args.command](cfg, console)
            except UsageError as e:
                console.error(str(e))
                return 2
            except Exception as e:  # anything else: one line here, the traceback in the log
                console.fail(e, args.command)
                return 1
            except KeyboardInterrupt:
                console.message(f"interrupted (log: {console.log_path})")
                return 130
    except PreflightError as e:  # the output directory is locked by another job
        print(f"agentflan: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
