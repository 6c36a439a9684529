"""Fine-tuning through Ray Train + DeepSpeed on CPU (gloo): the same code path a GPU cluster runs.

A Ray Train fit costs ~40 s on 2 cores, so the fits are shared: the session's ``trained_zero2`` (8 steps, 2
workers, ZeRO-2; tests/conftest.py) is the run checked here, the reference of the resume test and of the
one-process equivalence, and the base of the LoRA tests. What needs its own fit: a kill mid-run (twice:
Ray Train's restart, then the user's re-run after a crash) and ZeRO-3's partitioning across 2 workers (run
as a one-trial Tune study: the same fit, and the path a multi-worker trial takes).
The math without Ray (LoRA, the lr schedule) trains in this process (``train_in_process``).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch


def steps_of(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (Path(out) / "train/steps.jsonl").read_text().splitlines()]


def val_losses(log: list[dict]) -> dict[int, float]:
    """The validation losses of a steps log, by step."""
    return {r["step"]: r["val_loss"] for r in log if "val_loss" in r}


def attempts_of(out: Path) -> list[dict]:
    return [json.loads(x) for x in (Path(out) / "train/attempts.jsonl").read_text().splitlines()]


def saved_weights(model_dir: str | Path) -> dict:
    from transformers import AutoModelForCausalLM

    return {
        k: v.detach().clone() for k, v in AutoModelForCausalLM.from_pretrained(model_dir).state_dict().items()
    }


def initial_weights(cfg) -> dict:
    """The tiny model every worker starts from (same config, same seed), rebuilt here."""
    from transformers import AutoTokenizer

    from agentflan.train.model import build_model, tiny_llama_config

    m = cfg.train.model
    tok = AutoTokenizer.from_pretrained(Path(cfg.output_dir) / "train/tokenizer")
    config = tiny_llama_config(
        len(tok), m.hidden_size, m.num_layers, m.num_heads, max(2048, cfg.train.seq_len),
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id,
    )  # fmt: skip
    return {k: v.detach().clone() for k, v in build_model(config=config, seed=cfg.seed).state_dict().items()}


def mlflow_run(cfg, run_id: str):
    from agentflan.tracking import client

    return client(cfg).get_run(run_id)


def test_zero2_trains_saves_and_logs(trained_zero2, cosine_lr, request):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentflan.tracking import client

    if getattr(request.config.option, "loadgroup", False):  # an xdist worker: the model's readers share it
        assert request.node.nodeid.endswith("@trained_zero2"), request.node.nodeid
    cfg, summary, out = trained_zero2.cfg, trained_zero2.summary, trained_zero2.out
    assert steps_of(out) == list(range(1, 9))
    logged = [json.loads(x) for x in (out / "train/steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "val_loss" in r] == [2, 4, 6, 8]
    first, last = logged[0], logged[-1]
    assert last["loss"] < first["loss"]  # lr 3e-3 on a tiny model: it learns within 8 steps
    assert last["val_loss"] < logged[1]["val_loss"]  # and on the held-out rows
    assert all(0 < r["real_token_share"] <= 1 and r["tokens_per_s"] > 0 for r in logged)
    # the lr of every step is the schedule's: 8 x warmup_ratio 0.03 rounds to no warmup, then a half cosine
    assert int(cfg.train.warmup_ratio * 8) == 0
    expected_lr = [cosine_lr(cfg.train.lr, 0, 8, s) for s in range(1, 9)]
    assert [r["lr"] for r in logged] == pytest.approx(expected_lr, rel=1e-6, abs=1e-12)
    (attempt,) = attempts_of(out)
    assert attempt["world_size"] == 2 and attempt["params_on_rank0"] == attempt["params_total"]  # ZeRO-2
    assert summary["steps"] == 8 and summary["final"] == last

    model = AutoModelForCausalLM.from_pretrained(summary["model_dir"])
    tok = AutoTokenizer.from_pretrained(summary["model_dir"])
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Who are you?"}], add_generation_prompt=True, tokenize=False
    )
    ids = tok(prompt, return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > ids["input_ids"].shape[1]
    # the validation loss the two workers computed together is the saved model's loss on the held-out rows
    assert last["val_loss"] == pytest.approx(_heldout_loss(model, out), rel=1e-4)

    run = mlflow_run(cfg, summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.deepspeed.zero_stage"] == "2"
    assert run.data.params["model_path"] == summary["model_dir"]
    assert run.data.tags["agentflan.model_dir"] == summary["model_dir"]
    history = client(cfg).get_metric_history(summary["run_id"], "loss")
    assert [m.step for m in history] == list(range(1, 9))
    assert [m.value for m in history] == pytest.approx([r["loss"] for r in logged])
    lr_history = sorted(client(cfg).get_metric_history(summary["run_id"], "lr"), key=lambda m: m.step)
    assert [m.value for m in lr_history] == pytest.approx(expected_lr, rel=1e-6, abs=1e-12)
    for name in ("tokens_per_s", "real_token_share"):
        assert len(client(cfg).get_metric_history(summary["run_id"], name)) == 8
    artifacts = {a.path for a in client(cfg).list_artifacts(summary["run_id"])}
    assert {"config.json", "manifest.json", "packing_stats.json", "plots"} <= artifacts
    plots = {a.path: a.file_size for a in client(cfg).list_artifacts(summary["run_id"], "plots")}
    # training's two plots (an eval of this session model, tests/eval, logs its held-out plot into this run too)
    assert plots.keys() - {"plots/heldout_loss.png"} == {"plots/loss.png", "plots/mixture.png"}
    assert min(plots.values()) > 1000
    assert (out / "mlartifacts").is_dir()  # beside the sqlite store, not in the CWD


def _heldout_loss(model, out) -> float:
    import torch

    from agentflan.train.loss import weighted_token_loss
    from agentflan.train.shards import read_packed

    rows = read_packed(Path(out) / "train/packed_validation").to_pylist()
    assert rows
    total = count = 0.0
    with torch.no_grad():
        for r in rows:
            logits = model(
                input_ids=torch.tensor([r["input_ids"]]),
                position_ids=torch.tensor([r["position_ids"]]),
                use_cache=False,
            ).logits
            loss_sum, n = weighted_token_loss(
                logits, torch.tensor([r["labels"]]), torch.tensor([r["weights"]])
            )
            total, count = total + float(loss_sum), count + int(n)
    return total / count


def _registered_checkpoints(out: Path) -> list[int]:
    """Steps of the checkpoints Ray Train's controller has registered (its snapshot file)."""
    snaps = list((out / "ray").glob("*/checkpoint_manager_snapshot.json"))
    if not snaps:
        return []
    try:
        results = json.loads(snaps[0].read_text())["checkpoint_results"]
    except (json.JSONDecodeError, KeyError):
        return []
    return [r["metrics"]["step"] for r in results]


