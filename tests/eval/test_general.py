"""General capability (GSM8K, MMLU) through lm-evaluation-harness: our task files mirror lm-eval's stock
tasks, our runner gives exactly what lm-eval's own CLI gives on them, exclusions drop exactly the named items,
and nothing downloads. A tiny Llama built here (no Ray), a few items per task."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from agentflan.config import ConfigError, load_config
from agentflan.eval.general import eval_items, run_general, write_tasks
from agentflan.eval.general.run import normal_interval
from agentflan.eval.general.tasks import DEFAULT_SHOTS, task_yaml
from agentflan.eval.report import flat_metrics, general_metrics, general_section

lm_eval = pytest.importorskip("lm_eval")

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "platform/agentflan/sample_data/general_eval"
STOCK = Path(lm_eval.__file__).parent / "tasks"
MMLU_TASK = "agentflan_mmlu_abstract_algebra"
LIMIT = 6  # items per task: enough for a non-trivial MMLU accuracy, seconds on a CPU
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    """A 2-layer Llama (random weights, seeded) with a byte-level BPE trained on GSM8K train questions; a long
    context, since 5-shot GSM8K prompts run to ~1,500 of its tokens."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = [json.loads(x)["question"] for x in (SAMPLE / "gsm8k/train.jsonl").read_text().splitlines()]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    out = tmp_path_factory.mktemp("general_lm")
    LlamaForCausalLM(cfg).save_pretrained(out)
    fast.save_pretrained(out)
    return out


