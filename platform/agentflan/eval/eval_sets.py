"""Every eval set a config runs, as items for the contamination scan, and the training text it is compared with.

One place lists them, so that ``agentflan data`` and ``agentflan eval`` scan the same sets and a new set is
added once. An item's text is what the model is asked, never the reference answer or the tools offered:

=====================  ==============================================================================
agent_h                the user query of each sample (cases a-d), built as eval builds it
tool_use               the user query of each sample
bfcl                   the user turns of each single-turn question (``eval.bfcl.data_dir`` set)
agentbench_db          the task's question (``description``; the table is context, like a tool list)
bfcl_multi_turn        the user turns of every turn of the entry (only with ``bfcl-eval`` installed)
general.<task>         the text ``agentflan.eval.general.eval_items`` gives (GSM8K, MMLU via lm-eval),
                       when that module is present
=====================  ==============================================================================

The rollout sets are listed with the config's ``rollout.<env>`` section (its data, limit, categories), whether
or not ``rollout.envs`` names them; ``runs`` says whether ``agentflan eval`` plays them.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from agentflan.config import Config
from agentflan.data.record import Record
from agentflan.eval import bfcl_data
from agentflan.eval.agent_h import build_agent_h
from agentflan.eval.contamination import Item
from agentflan.eval.sources import EvalSet, EvalSources, normalize_query
from agentflan.eval.tool_calls import build_tool_use_set

TRAINING_SPLITS = ("train",)  # the validation split is never trained on
BFCL_SET = dict[str, tuple[str, dict[str, Any], list | None, list[dict[str, str]]]]
NO_BFCL_EVAL = "skipped: bfcl-eval not installed"


@dataclass(frozen=True)
class EvalItems:
    """One eval set's items; ``runs``: whether ``agentflan eval`` with this config generates for it."""

    name: str
    items: list[Item]
    runs: bool = True


@dataclass(frozen=True)
class Built:
    """The sets eval generates for, built once (Agent-H, tool use, BFCL single-turn questions)."""

    agent_h: EvalSet
    tool_use: EvalSet
    bfcl: BFCL_SET


def build_agent_h_set(cfg: Config, exclude_queries: set[str]) -> EvalSet:
    e = cfg.eval
    return build_agent_h(
        EvalSources.from_dir(e.data_dir),
        cfg.seed,
        exclude_queries=exclude_queries,
        max_per_case=e.max_per_case,
        max_hotpot=e.max_hotpot,
        output_format=e.output_format,
    )


def build_tool_use(cfg: Config, exclude_queries: set[str]) -> EvalSet:
    e = cfg.eval
    return build_tool_use_set(
        EvalSources.from_dir(e.data_dir),
        cfg.seed,
        exclude_queries=exclude_queries,
        max_per_source=e.max_tool_use_per_source,
        output_format=e.output_format,
    )


def build_bfcl(cfg: Config) -> BFCL_SET:
    """BFCL's single-turn questions as eval prompts them ({} without ``eval.bfcl.data_dir``)."""
    b = cfg.eval.bfcl
    if not b.data_dir:
        return {}
    return bfcl_data.prompts(b.data_dir, b.categories, b.max_per_category, cfg.eval.output_format)


def build(cfg: Config, exclude_queries: Iterable[str]) -> Built:
    """Agent-H, tool use and BFCL questions exactly as ``agentflan eval`` builds them: the training corpus's
    user turns (``exclude_queries``, normalised) are left out before any 13-gram is compared."""
    exclude = set(exclude_queries)
    return Built(build_agent_h_set(cfg, exclude), build_tool_use(cfg, exclude), build_bfcl(cfg))


def _user_text(turns: Iterable[Any]) -> str:
    return "\n".join(
        m["content"] for m in turns if isinstance(m, dict) and m.get("role") == "user" and m.get("content")
    )


def set_items(evalset: EvalSet) -> EvalItems:
    """Agent-H (grouped by case) or tool use (by source): each sample's user query."""
    group = (lambda s: s.case) if evalset.name == "agent_h" else (lambda s: s.source)
    return EvalItems(evalset.name, [Item(s.id, s.query, group(s)) for s in evalset.samples])