def _kill_a_worker_at(out: Path, step: int, killed: list[int], after_checkpoint: bool = True) -> None:
    """Wait until the steps log shows ``step`` (and a checkpoint is registered), then SIGKILL a worker."""
    import psutil

    log = out / "train/steps.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        logged = log.exists() and any(
            json.loads(x)["step"] >= step for x in log.read_text().splitlines() if x
        )
        if logged and (not after_checkpoint or _registered_checkpoints(out)):
            break
        time.sleep(0.1)
    # Ray names worker processes after the actor they host: "ray::RayTrainWorker...".
    workers = [
        p
        for p in psutil.Process().children(recursive=True)
        if "TrainWorker" in " ".join(p.cmdline()) and "IDLE" not in " ".join(p.cmdline())
    ]
    victim = max(workers, key=lambda p: p.pid)  # any worker will do: the whole group restarts
    os.kill(victim.pid, signal.SIGKILL)
    killed.append(victim.pid)


def test_killed_worker_resumes_from_checkpoint(trained_zero2, small_job, tmp_path):
    """The session's ZeRO-2 job again, a worker SIGKILLed after step 3: Ray Train restarts the group from the
    last checkpoint, and the run ends as the uninterrupted one did (``trained_zero2``)."""
    from agentflan.train.recipe import run_train

    cfg = small_job.fresh(tmp_path / "run", *trained_zero2.extra)
    assert cfg.train.max_failures == 1
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_worker_at, args=(Path(cfg.output_dir), 3, killed), daemon=True)
    killer.start()
    summary = run_train(cfg)
    killer.join(timeout=5)
    assert killed, "no worker was killed"
    attempts = [
        json.loads(x)["start_step"]
        for x in (Path(cfg.output_dir) / "train/attempts.jsonl").read_text().splitlines()
    ]
    assert len(attempts) == 2 and attempts[0] == 0 and attempts[1] in (2, 4, 6)  # resumed from a checkpoint
    assert steps_of(cfg.output_dir) == list(range(1, 9))  # planned count, no step twice
    assert mlflow_run(cfg, summary["run_id"]).info.status == "FINISHED"

    # Same data order (the rows' token counts step by step), the same losses and validation losses, and the
    # same final weights as the run without the kill.
    resumed_log, plain_log = (
        [json.loads(x) for x in (Path(out) / "train/steps.jsonl").read_text().splitlines()]
        for out in (cfg.output_dir, trained_zero2.out)
    )
    assert [r["trained_tokens"] for r in resumed_log] == [r["trained_tokens"] for r in plain_log]
    assert [r["loss"] for r in resumed_log] == pytest.approx([r["loss"] for r in plain_log], rel=1e-5)
    assert val_losses(resumed_log) == pytest.approx(val_losses(plain_log), rel=1e-5)
    resumed_w, plain_w = (
        saved_weights(summary["model_dir"]),
        saved_weights(trained_zero2.summary["model_dir"]),
    )
    assert resumed_w.keys() == plain_w.keys()
    for k in plain_w:
        torch.testing.assert_close(
            resumed_w[k], plain_w[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}"
        )


