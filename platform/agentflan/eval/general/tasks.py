"""Our lm-evaluation-harness tasks, GSM8K and MMLU, written at run time over local JSONL files: nothing
downloads.

lm-eval reads a local dataset through a task YAML with ``dataset_path: json``, ``dataset_name: null`` and
``dataset_kwargs: {data_files: {...}}`` (its docs/new_task_guide.md, "Using Local Datasets"). ``data_files``
must be absolute paths, and the test split is written per run (limited, less excluded items), so the YAMLs are
made here from dicts, into ``<output_dir>/eval/general/tasks/``, and lm-eval loads them with
``TaskManager(include_path=...)``; its own CLI reads the same folder with ``--include_path``.

Each task mirrors lm-eval's stock one; only the data source and the names differ (tests/eval/test_general.py
compares them key by key with the installed package's YAMLs):

- ``agentflan_gsm8k``: ``lm_eval/tasks/gsm8k/gsm8k.yaml``: "Question: ...\\nAnswer:", 5 shots drawn from
  train, greedy until "Question:", exact match on the ``####`` answer under the "strict-match" and
  "flexible-extract" regex filters.
- ``agentflan_mmlu_<subject>``: ``lm_eval/tasks/mmlu/default/_default_template_yaml``: the question and A-D,
  the log-likelihood of each letter, the first 5 dev rows as shots (the stock task leaves the shot count to
  the command line; MMLU's protocol, and lm-eval's leaderboard runs, use 5). ``agentflan_mmlu`` groups every
  subject found under ``data_dir`` with lm-eval's size-weighted mean, as the stock ``mmlu`` group does.

The test split of a run is the first ``limit`` rows of the source test file, less the excluded items (the
contamination report's); ``ids.json`` beside it maps lm-eval's ``doc_id`` back to our item id, the source row
(``gsm8k/test/17``, ``mmlu/abstract_algebra/test/3``). Few-shot pools are read where they lie.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agentflan.config import Config
from agentflan.config.eval import GSM8K_TASK, MMLU_GROUP, MMLU_SUBJECTS, GeneralConfig

DEFAULT_SHOTS = 5
# lm-eval's stock gsm8k: metric, stops and filters exactly as lm_eval/tasks/gsm8k/gsm8k.yaml has them.
_GSM8K = {
    "output_type": "generate_until",
    "training_split": "train",
    "fewshot_split": "train",
    "test_split": "test",
    "doc_to_text": "Question: {{question}}\nAnswer:",
    "doc_to_target": "{{answer}}",
    "metric_list": [
        {
            "metric": "exact_match",
            "aggregation": "mean",
            "higher_is_better": True,
            "ignore_case": True,
            "ignore_punctuation": False,
            "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"],
        }
    ],
    "generation_kwargs": {
        "until": ["Question:", "</s>", "<|im_end|>"],
        "do_sample": False,
        "temperature": 0.0,
    },
    "repeats": 1,
    "filter_list": [
        {
            "name": "strict-match",
            "filter": [
                {"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
                {"function": "take_first"},
            ],
        },
        {
            "name": "flexible-extract",
            "filter": [
                {"function": "regex", "group_select": -1, "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                {"function": "take_first"},
            ],
        },
    ],
    "metadata": {"version": 3.0},
}
# lm-eval's stock mmlu default template (lm_eval/tasks/mmlu/default/_default_template_yaml).
_MMLU = {
    "test_split": "test",
    "fewshot_split": "dev",
    "fewshot_config": {"sampler": "first_n"},
    "output_type": "multiple_choice",
    "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\n"
    "D. {{choices[3]}}\nAnswer:",
    "doc_to_choice": ["A", "B", "C", "D"],
    "doc_to_target": "answer",
    "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    "metadata": {"version": 1.0},
}


class GeneralTaskError(ValueError):
    """A general task that cannot be built; the message names the config key."""


@dataclass(frozen=True)
class GeneralTask:
    """One lm-eval task over local files: its name, item-id prefix, test file and few-shot pool."""

    name: str
    prefix: str  # item ids are <prefix>/test/<row>
    test_file: Path
    fewshot_file: Path
    fewshot_split: str  # train (GSM8K) or dev (MMLU)
    subject: str | None = None

    def item_id(self, row: int) -> str:
        return f"{self.prefix}/test/{row}"


def gsm8k_task(data_dir: Path) -> GeneralTask:
    d = data_dir / "gsm8k"
    return GeneralTask(GSM8K_TASK, "gsm8k", d / "test.jsonl", d / "train.jsonl", "train")


def mmlu_task(data_dir: Path, subject: str) -> GeneralTask:
    d = data_dir / "mmlu" / "jsonl" / subject
    return GeneralTask(
        f"{MMLU_GROUP}_{subject}", f"mmlu/{subject}", d / "test.jsonl", d / "dev.jsonl", "dev", subject
    )


def resolve(g: GeneralConfig) -> list[GeneralTask]:
    """The configured tasks, ``agentflan_mmlu`` expanded into every subject with a test file under
    ``data_dir``; each one's files checked (a missing one raises :class:`GeneralTaskError` naming the key)."""
    data = Path(g.data_dir)
    tasks: dict[str, GeneralTask] = {}
    for name in g.tasks:
        if name == GSM8K_TASK:
            tasks[name] = gsm8k_task(data)
        elif name == MMLU_GROUP:
            found = [s for s in MMLU_SUBJECTS if (data / "mmlu" / "jsonl" / s / "test.jsonl").is_file()]
            if not found:
                raise GeneralTaskError(
                    f"eval.general.tasks: {MMLU_GROUP} found no MMLU subject under {data} "
                    "(expected mmlu/jsonl/<subject>/test.jsonl; eval.general.data_dir)"
                )
            tasks.update({t.name: t for t in (mmlu_task(data, s) for s in found)})
        else:
            tasks[name] = mmlu_task(data, name[len(MMLU_GROUP) + 1 :])
    for t in tasks.values():
        for f in (t.test_file, t.fewshot_file):
            if not f.is_file():
                raise GeneralTaskError(
                    f"eval.general.data_dir: {t.name} needs {f.relative_to(data)}, not found under {data}"
                )
    return list(tasks.values())


