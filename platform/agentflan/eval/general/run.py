"""Run our GSM8K / MMLU tasks (:mod:`agentflan.eval.general.tasks`) with lm-evaluation-harness on an HF model.

The model loads through lm-eval's own HF class (``HFLM``, what ``--model hf`` builds): in this process (the
driver) on the CPU, or with ``eval.use_gpu`` in a one-GPU Ray task (a cluster job's driver may have no GPU),
and is freed when the tasks are scored. The agent evals' actors are gone by then, so a GPU holds one copy at
a time. lm-eval's seeds are its defaults (the CLI's ``--seed 0,1234,1234,1234``), so its CLI run on the same
task folder (``report["command"]``) gives the same numbers.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import shlex
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from agentflan.config import Config
from agentflan.config.eval import GSM8K_TASK, MMLU_GROUP
from agentflan.eval.general.tasks import WrittenTasks, write_tasks
from agentflan.eval.stats import Z95


def general_model(cfg: Config) -> str:
    """The HF model the general tasks score: ``eval.model`` when eval loads a local model (kind hf), else the
    exported ``<output_dir>/model`` (with ``eval.kind: openai``, eval.model is a served name, not a path)."""
    e = cfg.eval
    return e.model if e.model and e.kind == "hf" else str(Path(cfg.output_dir) / "model")


def normal_interval(value: float, stderr: float | None) -> tuple[float | None, float | None]:
    """The 95% interval ``value ± 1.96·stderr``, clipped to [0, 1]: the normal interval from lm-eval's
    standard error (for a mean of 0/1 scores, the sample standard deviation over sqrt(n)). Unlike the Wilson
    intervals of the agent evals it collapses to a point at 0 or 1; it is lm-eval's own error, reported as
    lm-eval reports it. None where lm-eval gives no stderr (n = 1)."""
    if stderr is None or math.isnan(stderr):
        return None, None
    return max(0.0, value - Z95 * stderr), min(1.0, value + Z95 * stderr)


def lm_eval_command(model_path: str, written: WrittenTasks, batch_size: int, device: str) -> str:
    """lm-eval's own CLI on our task folder: it prints the numbers :func:`run_general` reports."""
    return shlex.join(
        [
            "python", "-m", "lm_eval",
            "--model", "hf",
            "--model_args", f"pretrained={model_path}",
            "--tasks", ",".join(written.request),
            "--include_path", str(written.include_path),
            "--batch_size", str(batch_size),
            "--device", device,
        ]
    )  # fmt: skip


def run_general(
    cfg: Config,
    model_path: str | None = None,
    exclude: Mapping[str, set[str]] | None = None,
    progress: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Score ``eval.general.tasks`` on ``model_path`` (default :func:`general_model`), less the items of
    ``exclude[task]``. Returns per task its primary metric (GSM8K: exact match under "strict-match"; MMLU:
    acc) with ``value``, ``stderr``, the 95% ``low``/``high`` of :func:`normal_interval` and ``n``; lm-eval's
    other filters under ``also``; ``agentflan_mmlu`` as lm-eval aggregates it when requested. Everything is
    written under ``<output_dir>/eval/general/``: task YAMLs, test splits, lm-eval's results.json and every
    scored item in ``samples/<task>.jsonl``."""
    import lm_eval

    g = cfg.eval.general
    model_path = model_path or general_model(cfg)
    if not (Path(model_path) / "config.json").exists():
        raise FileNotFoundError(f"eval.general: no model at {model_path}: train first, or pass model=PATH")
    run_dir = Path(cfg.output_dir) / "eval" / "general"
    written = write_tasks(g, run_dir, exclude)
    device = "cuda" if cfg.eval.use_gpu else "cpu"
    t0 = time.time()
    results: dict[str, Any] = {"results": {}, "n-samples": {}}
    if written.request:
        progress(f"eval: general capability ({', '.join(written.request)}) with lm-eval on {device}")
        args = (model_path, written.request, str(written.include_path), g.batch_size, device)
        if device == "cpu":
            results = evaluate(*args) or results
        else:  # a GPU Ray task, as the held-out loss: the driver of a cluster job may have no GPU
            import ray

            results = ray.get(ray.remote(num_gpus=1)(evaluate).remote(*args)) or results
    samples = results.pop("samples", {})
    (run_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    _write_samples(run_dir / "samples", samples, written)
    tasks = {name: _task_scores(results, name, written) for name in written.ids}
    if written.group:
        tasks[MMLU_GROUP] = _group_scores(results, written)
    return {
        "tasks": tasks,
        "model": model_path,
        "include_path": str(written.include_path),
        "command": lm_eval_command(model_path, written, g.batch_size, device),
        "lm_eval_version": getattr(lm_eval, "__version__", None),
        "seconds": round(time.time() - t0, 2),
    }


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Nothing goes to the network while lm-eval runs, whenever ``datasets`` was imported. ``datasets`` reads
    ``HF_HUB_OFFLINE`` once, at import, and otherwise pings S3 to count a "download" of every local ``json``
    load (``datasets.load.increase_load_count``); an earlier stage of the job may have imported it online."""
    import datasets.config
    import huggingface_hub.constants as hub

    saved = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_UPDATE_DOWNLOAD_COUNTS, hub.HF_HUB_OFFLINE)
    env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    datasets.config.HF_HUB_OFFLINE, datasets.config.HF_UPDATE_DOWNLOAD_COUNTS, hub.HF_HUB_OFFLINE = True, False, True
    os.environ.update({k: "1" for k in env})
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_UPDATE_DOWNLOAD_COUNTS, hub.HF_HUB_OFFLINE = saved
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def evaluate(
    model_path: str, tasks: list[str], include_path: str, batch_size: int, device: str
) -> dict[str, Any] | None:
    """lm-eval's ``simple_evaluate`` on our tasks with its HF model class, as ``--model hf`` builds it; the
    model is freed before returning. Only our folder is indexed (``include_defaults=False``): same tasks,
    without reading lm-eval's thousands of stock YAMLs."""
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with hub_offline():
        lm = HFLM(pretrained=model_path, device=device, batch_size=batch_size)
    try:
        with hub_offline():
            results = lm_eval.simple_evaluate(
                model=lm,
                tasks=tasks,
                task_manager=TaskManager(include_path=include_path, include_defaults=False),
                log_samples=True,
            )
    finally:
        del lm
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    if results is not None:
        results["samples"] = {t: [_sample(x) for x in xs] for t, xs in results.get("samples", {}).items()}
    return results