ONE_TRIAL = """
name: one
objective: {metric: val_loss, mode: min}
search: {kind: grid}
params: {seed: {grid: [0]}}
"""


def test_a_two_worker_zero3_trial_trains_through_ray_train_inside_tune(ray_session, small_job, tmp_path):
    """ZeRO-3 with gradient checkpointing across 2 workers, run as a one-trial study: a trial of more than one
    worker trains through Ray Train inside Tune (``TuneReportCallback``; one-worker trials train in their own
    process, tests/test_tune.py)."""
    from transformers import AutoModelForCausalLM

    from agentflan.cli import main

    space = tmp_path / "one.yaml"
    space.write_text(ONE_TRIAL)
    extra = (
        "train.max_steps=2",
        "train.eval_every=1",  # ranks with fewer validation rows must not hang the ZeRO-3 gather
        "train.deepspeed.zero_stage=3",
        "train.model.gradient_checkpointing=true",
        "tune.num_workers=2",
        "tune.resources_per_worker={CPU: 0.5}",  # the trial's driver and both workers on the session's 2 CPUs
        "tune.evaluate=false",
    )
    base = Path(small_job.fresh(tmp_path / "run", *extra).output_dir)
    assert main(["tune", "pipelines/local.yaml", str(space), *small_job.overrides(base, *extra)]) == 0
    (trial,) = (base / "tune/one/trials").iterdir()
    assert steps_of(trial) == [1, 2]
    logged = [json.loads(x) for x in (trial / "train/steps.jsonl").read_text().splitlines()]
    assert all(r["val_loss"] > 0 for r in logged)
    # rank 0's reports reached Tune through Ray Train: both validation steps (the second also the last)
    result = next((base / "tune/one/ray/one").glob("*/result.json"))
    reports = [json.loads(x) for x in result.read_text().splitlines()]
    assert [x.get("step") for x in reports][:2] == [1, 2] and all("val_loss" in x for x in reports[:2])
    model = AutoModelForCausalLM.from_pretrained(trial / "model")
    assert model.config.num_hidden_layers == small_job.cfg(base, *extra).train.model.num_layers
    assert all(p.abs().sum() > 0 for p in model.parameters())  # gathered from the ZeRO-3 shards, not empty
    # Partitioned while training: rank 0 held about half of the parameters (each padded to 2 partitions),
    # and the export holds them all.
    (attempt,) = attempts_of(trial)
    assert attempt["world_size"] == 2
    total, held = attempt["params_total"], attempt["params_on_rank0"]
    assert total == sum(p.numel() for p in model.parameters())
    assert total / 2 <= held <= total / 2 + len(list(model.parameters()))