def read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if limit is not None and len(rows) >= limit:
                break
            if line.strip():
                rows.append(json.loads(line))
    return rows


def item_text(row: Mapping[str, Any]) -> str:
    """What the contamination scan compares: the question, and for MMLU its four choices, one a line."""
    choices = row.get("choices") or []
    return "\n".join([str(row["question"]), *map(str, choices)])


def eval_items(cfg: Config | GeneralConfig) -> dict[str, list[tuple[str, str]]]:
    """Per configured task, ``(item_id, text)`` of every test item a run would score (the first ``limit``
    rows), before any exclusion: what the contamination scan looks for in the training corpus."""
    g = cfg.eval.general if isinstance(cfg, Config) else cfg
    return {
        t.name: [(t.item_id(i), item_text(row)) for i, row in enumerate(read_jsonl(t.test_file, g.limit))]
        for t in resolve(g)
    }


@dataclass
class WrittenTasks:
    """What :func:`write_tasks` wrote: the folder to include, the names to ask lm-eval for (a group name
    stands for its subjects), and per task the item id of each doc_id, the items excluded and the shot
    count."""

    include_path: Path
    request: list[str]
    ids: dict[str, list[str]] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)
    shots: dict[str, int] = field(default_factory=dict)
    group: list[str] = field(default_factory=list)  # the subjects agentflan_mmlu stands for, if requested