def bfcl_items(questions: BFCL_SET) -> EvalItems:
    """BFCL single-turn questions under the prompt ids eval gives them (``bfcl/<id>``), grouped by category."""
    items = [Item(f"bfcl/{qid}", _user_text(msgs), cat) for qid, (cat, _, _, msgs) in questions.items()]
    return EvalItems("bfcl", items)


def built_items(built: Built) -> list[EvalItems]:
    """The items of the sets eval generates prompts for."""
    return [set_items(built.agent_h), set_items(built.tool_use)] + (
        [bfcl_items(built.bfcl)] if built.bfcl else []
    )


def rollout_items(cfg: Config) -> tuple[list[EvalItems], dict[str, str]]:
    """The rollout environments' tasks (as each would load them with this config), and the sets skipped."""
    from agentflan.rollout.run import load_env

    sets, skipped = [], {}
    db = load_env(cfg, "agentbench_db").load_tasks()
    items = [Item(t.id, t.data["description"], t.category) for t in db]
    sets.append(EvalItems("agentbench_db", items, "agentbench_db" in cfg.rollout.envs))
    if importlib.util.find_spec("bfcl_eval") is None:
        skipped["bfcl_multi_turn"] = NO_BFCL_EVAL
    else:
        entries = load_env(cfg, "bfcl_multi_turn").load_tasks()
        items = [
            Item(t.id, _user_text(m for turn in t.data["question"] for m in turn), t.category)
            for t in entries
        ]
        sets.append(EvalItems("bfcl_multi_turn", items, "bfcl_multi_turn" in cfg.rollout.envs))
    return sets, skipped


def general_items(cfg: Config) -> tuple[list[EvalItems], dict[str, str]]:
    """GSM8K, MMLU, ... through :func:`agentflan.eval.general.eval_items` (task -> [(item id, text)]); sets
    named ``general.<task>``."""
    from agentflan.eval.general import eval_items

    try:  # {} when the config names no general tasks
        tasks = eval_items(cfg)
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # a task's data cannot be read here
        return [], {"general": f"skipped: {type(e).__name__}: {e}"}
    return [
        EvalItems(f"general.{t}", [Item(str(i), text) for i, text in items]) for t, items in tasks.items()
    ], {}


def general_exclude(contaminated: dict[str, list[str]]) -> dict[str, set[str]]:
    """``exclude`` for the general runner: task -> ids of its contaminated items (from the report's sets)."""
    prefix = "general."
    return {name[len(prefix) :]: set(ids) for name, ids in contaminated.items() if name.startswith(prefix)}


def message_texts(message: dict[str, Any]) -> Iterator[str]:
    """The training text of one user or assistant message: its content, its reasoning and its native calls
    (name and arguments), each a text of its own so no n-gram runs from one into the next."""
    if message.get("role") not in ("user", "assistant"):
        return
    for key in ("content", "reasoning"):
        if message.get(key):
            yield message[key]
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        args = fn.get("arguments")
        yield f"{fn.get('name') or ''} {args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)}"


def record_texts(records: Iterable[Record]) -> Iterator[str]:
    """Training text of corpus records already read (``read_corpus``), the training splits only."""
    for r in records:
        if r.meta.get("split", "train") in TRAINING_SPLITS:
            for m in r.messages:
                yield from message_texts(m.to_dict())


def _rows(output_dir: str | Path, columns: list[str]) -> Iterator[dict[str, Any]]:
    """The corpus shards' rows (``data.pipeline.corpus_files``' glob: the data stage imports this module)."""
    for shard in sorted((Path(output_dir) / "corpus").glob("part-*.parquet")):
        for batch in pq.ParquetFile(shard).iter_batches(columns=columns, batch_size=2048):
            yield from batch.to_pylist()


def shard_texts(output_dir: str | Path) -> Iterator[str]:
    """Training text streamed from the corpus shards under ``output_dir``, a batch of rows at a time."""
    for row in _rows(output_dir, ["split", "messages"]):
        if row["split"] in TRAINING_SPLITS:
            for m in row["messages"]:
                yield from message_texts(m)


def shard_queries(output_dir: str | Path) -> set[str]:
    """Every user turn of every split, normalised: ``training_queries(read_corpus(output_dir))`` without
    making the records (what eval leaves out of Agent-H and tool use)."""
    return {
        normalize_query(m["content"] or "")
        for row in _rows(output_dir, ["messages"])
        for m in row["messages"]
        if m["role"] == "user"
    }