def test_interrupted_job_resumes_without_redoing_the_corpus(ray_session, small_job, tmp_path, capsys):
    """`agentflan train` crashes (a worker SIGKILLed, no restart allowed): one line naming the failure and the
    log, the MLflow run FAILED. Run again with the same spec and output dir: the corpus stage is skipped
    (same fingerprint) and training resumes from its last checkpoint.

    The run has ``train.save_final: false``: no model is written, and none is named (MLflow, summary,
    console)."""
    from agentflan.cli import main
    from agentflan.tracking import client

    # One worker: resuming is the subject here (two workers resuming: the killed-worker test above).
    extra = (
        "train.max_steps=8",
        "train.max_failures=0",
        "train.save_final=false",
        "train.scaling.num_workers=1",
    )
    cfg = small_job.fresh(tmp_path / "run", *extra)
    out = Path(cfg.output_dir)
    args = ["train", "pipelines/local.yaml", *small_job.overrides(out, *extra)]
    fingerprint = json.loads((out / "manifest.json").read_text())["fingerprint"]
    killed: list[int] = []
    threading.Thread(target=_kill_a_worker_at, args=(out, 3, killed), daemon=True).start()
    assert main(args) == 1  # the dead worker group: one line naming the failure and the log
    assert killed, "no worker was killed"
    import psutil

    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("agentflan:")]
    assert line.startswith("agentflan: train failed:") and line.endswith(
        f"(full log: {out / 'logs/agentflan.log'})"
    )
    experiment = client(cfg).get_experiment_by_name(cfg.mlflow.experiment).experiment_id
    (crashed,) = client(cfg).search_runs([experiment])
    assert crashed.info.status == "FAILED"
    assert 3 <= max(steps_of(out)) < 8  # it died mid-run, after the step the kill waited for

    assert main(args) == 0
    captured = capsys.readouterr()
    assert "is current: skipping the data stage" in captured.err
    assert json.loads((out / "manifest.json").read_text())["fingerprint"] == fingerprint
    starts = [json.loads(x)["start_step"] for x in (out / "train/attempts.jsonl").read_text().splitlines()]
    assert starts[0] == 0 and starts[-1] >= 2
    assert steps_of(out) == list(range(1, 9))
    runs = {r.info.run_id: r for r in client(cfg).search_runs([experiment])}
    assert sorted(r.info.status for r in runs.values()) == ["FAILED", "FINISHED"]

    # save_final: false: no model, and no path to one anywhere
    (finished,) = [r for r in runs.values() if r.info.status == "FINISHED"]
    assert not (out / "model").exists()
    assert "model_path" not in finished.data.params and "agentflan.model_dir" not in finished.data.tags
    assert json.loads((out / "train/summary.json").read_text())["model_dir"] is None
    assert "- (train.save_final: false)" in captured.out


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_lora_on_a_checkpoint_saves_a_merged_model(
    trained_zero2, small_job, tmp_path, train_in_process, zero_stage
):
    """LoRA through peft on the session's trained model as a checkpoint (trained here, in this process), under
    ZeRO-2 and ZeRO-3 (the adapters gathered from the partitions before merging): the export is a plain
    Llama whose target modules, and only those, moved."""
    base_dir = trained_zero2.summary["model_dir"]
    cfg = small_job.fresh(
        tmp_path / "run",
        "train.max_steps=2",
        "train.scaling.num_workers=1",
        f"train.deepspeed.zero_stage={zero_stage}",
        f"train.model.name_or_path={base_dir}",
        "train.model.lora.enabled=true",
        "train.model.lora.r=4",
        "train.model.lora.alpha=8",
    )
    logged = train_in_process(cfg)
    assert [r["step"] for r in logged] == [1, 2]
    model_dir = Path(cfg.output_dir) / "model"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    names = [n for n, _ in model.named_parameters()]
    assert names and not any("lora" in n for n in names)  # adapters merged into plain Llama weights
    # Adapters were created and trained: merging them changed exactly the target modules, nothing else
    # (LoRA's B starts at zero, so an untrained adapter would change nothing).
    base, merged = saved_weights(base_dir), saved_weights(model_dir)
    assert base.keys() == merged.keys()
    targets = tuple(f"{m}.weight" for m in cfg.train.model.lora.target_modules)
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed == {k for k in base if k.endswith(targets)}
    assert len(changed) == len(targets) * model.config.num_hidden_layers


def test_two_workers_with_accumulation_step_like_one_process(
    trained_zero2, small_job, tmp_path, train_in_process
):
    """Gradient scaling: 2 workers x 2 accumulation steps of 1 row (the session's ZeRO-2 run) take the same
    optimizer steps as one process over the same 4 rows (4 accumulation steps, trained here): same losses,
    validation losses and lrs, the same updated weights."""
    single = small_job.fresh(tmp_path / "single", *trained_zero2.extra, "train.scaling.num_workers=1")
    assert single.train.grad_accum_steps == 4 and trained_zero2.cfg.train.grad_accum_steps == 2
    train_in_process(single)
    logs = [
        [json.loads(x) for x in (Path(out) / "train/steps.jsonl").read_text().splitlines()]
        for out in (trained_zero2.out, single.output_dir)
    ]
    assert [r["trained_tokens"] for r in logs[0]] == [r["trained_tokens"] for r in logs[1]]
    for key in ("loss", "lr"):
        assert [r[key] for r in logs[0]] == pytest.approx([r[key] for r in logs[1]], rel=1e-4), key
    assert val_losses(logs[0]) == pytest.approx(val_losses(logs[1]), rel=1e-4)
    a = saved_weights(trained_zero2.summary["model_dir"])
    b = saved_weights(Path(single.output_dir) / "model")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    start = initial_weights(single)
    assert all(not torch.equal(a[k], start[k]) for k in a if k.endswith("proj.weight"))  # the steps did train