def write_tasks(
    g: GeneralConfig, run_dir: Path, exclude: Mapping[str, set[str]] | None = None
) -> WrittenTasks:
    """The task YAMLs under ``run_dir/tasks`` and each test split under ``run_dir/data/<task>/``: the first
    ``limit`` rows less the items of ``exclude[task]`` (ids as :func:`eval_items` gives them). An exclusion
    naming a task that is not configured, or an id that is not one of the task's, raises ValueError: a
    contamination report for other data must not silently exclude nothing. A task left with no items is not
    given to lm-eval (its ``ids`` is empty)."""
    tasks = resolve(g)
    exclude = exclude or {}
    unknown = sorted(set(exclude) - {t.name for t in tasks})
    if unknown:
        raise ValueError(f"exclude: {', '.join(unknown)} is not a configured general task")
    tasks_dir, data_dir = run_dir / "tasks", run_dir / "data"
    for d in (tasks_dir, data_dir):  # a previous run's tasks must not be picked up by include_path
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    written = WrittenTasks(include_path=tasks_dir, request=[])
    for t in tasks:
        rows = read_jsonl(t.test_file, g.limit)
        ids = [t.item_id(i) for i in range(len(rows))]
        drop = set(exclude.get(t.name, ()))
        bad = sorted(i for i in drop if not _is_item_of(t, i))
        if bad:
            raise ValueError(
                f"exclude[{t.name}]: {bad[0]!r} is not an item id of {t.name} ({t.prefix}/test/<row>)"
            )
        keep = [k for k, i in enumerate(ids) if i not in drop]
        written.ids[t.name] = [ids[k] for k in keep]
        written.excluded[t.name] = len(rows) - len(keep)
        written.shots[t.name] = _shots(g, t)
        if not keep:
            continue
        (data_dir / t.name).mkdir()
        test = data_dir / t.name / "test.jsonl"
        test.write_text(
            "".join(json.dumps(rows[k], ensure_ascii=False) + "\n" for k in keep), encoding="utf-8"
        )
        (data_dir / t.name / "ids.json").write_text(json.dumps(written.ids[t.name]))
        files = {t.fewshot_split: str(t.fewshot_file.resolve()), "test": str(test.resolve())}
        spec = task_yaml(t, files, written.shots[t.name], g.max_gen_toks, run_dir / "hf_datasets")
        _dump(spec, tasks_dir / f"{t.name}.yaml")
    subjects = [t.name for t in tasks if t.subject and written.ids[t.name]]
    if MMLU_GROUP in g.tasks and subjects:
        _dump(group_yaml(subjects), tasks_dir / f"{MMLU_GROUP}.yaml")
        written.group = subjects
    written.request = [MMLU_GROUP] if written.group else []
    written.request += [t.name for t in tasks if written.ids[t.name] and t.name not in written.group]
    return written


def task_yaml(
    t: GeneralTask, data_files: dict[str, str], shots: int, max_gen_toks: int | None, cache_dir: Path
) -> dict[str, Any]:
    """The lm-eval task config of ``t`` over ``data_files`` (absolute paths); the datasets cache lives in
    the run's folder, so a run reads nothing another run left in ``~/.cache``."""
    source = {
        "task": t.name,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": data_files, "cache_dir": str(cache_dir.resolve())},
    }
    if t.subject is None:
        spec = {**source, **json.loads(json.dumps(_GSM8K)), "num_fewshot": shots}
        if max_gen_toks is not None:
            spec["generation_kwargs"]["max_gen_toks"] = max_gen_toks
        return spec
    topic = t.subject.replace("_", " ")
    return {
        **source,
        "task_alias": t.subject,
        "description": f"The following are multiple choice questions (with answers) about {topic}.\n\n",
        **json.loads(json.dumps(_MMLU)),
        "num_fewshot": shots,
    }


def group_yaml(subjects: list[str]) -> dict[str, Any]:
    """``agentflan_mmlu``: the subjects' accuracy weighted by their sizes, as lm-eval's stock ``mmlu``
    group."""
    return {
        "group": MMLU_GROUP,
        "task": subjects,
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
        "metadata": {"version": 2},
    }


def _shots(g: GeneralConfig, t: GeneralTask) -> int:
    if t.name in g.num_fewshot:
        return g.num_fewshot[t.name]
    if t.subject is not None and MMLU_GROUP in g.num_fewshot:
        return g.num_fewshot[MMLU_GROUP]
    return DEFAULT_SHOTS


def _is_item_of(t: GeneralTask, item_id: str) -> bool:
    head, _, row = item_id.rpartition("/")
    return head == f"{t.prefix}/test" and row.isdigit()


def _dump(spec: dict[str, Any], path: Path) -> None:
    path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=1000), encoding="utf-8")