def _cfg(out: Path, *extra: str):
    return load_config(
        "pipelines/local.yaml",
        [
            f"output_dir={out}",
            f"eval.general.data_dir={SAMPLE}",
            f"eval.general.limit={LIMIT}",
            "eval.general.max_gen_toks=24",
            "eval.general.batch_size=4",
            *extra,
        ],
    )


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt in this process is refused and counted (a library that swallows the error
    is still caught): none may be tried, so nothing downloads. Threads that were already running when the
    test began (an earlier test's library retrying in the background) are refused but not counted: they are
    not this run's."""
    tried: list[tuple] = []
    earlier = {t.ident for t in threading.enumerate()} - {threading.main_thread().ident}

    def refuse(*args, **kwargs):
        if threading.get_ident() not in earlier:
            tried.append((threading.current_thread().name, *args[:2]))
        raise OSError("network access refused by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    yield
    assert not tried, f"network access attempted: {tried}"


def _cli_results(command: str, out: Path) -> tuple[dict, dict[str, list[dict]]]:
    """Run the command the report gives (lm-eval's CLI), offline, with its results and samples written under
    ``out``; return its results.json and the samples per task."""
    args = shlex.split(command)
    assert args[:3] == ["python", "-m", "lm_eval"]
    args = [sys.executable, *args[1:], "--output_path", str(out), "--log_samples"]
    env = {**os.environ, **OFFLINE, "HF_DATASETS_CACHE": str(out / "hf_cache")}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results_file,) = out.rglob("results_*.json")
    samples = {}
    for f in out.rglob("samples_*.jsonl"):
        task = f.name[len("samples_") :].rsplit("_", 1)[0]
        samples[task] = [json.loads(x) for x in f.read_text().splitlines()]
    return json.loads(results_file.read_text()), samples


@pytest.mark.slow  # lm-eval's CLI indexes its thousands of stock tasks first: ~15 s
def test_our_runner_equals_lm_evals_cli(tiny_lm, tmp_path, no_network):
    cfg = _cfg(tmp_path / "run", "eval.general.tasks=[agentflan_gsm8k, agentflan_mmlu]")
    report = run_general(cfg, str(tiny_lm))
    tasks = report["tasks"]
    assert set(tasks) == {"agentflan_gsm8k", MMLU_TASK, "agentflan_mmlu"}
    assert {t: r["n"] for t, r in tasks.items()} == {
        "agentflan_gsm8k": LIMIT,
        MMLU_TASK: LIMIT,
        "agentflan_mmlu": LIMIT,
    }
    assert (
        tasks["agentflan_gsm8k"]["metric"] == "exact_match"
        and tasks["agentflan_gsm8k"]["filter"] == "strict-match"
    )
    assert set(tasks["agentflan_gsm8k"]["also"]) == {"exact_match,flexible-extract"}
    assert tasks[MMLU_TASK]["metric"] == "acc" and tasks[MMLU_TASK]["num_fewshot"] == DEFAULT_SHOTS
    assert 0 < tasks[MMLU_TASK]["value"] < 1  # log-likelihoods decide it: a number worth comparing

    cli, cli_samples = _cli_results(report["command"], tmp_path / "cli")
    ours = json.loads((tmp_path / "run/eval/general/results.json").read_text())
    for task in ("agentflan_gsm8k", MMLU_TASK, "agentflan_mmlu"):
        numbers = {k: v for k, v in cli["results"][task].items() if "," in k}
        assert numbers and numbers == {k: v for k, v in ours["results"][task].items() if "," in k}, task
    for task in ("agentflan_gsm8k", MMLU_TASK):
        row = tasks[task]
        assert row["value"] == cli["results"][task][f"{row['metric']},{row['filter']}"]
        assert row["stderr"] == cli["results"][task][f"{row['metric']}_stderr,{row['filter']}"]
        # the same answers, item by item: generations and filtered responses, not only the means
        mine = [
            json.loads(x)
            for x in (tmp_path / f"run/eval/general/samples/{task}.jsonl").read_text().splitlines()
        ]
        theirs = cli_samples[task]
        metric = row["metric"]
        assert len(mine) == len(theirs) == LIMIT * (2 if task == "agentflan_gsm8k" else 1)  # GSM8K: 2 filters
        assert _answers(mine, metric) == _answers(theirs, metric)
    assert mine[0]["item_id"].startswith("mmlu/abstract_algebra/test/")


def _answers(samples: list[dict], metric: str) -> list[tuple]:
    """Per item and filter: the filtered response and its score. The CLI's samples file writes the numbers
    inside responses as text (log-likelihoods, "False"), so leaves are compared as text."""

    def text(v):
        return [text(x) for x in v] if isinstance(v, (list, tuple)) else str(v)

    rows = sorted(samples, key=lambda x: (x["doc_id"], x["filter"]))
    return [(x["doc_id"], x["filter"], text(x["filtered_resps"]), float(x[metric])) for x in rows]


def test_exclusion_drops_exactly_the_named_items(tiny_lm, tmp_path, no_network):
    cfg = _cfg(
        tmp_path,
        f"eval.general.tasks=[agentflan_gsm8k, {MMLU_TASK}]",
        "eval.general.num_fewshot={agentflan_gsm8k: 0}",
    )
    items = eval_items(cfg)
    assert [i for i, _ in items["agentflan_gsm8k"]] == [f"gsm8k/test/{k}" for k in range(LIMIT)]
    first = json.loads((SAMPLE / "mmlu/jsonl/abstract_algebra/test.jsonl").read_text().splitlines()[0])
    assert items[MMLU_TASK][0] == (
        "mmlu/abstract_algebra/test/0",
        "\n".join([first["question"], *first["choices"]]),
    )

    full = run_general(cfg, str(tiny_lm))
    full_samples = _samples(tmp_path, MMLU_TASK)
    drop = {"agentflan_gsm8k": {"gsm8k/test/1", "gsm8k/test/4"}, MMLU_TASK: {"mmlu/abstract_algebra/test/0"}}
    part = run_general(cfg, str(tiny_lm), exclude=drop)
    for task, ids in drop.items():
        assert part["tasks"][task]["n"] == full["tasks"][task]["n"] - len(ids) == LIMIT - len(ids)
        assert part["tasks"][task]["excluded"] == len(ids)
        kept = json.loads((tmp_path / f"eval/general/data/{task}/ids.json").read_text())
        assert kept == [i for i, _ in items[task] if i not in ids]
    source = (SAMPLE / "gsm8k/test.jsonl").read_text().splitlines()
    written = (tmp_path / "eval/general/data/agentflan_gsm8k/test.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in written] == [json.loads(source[k]) for k in (0, 2, 3, 5)]
    # MMLU's shots are the first dev rows, so every kept item scores as it did with all of them
    assert _samples(tmp_path, MMLU_TASK) == {
        k: v for k, v in full_samples.items() if k != "mmlu/abstract_algebra/test/0"
    }
    assert "Excluded (contaminated) items: agentflan_gsm8k 2" in "\n".join(general_section(part))

    every = {MMLU_TASK: {f"mmlu/abstract_algebra/test/{k}" for k in range(LIMIT)}}
    # a task with nothing left is not given to lm-eval
    w = write_tasks(cfg.eval.general, tmp_path / "y", every)
    assert w.ids[MMLU_TASK] == [] and w.excluded[MMLU_TASK] == LIMIT and w.request == ["agentflan_gsm8k"]
    assert not (w.include_path / f"{MMLU_TASK}.yaml").exists()
    with pytest.raises(ValueError, match=r"exclude\[agentflan_gsm8k\]: 'mmlu/abstract_algebra/test/1'"):
        write_tasks(cfg.eval.general, tmp_path / "x", {"agentflan_gsm8k": {"mmlu/abstract_algebra/test/1"}})
    with pytest.raises(ValueError, match="exclude: agentflan_mmlu_anatomy is not a configured general task"):
        write_tasks(cfg.eval.general, tmp_path / "x", {"agentflan_mmlu_anatomy": set()})


def _samples(out: Path, task: str) -> dict[str, float]:
    rows = (out / f"eval/general/samples/{task}.jsonl").read_text().splitlines()
    return {json.loads(x)["item_id"]: json.loads(x)["acc"] for x in rows}


def test_task_files_mirror_lm_evals_stock_tasks(tmp_path):
    """Every key of lm-eval's stock gsm8k and mmlu default template is ours unchanged, except where the data
    comes from; ours adds only the data source, the task name and the shot count."""
    cfg = _cfg(tmp_path, f"eval.general.tasks=[agentflan_gsm8k, {MMLU_TASK}]")
    written = write_tasks(cfg.eval.general, tmp_path / "g")
    ours = {p.stem: yaml.safe_load(p.read_text()) for p in written.include_path.glob("*.yaml")}
    source_keys = {"task", "dataset_path", "dataset_name", "dataset_kwargs"}
    stock = yaml.safe_load((STOCK / "gsm8k/gsm8k.yaml").read_text())
    gsm = ours["agentflan_gsm8k"]
    assert {k: v for k, v in stock.items() if k not in source_keys | {"tag", "generation_kwargs"}} == {
        k: v for k, v in gsm.items() if k not in source_keys | {"generation_kwargs"}
    }
    assert gsm["generation_kwargs"] == {**stock["generation_kwargs"], "max_gen_toks": 24}
    assert gsm["dataset_path"] == "json" and gsm["dataset_name"] is None
    files = gsm["dataset_kwargs"]["data_files"]
    assert files["train"] == str(SAMPLE / "gsm8k/train.jsonl") and Path(files["test"]).is_absolute()
    template = yaml.safe_load((STOCK / "mmlu/default/_default_template_yaml").read_text())
    subject = yaml.safe_load((STOCK / "mmlu/default/mmlu_abstract_algebra.yaml").read_text())
    mmlu = ours[MMLU_TASK]
    assert {k: v for k, v in template.items() if k not in source_keys} == {
        k: v for k, v in mmlu.items() if k in template and k not in source_keys
    }
    assert (mmlu["description"], mmlu["task_alias"]) == (subject["description"], subject["task_alias"])
    assert set(mmlu) - set(template) - source_keys == {"description", "task_alias", "num_fewshot"}
    assert mmlu["num_fewshot"] == 5 and set(mmlu["dataset_kwargs"]["data_files"]) == {"dev", "test"}
    # num_fewshot overrides land in the task file, so lm-eval's CLI reads them too
    assert task_yaml(written_task(cfg), {}, 0, None, tmp_path)["num_fewshot"] == 0


def written_task(cfg):
    from agentflan.eval.general import resolve

    return resolve(cfg.eval.general)[0]


def test_mistakes_fail_in_one_line_naming_the_key(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as e:
        load_config("pipelines/local.yaml", ["eval.general.tasks=[gsm8k]"])
    (line,) = [x for x in str(e.value).splitlines() if "eval.general" in x]
    assert (
        line.startswith("  eval.general.tasks:")
        and "unknown task 'gsm8k'" in line
        and "agentflan_gsm8k" in line
    )
    with pytest.raises(ConfigError, match="num_fewshot: 'agentflan_gsm8k' is not one of tasks"):
        load_config(
            "pipelines/local.yaml", ["eval.general.tasks=[]", "eval.general.num_fewshot={agentflan_gsm8k: 1}"]
        )

    from agentflan import preflight
    from agentflan.preflight import PreflightError

    cfg = _cfg(tmp_path, "eval.general.tasks=[agentflan_mmlu_anatomy]")
    with pytest.raises(
        PreflightError,
        match=r"^eval.general.data_dir: agentflan_mmlu_anatomy needs mmlu/jsonl/anatomy/test.jsonl",
    ):
        preflight.preflight(cfg, "eval")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PreflightError, match="eval.general.tasks: agentflan_mmlu found no MMLU subject"):
        preflight.preflight(
            _cfg(tmp_path, "eval.general.tasks=[agentflan_mmlu]", f"eval.general.data_dir={empty}"), "eval"
        )
    preflight.preflight(
        _cfg(tmp_path, "eval.general.tasks=[agentflan_mmlu]"), "eval"
    )  # the sample is complete

    real = preflight.importlib.util.find_spec
    monkeypatch.setattr(
        preflight.importlib.util, "find_spec", lambda m, *a: None if m == "lm_eval" else real(m, *a)
    )
    with pytest.raises(PreflightError) as e:
        preflight.preflight(_cfg(tmp_path, "eval.general.tasks=[agentflan_gsm8k]"), "run")
    assert str(e.value) == (
        "eval.general.tasks needs the lm_eval package, which is not installed: pip install 'lm-eval>=0.4.13,<0.5' (a base dependency: pip install -e . brings it)"
    )
    preflight.preflight(
        _cfg(tmp_path, "eval.general.tasks=[agentflan_gsm8k]"), "train"
    )  # train does not evaluate


def test_intervals_report_and_metrics():
    assert normal_interval(0.5, 0.1) == pytest.approx((0.5 - 0.196, 0.5 + 0.196), abs=1e-4)
    assert normal_interval(0.05, 0.1) == (0.0, pytest.approx(0.246, abs=1e-3))  # clipped at 0
    assert normal_interval(1.0, 0.0) == (1.0, 1.0) and normal_interval(0.5, None) == (None, None)
    row = {
        "metric": "acc",
        "filter": "none",
        "value": 0.25,
        "stderr": 0.1,
        "low": 0.054,
        "high": 0.446,
        "n": 8,
    }
    general = {
        "tasks": {
            MMLU_TASK: {**row, "excluded": 0, "also": {}},
            "agentflan_gsm8k": {**row, "value": None, "excluded": 0},
        },
        "command": "python -m lm_eval --model hf",
    }
    assert general_metrics(general) == {
        f"general.{MMLU_TASK}": 0.25,
        f"general.{MMLU_TASK}.ci_low": 0.054,
        f"general.{MMLU_TASK}.ci_high": 0.446,
    }
    md = "\n".join(general_section(general))
    assert (
        f"| {MMLU_TASK} | acc | 8 | 0.250 | [0.054, 0.446] |" in md
        and "| agentflan_gsm8k | acc | 8 | - | - |" in md
    )
    assert "python -m lm_eval --model hf" in md
    report = {
        "agent_h": {},
        "tool_use": {"overall": {}},
        "validation_loss": {},
        "quality": {"degenerate_reply_rate": {"value": 0.0}, "too_weak": False},
        "general": general,
    }
    assert flat_metrics(report)[f"general.{MMLU_TASK}.ci_high"] == 0.446


def test_tune_accepts_general_metrics_of_scored_tasks(tmp_path):
    from agentflan.tune.space import METRIC, SpaceError, load_space

    assert METRIC.match(f"general.{MMLU_TASK}") and METRIC.match("general.agentflan_gsm8k.ci_low")
    assert not METRIC.match("general.gsm8k")
    spec = load_config("pipelines/local.yaml")
    space = tmp_path / "s.yaml"
    space.write_text(
        "name: s\nparams: {lr: {grid: [1.0e-3, 3.0e-3]}}\n"
        f"objective: {{metric: general.{MMLU_TASK}, mode: max}}\n"
    )
    load_space(space, spec)
    space.write_text(
        "name: s\nparams: {lr: {grid: [1.0e-3, 3.0e-3]}}\n"
        "objective: {metric: general.agentflan_mmlu_anatomy, mode: max}\n"
    )
    with pytest.raises(
        SpaceError,
        match="objective.metric: general.agentflan_mmlu_anatomy needs agentflan_mmlu_anatomy in eval.general",
    ):
        load_space(space, spec)


def test_the_shipped_sample_has_the_shared_layout():
    assert len((SAMPLE / "gsm8k/test.jsonl").read_text().splitlines()) == 40
    assert len((SAMPLE / "gsm8k/train.jsonl").read_text().splitlines()) == 50
    assert len((SAMPLE / "mmlu/jsonl/abstract_algebra/dev.jsonl").read_text().splitlines()) == 5
    assert len((SAMPLE / "mmlu/jsonl/abstract_algebra/test.jsonl").read_text().splitlines()) == 100
    assert all((SAMPLE / p).is_file() for p in ("SOURCES.md", "gsm8k/LICENSE", "mmlu/LICENSE"))
    assert sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file()) < 200_000
