"""Ray Tune studies: search spaces are checked before any trial; a 4-trial study on CPU leaves a parent and
4 child MLflow runs, the results table and the plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from agentflan.cli import main
from agentflan.config import load_config
from agentflan.data.pipeline import read_corpus
from agentflan.tune.space import load_space, resolve, trial_values

REPO = Path(__file__).resolve().parents[1]
SPACES = sorted((REPO / "tune_spaces").glob("*.yaml"))


@pytest.mark.parametrize("spec", ["pipelines/local.yaml", "pipelines/llama2_7b_agentflan.yaml"])
@pytest.mark.parametrize("space", SPACES, ids=lambda p: p.stem)
def test_every_space_validates_against_every_spec(spec, space):
    load_space(space, load_config(spec))


def write_space(tmp_path: Path, **changes) -> Path:
    space = {
        "name": "t",
        "objective": {"metric": "val_loss", "mode": "min"},
        "params": {"retrieval": {"grid": [0.25, 0.5]}},
    }
    for key, value in changes.items():
        node = space
        *parents, last = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        ({"params/dropout": {"grid": [0.1]}}, "params.dropout.grid: unknown parameter 'dropout'"),
        ({"params/data.inputs": {"grid": ["x"]}}, "params.data.inputs.grid: unknown parameter"),
        ({"params/lr": {"loguniform": [1e-3, 1e-3]}}, "params.lr.loguniform: empty range"),
        ({"params/lr": {"loguniform": [0, 1e-3]}}, "params.lr.loguniform: loguniform needs lo > 0"),
        ({"params/retrieval": {"grid": []}}, "params.retrieval.grid: empty list"),
        (
            {"params/retrieval": {"grid": [0.5, -1]}},
            "params.retrieval.grid: value -1 is refused by the config",
        ),
        ({"params/retrieval": {"uniform": [0.1, 0.5]}}, "search.kind grid takes grid or choice params"),
        ({"params/retrieval": {"grid": [1], "uniform": [0, 1]}}, "params.retrieval: give exactly one of"),
        ({"params/arm": {"grid": [{"label": "a", "colour": 1}]}}, "params.arm.grid[0].colour: unknown param"),
        ({"objective/metric": "accuracy"}, "objective.metric: unknown metric 'accuracy'"),
        ({"search/kind": "bayes"}, "search.kind: Input should be"),
        ({"schedule": {"kind": "asha"}}, "schedule: unknown key"),
    ],
)
def test_a_bad_space_fails_before_any_trial_naming_the_key(tmp_path, capsys, change, message):
    space = write_space(tmp_path, **change)
    out = tmp_path / "out"
    assert main(["tune", "pipelines/local.yaml", str(space), f"output_dir={out}"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing ran: no corpus, no Ray, no MLflow run


def test_trial_values_expand_arms_and_relative_values():
    cfg = load_config("pipelines/local.yaml")
    space = load_space(REPO / "tune_spaces/ablation_capabilities.yaml", cfg)
    assert resolve(trial_values(space, {"arm": "retrieval x0.5", "seed": 2}), cfg) == {
        "data.capability_weights.retrieval": 0.125,
        "seed": 2,
    }
    assert resolve(trial_values(space, {"arm": "all", "seed": 0}), cfg) == {"seed": 0}


@pytest.mark.parametrize(
    "overrides, bundle, in_trial",
    [
        ([], {"CPU": 1.0}, False),  # the spec's 2 workers: a worker group, which holds its own CPUs
        # one CPU worker: trained in the trial, which holds its CPUs too (the spec's tune: 0.5 per worker)
        (["tune.num_workers=1"], {"CPU": 1.5}, True),
        (["tune.num_workers=1", "tune.resources_per_worker={CPU: 3}"], {"CPU": 4.0}, True),
        (["train.scaling.num_workers=1", "tune.trial_resources={CPU: 2}"], {"CPU": 2.5}, True),
        (["tune.num_workers=1", "train.scaling.use_gpu=true"], {"CPU": 1.0}, False),  # a GPU: Ray Train's
    ],
)
def test_a_one_cpu_worker_trial_trains_in_its_own_process_holding_the_workers_resources(
    overrides, bundle, in_trial
):
    from agentflan.tune.trial import trains_in_trial, trial_bundle

    spec = load_config("pipelines/local.yaml", overrides)
    assert trial_bundle(spec) == bundle
    # the trial's own config (tune.num_workers pinned into train.scaling, as trial_config does)
    workers = spec.tune.num_workers or spec.train.scaling.num_workers
    trial_cfg = load_config("pipelines/local.yaml", [*overrides, f"train.scaling.num_workers={workers}"])
    assert trains_in_trial(trial_cfg) == in_trial


STUDY = """
name: four
objective: {metric: agent_h.h_score, mode: max}
search: {kind: grid}
params:
  arm:
    grid:
      - {label: "w/o negatives", negative_share: 0}
      - {label: "w/ negatives", negative_share: 1}
  seed: {grid: [0, 1]}