def _sample(x: dict[str, Any]) -> dict[str, Any]:
    """One scored request as lm-eval logs it (``--log_samples``), without the prompt and the doc: the doc_id,
    filter, target, the filtered response and each metric's value."""
    keep = {k: x[k] for k in ("doc_id", "filter", "target", "filtered_resps") if k in x}
    return {**keep, **{m: x[m] for m in x.get("metrics", []) if m in x}}


def _write_samples(folder: Path, samples: dict[str, list[dict[str, Any]]], written: WrittenTasks) -> None:
    """``samples/<task>.jsonl``: every scored item with our item id beside lm-eval's doc_id (which answers
    the model got right, traceable to the source row)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for task, rows in samples.items():
        ids = written.ids.get(task, [])
        with (folder / f"{task}.jsonl").open("w", encoding="utf-8") as f:
            for x in rows:
                d = x.get("doc_id")
                item = ids[d] if isinstance(d, int) and 0 <= d < len(ids) else None
                f.write(json.dumps({"item_id": item, **x}, ensure_ascii=False, default=str) + "\n")


def _score(numbers: dict[str, Any], key: str, n: int) -> dict[str, Any]:
    """One lm-eval number (``metric,filter``) with its stderr and normal interval."""
    value = numbers.get(key)
    metric, _, filt = key.partition(",")
    stderr = numbers.get(f"{metric}_stderr,{filt}")
    stderr = float(stderr) if isinstance(stderr, (int, float)) else None
    if value is None:
        return {
            "metric": metric,
            "filter": filt,
            "value": None,
            "stderr": None,
            "low": None,
            "high": None,
            "n": n,
        }
    low, high = normal_interval(float(value), stderr)
    return {
        "metric": metric,
        "filter": filt,
        "value": float(value),
        "stderr": stderr,
        "low": low,
        "high": high,
        "n": n,
    }


def _task_scores(results: dict[str, Any], name: str, written: WrittenTasks) -> dict[str, Any]:
    numbers = results["results"].get(name, {})
    n = int(results["n-samples"].get(name, {}).get("effective", len(written.ids[name])))
    keys = [k for k in numbers if "," in k and "_stderr," not in k]
    if not keys:  # every item excluded: the task's metric, without a value
        keys = ["exact_match,strict-match" if name == GSM8K_TASK else "acc,none"]
    primary = "acc,none" if "acc,none" in keys else keys[0]
    row = _score(numbers, primary, n if numbers else 0)
    row.update(excluded=written.excluded[name], num_fewshot=written.shots[name])
    row["also"] = {k: _score(numbers, k, n) for k in keys if k != primary}
    return row


def _group_scores(results: dict[str, Any], written: WrittenTasks) -> dict[str, Any]:
    n = sum(int(results["n-samples"].get(s, {}).get("effective", 0)) for s in written.group)
    row = _score(results["results"].get(MMLU_GROUP, {}), "acc,none", n)
    row.update(excluded=sum(written.excluded[s] for s in written.group), subtasks=len(written.group))
    return row
