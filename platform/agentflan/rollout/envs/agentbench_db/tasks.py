"""AgentBench dbbench task files: JSONL (one entry a line) or a JSON list, as AgentBench's loader reads them.

Each entry is checked up front so that a bad file fails at load time with one line naming ``file:line`` and
the key, never halfway through a rollout.
"""

from __future__ import annotations

import json
from itertools import zip_longest
from pathlib import Path
from typing import Any

from agentflan.rollout.envs.agentbench_db.scoring import MODIFYING
from agentflan.rollout.types import Task

ENV_NAME = "agentbench_db"


class TaskFileError(ValueError):
    """A dbbench file that cannot be read; the message is one line naming the file and line."""


def category_of(entry: dict[str, Any]) -> str:
    """AgentBench's bucket: INSERT / UPDATE / DELETE by ``type[0]``, every other type (other, counting,
    ranking, aggregation-*, ...) is a SELECT task."""
    kind = entry["type"][0]
    return kind if kind in MODIFYING else "SELECT"


def tables_of(entry: dict[str, Any]) -> list[dict[str, Any]]:
    return entry["table"] if isinstance(entry["table"], list) else [entry["table"]]


def _check_table(table: Any) -> str | None:
    if not isinstance(table, dict) or not isinstance(table.get("table_name"), str):
        return "table.table_name must be a string"
    info = table.get("table_info")
    if not isinstance(info, dict) or not isinstance(info.get("columns"), list) or not info["columns"]:
        return "table.table_info.columns must be a non-empty list"
    if not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in info["columns"]):
        return "table.table_info.columns[].name must be strings"
    rows = info.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        return "table.table_info.rows must be a list of lists"
    width = len(info["columns"])
    for k, row in enumerate(rows):
        if len(row) != width:
            return f"table.table_info.rows[{k}] has {len(row)} values for {width} columns"
    return None


def check_entry(entry: Any) -> str | None:
    """Why an entry is not a dbbench task (None when it is one)."""
    if not isinstance(entry, dict):
        return "entry must be a JSON object"
    if not isinstance(entry.get("description"), str):
        return "'description' must be a string"
    kinds = entry.get("type")
    if not isinstance(kinds, list) or not kinds or not isinstance(kinds[0], str):
        return "'type' must be a non-empty list of strings"
    if "table" not in entry:
        return "'table' is missing"
    tables = entry["table"] if isinstance(entry["table"], list) else [entry["table"]]
    for table in tables:
        if problem := _check_table(table):
            return problem
    if kinds[0] in MODIFYING:
        sql = entry.get("sql")
        if not entry.get("answer_md5") and not (isinstance(sql, dict) and isinstance(sql.get("query"), str)):
            return f"a {kinds[0]} task needs 'answer_md5' (or 'sql.query' to compute it from)"
    elif not isinstance(entry.get("label"), list):
        return "'label' must be a list (the SELECT answer)"
    return None


def _entries(path: Path) -> list[tuple[str, Any]]:
    """(where, entry) for every entry; ``where`` is ``file:line`` (JSONL) or ``file[index]`` (JSON)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TaskFileError(f"{path}: cannot read dbbench tasks: {e}") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise TaskFileError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        if not isinstance(data, list):
            raise TaskFileError(f"{path}: a .json dbbench file must hold a list of tasks")
        return [(f"{path}[{i}]", entry) for i, entry in enumerate(data)]
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"{path}:{number}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise TaskFileError(f"{path}:{number}: invalid JSON: {e.msg} at column {e.colno}") from None
    return out


def load_dbbench(path: str | Path, limit: int | None = None) -> list[Task]:
    """Every task of a dbbench file, ids ``0..n-1`` as AgentBench's sample indices.

    ``limit`` keeps that many tasks taken in turn from each category (SELECT, INSERT, UPDATE, ... in file
    order), so a small run still scores every category ``overall_cat_accuracy`` averages."""
    path = Path(path)
    tasks: list[Task] = []
    for index, (where, entry) in enumerate(_entries(path)):
        if problem := check_entry(entry):
            raise TaskFileError(f"{where}: {problem}")
        tasks.append(Task(env=ENV_NAME, id=str(index), category=category_of(entry), data=entry))
    if not tasks:
        raise TaskFileError(f"{path}: no dbbench tasks")
    if limit is None or limit >= len(tasks):
        return tasks
    by_category: dict[str, list[Task]] = {}
    for task in tasks:
        by_category.setdefault(task.category, []).append(task)
    interleaved = [t for group in zip_longest(*by_category.values()) for t in group if t is not None]
    chosen = {id(t) for t in interleaved[: max(limit, 0)]}
    return [t for t in tasks if id(t) in chosen]