report:
  title: negatives
  columns: {agent_h.h_score: H_Score, val_loss: held-out loss}
"""


@pytest.mark.ray
def test_four_trial_study_leaves_parent_and_children_runs_and_the_table(
    ray_session, shared_data, tiny_model_dir, tmp_path, capsys
):
    """Also: a model writes the negatives (a tiny HF model), and it is asked once per query across the study:
    the base run asks it, every trial's re-mix answers from the cache beside ``decomposed/``."""
    from agentflan.tracking import client

    space = tmp_path / "four.yaml"
    space.write_text(STUDY)
    out = tmp_path / "out"
    s = shared_data
    args = [
        f"output_dir={out}",
        f"data.inputs=[{{path: {s}/react/fireact_hotpotqa.jsonl, source: react}}, "
        f"{{path: {s}/general/fastchat_dummy_conversation.json, source: sharegpt, kind: general}}]",
        f"data.negatives.tool_pool_files=[{s}/toolbench/G1_query.json]",
        f"data.negatives.responder={{kind: hf, model: {tiny_model_dir}, max_new_tokens: 4}}",
        "data.engine=local",
        "train.seq_len=256",
        "train.global_batch_size=4",
        "train.micro_batch_size=1",
        "train.max_steps=2",
        "train.checkpoint_every=1",  # 2 checkpoints written, the last one kept
        "eval.max_per_case={a: 2, b: 2, c: 2, d: 2}",
        "eval.max_hotpot=0",
        "eval.max_tool_use_per_source=2",
        "eval.max_new_tokens=8",
        "eval.bfcl.max_per_category=1",
        "eval.general.tasks=[agentflan_mmlu_abstract_algebra]",  # scored by log-likelihood: no generation
        "eval.general.limit=2",
        "rollout.envs=[]",  # rollouts in a trial are eval's (tests/eval); here the study's wiring
        # One CPU worker: each trial trains in its own process (a two-worker trial trains through Ray Train
        # inside Tune: tests/train/test_train_ray.py::test_a_two_worker_zero3_trial...).
        "tune.num_workers=1",
        "tune.resources_per_worker={CPU: 1}",
    ]
    assert main(["tune", "pipelines/local.yaml", str(space), *args]) == 0
    printed = capsys.readouterr().out
    assert "| arm | H_Score | held-out loss |" in printed and "| w/o negatives |" in printed

    study = out / "tune" / "four"
    rows = list(csv.DictReader((study / "results.csv").open()))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    assert {(r["param.arm"], r["param.seed"]) for r in rows} == {
        (a, s) for a in ("w/o negatives", "w/ negatives") for s in ("0", "1")
    }
    assert all(0 <= float(r["agent_h.h_score"]) <= 1 and float(r["val_loss"]) > 0 for r in rows)
    # Negatives asked of the model, per run: the base run (seed 0) asks every distinct query once (a query
    # the corpus repeats is answered from the cache); seed-0 trials re-mix from the cache and ask nothing;
    # seed 1 draws other negatives, asked by the first seed-1 trial only.
    base = json.loads((out / "manifest.json").read_text())["responder"]
    assert base["asked"] > 20
    calls = {
        (r["param.arm"], r["param.seed"]): json.loads(
            (study / "trials" / r["trial"] / "manifest.json").read_text()
        )["responder"]
        for r in rows
    }
    for arm in ("w/o negatives", "w/ negatives"):
        assert calls[arm, "0"] == {"asked": 0, "cached": base["asked"] + base["cached"]}
    seed1 = sorted(calls[arm, "1"]["asked"] for arm in ("w/o negatives", "w/ negatives"))
    assert seed1[0] == 0 < seed1[1]
    # the arms differ in their training corpus only: no negatives trained on without them
    for r in rows:
        train = read_corpus(study / "trials" / r["trial"], "train")
        assert any(x.bucket == "negatives" for x in train) == (r["param.arm"] == "w/ negatives")

    cfg = load_config("pipelines/local.yaml", args)
    c = client(cfg)
    exp = c.get_experiment_by_name(cfg.mlflow.experiment)
    runs = c.search_runs([exp.experiment_id], filter_string="tags.`agentflan.study` = 'four'")
    parents = [r for r in runs if r.data.tags.get("agentflan.stage") == "tune"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {ch.data.tags["mlflow.parentRunId"] for ch in children} == {parent.info.run_id}
    for ch in children:
        assert ch.info.status == "FINISHED"
        assert ch.data.params["trial.arm"] in ("w/o negatives", "w/ negatives")
        assert {"loss", "val_loss", "agent_h.h_score", "tool_use.retrieval"} <= set(ch.data.metrics)
        assert "general.agentflan_mmlu_abstract_algebra" in ch.data.metrics  # general scores beside agent ones
    artifacts = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "results.md", "search_space.json", "plots"} <= artifacts
    plots = {a.path for a in c.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/loss_curves.png", "plots/objective_vs_arm.png", "plots/objective_vs_seed.png"} <= plots
    assert (study / "plots" / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    for r in rows:
        trial = study / "trials" / r["trial"]
        # trained in the trial's own process (no worker group), its checkpoints beside it: only the last kept
        attempts = (trial / "train/attempts.jsonl").read_text().splitlines()
        assert [json.loads(x)["world_size"] for x in attempts] == [1]
        assert not (trial / "ray").exists()
        assert [p.name for p in (trial / "train/checkpoints").iterdir()] == ["step_2"]
        # what Ray Train's workers would report reached Tune (ASHA reads these): both checkpointed steps, then
        # the trial's final metrics
        result = next((out / "tune/four/ray/four").glob(f"*{r['trial']}*/result.json"))
        reports = [json.loads(x) for x in result.read_text().splitlines()]
        assert [x.get("step") for x in reports] == [1, 2, 2]
        assert "val_loss" in reports[1] and "agent_h.h_score" in reports[2]


def test_paper_table_means_over_seeds_per_arm_and_skips_stopped_trials():
    from agentflan.tune import report

    cfg = load_config("pipelines/local.yaml")
    space = load_space(REPO / "tune_spaces/ablation_negatives.yaml", cfg)
    rows = [
        report.trial_row(
            "t0", {"arm": "w/o negatives", "seed": 0}, {"agent_h.h_score": 0.5, "trial_seconds": 1}, False
        ),
        report.trial_row(
            "t1", {"arm": "w/o negatives", "seed": 1}, {"agent_h.h_score": 0.7, "trial_seconds": 1}, False
        ),
        report.trial_row(
            "t2", {"arm": "w/ negatives", "seed": 0}, {"agent_h.h_score": 0.9, "trial_seconds": 1}, False
        ),
        report.trial_row(
            "t3", {"arm": "w/ negatives", "seed": 1}, {"val_loss": 3.0}, False
        ),  # stopped by ASHA
        report.trial_row("t4", {"arm": "w/ negatives", "seed": 2}, {}, True),
    ]
    assert [r["status"] for r in rows] == ["completed"] * 3 + ["stopped early", "error"]
    table = report.paper_table(rows, space)
    lines = [x for x in table.splitlines() if x.startswith("| w")]
    # t(1) = 12.706: two seeds give an interval of +-12.706 x 0.141 / sqrt(2)
    assert lines[0].startswith("| w/o negatives |") and "| 0.600 ± 0.141 [-0.671, 1.871] (2) |" in lines[0]
    assert lines[1].startswith("| w/ negatives |") and "| 0.900 ± 0.000 (1) |" in lines[1]
    assert report.best(rows, space)["trial"] == "t2"


def test_searchers_draw_trials_from_every_space_kind():
    """Optuna (TPE) and the seeded random generator accept the spaces' domains; the same seed draws the
    same trials. (Running trials is the study test's job; here only the search is exercised.)"""
    from ray.tune.search import BasicVariantGenerator

    from agentflan.tune.space import tune_domains
    from agentflan.tune.study import _scheduler, _searcher

    cfg = load_config("pipelines/local.yaml")
    space = load_space(REPO / "tune_spaces/mixture_optuna.yaml", cfg)
    optuna = _searcher(space, 1)
    assert optuna.set_search_properties(space.objective.metric, space.objective.mode, tune_domains(space))
    suggested = optuna.suggest("t0")
    assert set(suggested) == set(space.params) and 3e-4 <= suggested["lr"] <= 3e-3
    assert (
        cfg.train.lr != suggested["lr"]
        and resolve(trial_values(space, suggested), cfg)["train.lr"] == suggested["lr"]
    )

    asha = _scheduler(space, cfg)
    assert asha._metric == "val_loss" and asha._time_attr == "step"

    random = load_space(REPO / "tune_spaces/mixture_random.yaml", cfg)

    from ray import tune

    tune.register_trainable("agentflan_noop", lambda config: None)

    def draws() -> list[dict]:
        gen = _searcher(random, 3)
        assert isinstance(gen, BasicVariantGenerator)
        gen.add_configurations(
            {"e": {"run": "agentflan_noop", "config": tune_domains(random), "num_samples": 3}}
        )
        return [gen.next_trial().config for _ in range(3)]

    first = draws()
    assert first == draws() and len({c["lr"] for c in first}) == 3


@pytest.mark.slow  # an MLflow sqlite store (its tables take seconds to create)
def test_trials_asha_stopped_leave_their_child_runs_killed(tmp_path):
    """A trial ASHA stops is ended mid-training, so its child run is left RUNNING: after the study it is
    marked KILLED with the trial's status. Runs of finished trials, of another study and of trials this
    study does not list are left as they are. (The marking alone, on runs made here: no study runs.)"""
    from types import SimpleNamespace

    from agentflan import tracking
    from agentflan.tune import report
    from agentflan.tune.study import _close_children

    cfg = load_config("pipelines/local.yaml", [f"output_dir={tmp_path}"])

    def child(study: str, trial: str) -> str:
        return tracking.start_run(cfg, trial, tags={"agentflan.study": study, "agentflan.trial": trial})

    stopped, completed, other_study, unlisted = (
        child("s", "t1"),
        child("s", "t2"),
        child("x", "t1"),
        child("s", "t9"),
    )
    c = tracking.client(cfg)
    c.set_terminated(completed, "FINISHED")
    rows = [
        report.trial_row("t1", {}, {"val_loss": 3.0}, False),  # no trial_seconds: stopped by ASHA
        report.trial_row("t2", {}, {"val_loss": 2.0, "trial_seconds": 1}, False),
    ]
    assert [r["status"] for r in rows] == [report.STOPPED, report.COMPLETED]
    _close_children(cfg, SimpleNamespace(name="s"), rows)

    run = {rid: c.get_run(rid) for rid in (stopped, completed, other_study, unlisted)}
    assert run[stopped].info.status == "KILLED"
    assert run[stopped].data.tags["agentflan.trial_status"] == report.STOPPED
    assert (
        run[completed].info.status == "FINISHED" and "agentflan.trial_status" not in run[completed].data.tags
    )
    assert run[other_study].info.status == "RUNNING" and run[unlisted].info.status == "RUNNING"


def test_the_ablation_table_pairs_arms_by_seed(tmp_path):
    """``benchmarks/ablation_table.py`` re-reads finished trials: per arm the mean over seeds, and each arm's
    difference from the reference arm on the same seed, told apart from zero only when its interval is."""
    import subprocess
    import sys

    study = tmp_path / "study"
    h = {("w/o negatives", 0): 0.5, ("w/o negatives", 1): 0.6, ("w/o negatives", 2): 0.7}
    h |= {("w/ negatives", s): v + 0.1 + 0.01 * s for (_, s), v in list(h.items())}  # +0.10, +0.11, +0.12
    for i, ((arm, seed), score) in enumerate(sorted(h.items())):
        trial = study / "trials" / f"t{i}"
        trial.mkdir(parents=True)
        metrics = {"agent_h.h_score": score, "trial_seconds": 1.0}
        config = {"arm": {"label": arm}, "seed": seed}
        (trial / "trial.json").write_text(json.dumps({"trial_id": f"t{i}", "config": config, "metrics": metrics}))
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/ablation_table.py"), str(study),
         str(REPO / "tune_spaces/ablation_negatives.yaml"), "--reference", "w/o negatives"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    # per arm, the intervals overlap ...
    assert "| w/o negatives | - | - | 0.600 ± 0.100 [0.352, 0.848] (3) | - |" in proc.stdout
    assert "| w/ negatives | - | - | 0.710 ± 0.110 [0.437, 0.983] (3) | - |" in proc.stdout
    # ... paired by seed, the arms are told apart: mean 0.11, sd 0.01, so 0.11 ± 4.303 * 0.01 / sqrt(3)
    assert "| w/ negatives | - | - | +0.110 [+0.085, +0.135] * | - |" in proc.stdout
