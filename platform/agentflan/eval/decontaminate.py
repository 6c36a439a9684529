"""The contamination report of a run, and decontamination: what ``agentflan data`` and ``agentflan eval`` call.

``agentflan data`` scans once the corpus is written (:func:`attach_to_manifest`): every eval set the config
would run (:mod:`agentflan.eval.eval_sets`) against the training splits, streamed from the shards; a set
whose files cannot be read is listed as skipped, never a failure of the data stage. ``agentflan eval`` scans
again on the sets it has just built (:func:`for_eval`) and, with ``eval.decontaminate``, drops every
contaminated item before generating (:func:`drop`, :func:`rollout_factories`, :func:`general_exclude`).
Both write ``<output_dir>/eval/contamination.md`` and ``contamination.json``; the rule and the index are in
:mod:`agentflan.eval.contamination`.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from agentflan.config import Config
from agentflan.data.record import Record
from agentflan.eval import contamination, eval_sets
from agentflan.eval.eval_sets import Built, EvalItems
from agentflan.eval.sources import EvalSet, make_set
from agentflan.rollout.types import EnvironmentFactory, Task

# What a set that cannot be built here raises: a missing or malformed file, an env that cannot load.
UNREADABLE = (OSError, ValueError, KeyError, RuntimeError)
REPORT = "contamination"


def scan(
    cfg: Config, texts: Iterable[str], sets: Sequence[EvalItems], skipped: dict[str, str]
) -> dict[str, Any]:
    """Index the training ``texts`` once (with every short item as a probe) and score every set."""
    probes = [w for s in sets for i in s.items if len(w := contamination.words(i.text)) < contamination.N]
    index = contamination.build_index(texts, probes=probes)
    decon = cfg.eval.decontaminate
    scanned = {s.name: {"runs": s.runs, **contamination.scan_set(s.items, index, decon)} for s in sets}
    return {
        "rule": {
            "n": index.n,
            "normalisation": "NFKC, case-folded, characters other than letters, digits and spaces deleted",
            "short_items": f"fewer than {index.n} words: contaminated when the whole item occurs",
            "splits": list(eval_sets.TRAINING_SPLITS),
            "text": "user and assistant turns (content, reasoning, native call arguments)",
        },
        "corpus": index.stats(),
        "decontaminate": decon,
        "sets": scanned,
        "skipped": skipped,
    }


def write(report: dict[str, Any], output_dir: str | Path, started: float) -> dict[str, Any]:
    """Write ``eval/contamination.json`` and ``.md``; returns the report with its ``path`` and ``seconds``
    (the whole step since ``started``, a ``time.perf_counter()``: building the sets, the index, the scan)."""
    out = Path(output_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    seconds = round(time.perf_counter() - started, 2)
    report = {**report, "seconds": seconds, "path": str(out / f"{REPORT}.md")}
    (out / f"{REPORT}.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    (out / f"{REPORT}.md").write_text(contamination.markdown(report))
    return report


def _guarded(name: str, skipped: dict[str, str], build: Callable[[], Any]) -> Any:
    try:
        return build()
    except UNREADABLE as e:
        skipped[name] = f"skipped: {type(e).__name__}: {e}"
        return None


def data_stage_sets(cfg: Config) -> tuple[list[EvalItems], dict[str, str]]:
    """Every eval set of ``cfg``, built from the corpus just written (its user turns excluded, as eval does);
    a set that cannot be built here is skipped with its reason."""
    skipped: dict[str, str] = {}
    exclude = eval_sets.shard_queries(cfg.output_dir)
    sets = [
        _guarded("agent_h", skipped, lambda: eval_sets.set_items(eval_sets.build_agent_h_set(cfg, exclude))),
        _guarded("tool_use", skipped, lambda: eval_sets.set_items(eval_sets.build_tool_use(cfg, exclude))),
    ]
    questions = _guarded("bfcl", skipped, lambda: eval_sets.build_bfcl(cfg))
    sets.append(eval_sets.bfcl_items(questions) if questions else None)
    rollouts = _guarded("rollouts", skipped, lambda: eval_sets.rollout_items(cfg))
    general = eval_sets.general_items(cfg)
    for found, why in (rollouts or ([], {}), general):
        sets += found
        skipped.update(why)
    return [s for s in sets if s is not None], skipped


def attach_to_manifest(
    cfg: Config, manifest: dict[str, Any], progress: Callable[[str], None]
) -> dict[str, Any]:
    """The data stage's last step: scan, write the report, and add its summary to ``manifest.json``."""
    progress("data: contamination of the eval sets by the corpus (13-gram overlap)")
    started = time.perf_counter()
    sets, skipped = data_stage_sets(cfg)
    report = write(scan(cfg, eval_sets.shard_texts(cfg.output_dir), sets, skipped), cfg.output_dir, started)
    manifest = {**manifest, REPORT: contamination.summary(report)}
    (Path(cfg.output_dir) / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest


def for_eval(cfg: Config, corpus: list[Record], built: Built) -> tuple[dict[str, Any] | None, Built]:
    """Eval's scan of the sets it has built and the rollout and general sets, against the corpus it has read
    (None when there is no corpus under ``output_dir``); with ``eval.decontaminate`` the built sets come back
    without their contaminated items."""
    if not corpus:
        return None, built
    started = time.perf_counter()
    sets = eval_sets.built_items(built)
    skipped: dict[str, str] = {}
    for found, why in (_guarded("rollouts", skipped, lambda: eval_sets.rollout_items(cfg)) or ([], {}),
                       eval_sets.general_items(cfg)):  # fmt: skip
        sets += found
        skipped.update(why)
    report = write(scan(cfg, eval_sets.record_texts(corpus), sets, skipped), cfg.output_dir, started)
    return report, drop(built, report) if cfg.eval.decontaminate else built


def contaminated(report: dict[str, Any] | None, name: str) -> set[str]:
    return set(((report or {}).get("sets", {}).get(name) or {}).get("contaminated_ids", []))


def _without(evalset: EvalSet, ids: set[str]) -> EvalSet:
    """The set less ``ids``: its manifest's ``taken`` recounted and the drop recorded; a new fingerprint."""
    kept = [s for s in evalset.samples if s.id not in ids]
    key = (lambda s: s.case) if evalset.name == "agent_h" else (lambda s: s.source)
    manifest = {k: v for k, v in evalset.manifest.items() if k != "fingerprint"}
    manifest["taken"] = {k: 0 for k in manifest.get("taken", {})} | dict(Counter(key(s) for s in kept))
    manifest["decontaminated"] = {"dropped": len(evalset.samples) - len(kept), "ids": sorted(ids)}
    return make_set(evalset.name, kept, manifest)


def drop(built: Built, report: dict[str, Any]) -> Built:
    """The built sets without the items the report finds contaminated."""
    bad = contaminated(report, "bfcl")
    return replace(
        built,
        agent_h=_without(built.agent_h, contaminated(report, "agent_h")),
        tool_use=_without(built.tool_use, contaminated(report, "tool_use")),
        bfcl={qid: q for qid, q in built.bfcl.items() if f"bfcl/{qid}" not in bad},
    )


class WithoutTasks:
    """An environment factory less some of its tasks (the contaminated ones): the rest as the env has them."""

    def __init__(self, inner: EnvironmentFactory, drop_ids: set[str]) -> None:
        self.inner, self.drop_ids, self.name = inner, drop_ids, inner.name

    def load_tasks(self) -> list[Task]:
        return [t for t in self.inner.load_tasks() if t.id not in self.drop_ids]

    def make(self, task: Task) -> Any:
        return self.inner.make(task)


def rollout_factories(cfg: Config, report: dict[str, Any] | None) -> dict[str, EnvironmentFactory] | None:
    """With ``eval.decontaminate``: the rollout environments less their contaminated tasks (None: run them as
    ``rollout.envs`` says)."""
    if not cfg.eval.decontaminate or report is None:
        return None
    from agentflan.rollout.run import load_env

    return {name: WithoutTasks(load_env(cfg, name), contaminated(report, name)) for name in cfg.rollout.envs}


def general_exclude(cfg: Config, report: dict[str, Any] | None) -> dict[str, set[str]] | None:
    """``exclude`` for the general runner (task -> contaminated item ids) with ``eval.decontaminate``."""
    if not cfg.eval.decontaminate or report is None:
        return None
    return eval_sets.general_exclude({name: sorted(contaminated(report, name)) for name in report["sets"]})


__all__ = ["attach_to_manifest", "for_eval", "drop", "rollout_factories", "general_exclude"]
