"""Fine-tuning through Ray Train + DeepSpeed on CPU (gloo): the same code path a GPU cluster runs.

These are the slow tests (~40 s per fit on 2 cores). They share one Ray instance and one corpus.
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

from agentflan.config import load_config
from agentflan.data.pipeline import run_data


def overrides(out: Path, shared: Path, *extra: str) -> list[str]:
    """The small run every test here starts from (also what the CLI test passes on the command line)."""
    return [
        f"output_dir={out}",
        f"data.inputs=[{{path: {shared}/react/fireact_hotpotqa.jsonl, source: react}}, "
        f"{{path: {shared}/general/sharegpt_examples.json, source: sharegpt, kind: general}}]",
        f"data.negatives.tool_pool_files=[{shared}/toolbench/G1_query.json]",
        "data.engine=local",
        "train.seq_len=256",
        "train.global_batch_size=4",
        "train.micro_batch_size=1",
        "train.checkpoint_every=2",
        *extra,
    ]


def make_cfg(out: Path, shared: Path, *extra: str):
    return load_config("pipelines/local.yaml", overrides(out, shared, *extra))


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory, shared_data) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    run_data(make_cfg(out, shared_data))
    return out


def fresh_run(corpus_dir: Path, tmp_path: Path, shared: Path, *extra: str):
    """A new output dir holding a copy of the shared corpus."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(corpus_dir, out)
    return make_cfg(out, shared, *extra)


def steps_of(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (Path(out) / "train/steps.jsonl").read_text().splitlines()]


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


def test_zero2_trains_saves_and_logs(ray_session, corpus_dir, tmp_path, shared_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentflan.tracking import client
    from agentflan.train.recipe import run_train

    cfg = fresh_run(corpus_dir, tmp_path, shared_data, "train.max_steps=4", "train.eval_every=2")
    summary = run_train(cfg)
    assert steps_of(cfg.output_dir) == [1, 2, 3, 4]
    logged = [json.loads(x) for x in (Path(cfg.output_dir) / "train/steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "val_loss" in r] == [2, 4]
    first, last = (
        json.loads(x) for x in (Path(cfg.output_dir) / "train/steps.jsonl").read_text().splitlines()[::3]
    )
    assert last["loss"] < first["loss"]  # lr 1e-3 on a tiny model: it learns within 4 steps
    assert 0 < last["real_token_share"] <= 1 and last["tokens_per_s"] > 0
    (attempt,) = attempts_of(cfg.output_dir)
    assert attempt["world_size"] == 2 and attempt["params_on_rank0"] == attempt["params_total"]  # ZeRO-2

    model = AutoModelForCausalLM.from_pretrained(summary["model_dir"])
    tok = AutoTokenizer.from_pretrained(summary["model_dir"])
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Who are you?"}], add_generation_prompt=True, tokenize=False
    )
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    # the validation loss the two workers computed together is the saved model's loss on the held-out rows
    assert logged[-1]["val_loss"] == pytest.approx(_heldout_loss(model, cfg.output_dir), rel=1e-4)

    run = mlflow_run(cfg, summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.deepspeed.zero_stage"] == "2"
    assert run.data.params["model_path"] == summary["model_dir"]
    history = client(cfg).get_metric_history(summary["run_id"], "loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    for name in ("lr", "tokens_per_s", "real_token_share"):
        assert client(cfg).get_metric_history(summary["run_id"], name)
    artifacts = {a.path for a in client(cfg).list_artifacts(summary["run_id"])}
    assert {"config.json", "manifest.json", "packing_stats.json", "plots"} <= artifacts
    plots = {a.path: a.file_size for a in client(cfg).list_artifacts(summary["run_id"], "plots")}
    assert plots.keys() == {"plots/loss.png", "plots/mixture.png"} and min(plots.values()) > 1000
    assert (Path(cfg.output_dir) / "mlartifacts").is_dir()  # beside the sqlite store, not in the CWD


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


def test_killed_worker_resumes_from_checkpoint(ray_session, corpus_dir, tmp_path, shared_data):
    from agentflan.train.recipe import run_train

    cfg = fresh_run(corpus_dir, tmp_path, shared_data, "train.max_steps=8", "train.max_failures=1")
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

    # The same run without the kill: same data order (the rows' token counts and losses step by step)
    # and the same final weights.
    (tmp_path / "plain").mkdir()
    plain = fresh_run(
        corpus_dir, tmp_path / "plain", shared_data, "train.max_steps=8", "train.max_failures=1"
    )
    plain_summary = run_train(plain)
    resumed_log, plain_log = (
        [json.loads(x) for x in (Path(c.output_dir) / "train/steps.jsonl").read_text().splitlines()]
        for c in (cfg, plain)
    )
    assert [r["trained_tokens"] for r in resumed_log] == [r["trained_tokens"] for r in plain_log]
    assert [r["loss"] for r in resumed_log] == pytest.approx([r["loss"] for r in plain_log], rel=1e-5)
    resumed_w, plain_w = saved_weights(summary["model_dir"]), saved_weights(plain_summary["model_dir"])
    for k in plain_w:
        torch.testing.assert_close(
            resumed_w[k], plain_w[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}"
        )


def test_crash_marks_the_mlflow_run_failed(ray_session, corpus_dir, tmp_path, shared_data):
    from agentflan.tracking import client
    from agentflan.train.recipe import run_train

    cfg = fresh_run(corpus_dir, tmp_path, shared_data, "train.max_steps=50", "train.max_failures=0")
    killed: list[int] = []
    threading.Thread(
        target=_kill_a_worker_at, args=(Path(cfg.output_dir), 2, killed, False), daemon=True
    ).start()
    with pytest.raises(Exception):  # noqa: B017 - whatever Ray raises for a dead worker group
        run_train(cfg)
    runs = client(cfg).search_runs([client(cfg).get_experiment_by_name(cfg.mlflow.experiment).experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_zero3_with_gradient_checkpointing(ray_session, corpus_dir, tmp_path, shared_data):
    from transformers import AutoModelForCausalLM

    from agentflan.train.recipe import run_train

    cfg = fresh_run(
        corpus_dir,
        tmp_path,
        shared_data,
        "train.max_steps=2",
        "train.eval_every=1",  # ranks with fewer validation rows must not hang the ZeRO-3 gather
        "train.deepspeed.zero_stage=3",
        "train.model.gradient_checkpointing=true",
    )
    summary = run_train(cfg)
    assert steps_of(cfg.output_dir) == [1, 2]
    logged = [json.loads(x) for x in (Path(cfg.output_dir) / "train/steps.jsonl").read_text().splitlines()]
    assert all(r["val_loss"] > 0 for r in logged)
    model = AutoModelForCausalLM.from_pretrained(summary["model_dir"])
    assert model.config.num_hidden_layers == cfg.train.model.num_layers
    assert all(p.abs().sum() > 0 for p in model.parameters())  # gathered from the ZeRO-3 shards, not empty
    # Partitioned while training: rank 0 held about half of the parameters (each padded to 2 partitions),
    # and the export holds them all.
    (attempt,) = attempts_of(cfg.output_dir)
    total, held = attempt["params_total"], attempt["params_on_rank0"]
    assert total == sum(p.numel() for p in model.parameters())
    assert total / 2 <= held <= total / 2 + len(list(model.parameters()))


def test_interrupted_job_resumes_without_redoing_the_corpus(
    ray_session, corpus_dir, tmp_path, shared_data, capsys
):
    """`agentflan run` crashes in training; run again with the same spec and output dir: the corpus stage is
    skipped (same fingerprint) and training resumes from its last checkpoint."""
    from agentflan.cli import main

    cfg = fresh_run(corpus_dir, tmp_path, shared_data, "train.max_steps=8", "train.max_failures=0")
    out = Path(cfg.output_dir)
    args = [
        "train",
        "pipelines/local.yaml",
        *overrides(out, shared_data, "train.max_steps=8", "train.max_failures=0"),
    ]
    fingerprint = json.loads((out / "manifest.json").read_text())["fingerprint"]
    killed: list[int] = []
    threading.Thread(target=_kill_a_worker_at, args=(out, 3, killed), daemon=True).start()
    assert main(args) == 1  # the dead worker group: one line naming the failure and the log
    assert killed
    err = capsys.readouterr().err
    assert "agentflan: train failed:" in err and f"(full log: {out / 'logs/agentflan.log'})" in err
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "is current: skipping the data stage" in err
    assert json.loads((out / "manifest.json").read_text())["fingerprint"] == fingerprint
    starts = [json.loads(x)["start_step"] for x in (out / "train/attempts.jsonl").read_text().splitlines()]
    assert starts[0] == 0 and starts[-1] >= 2
    assert steps_of(out) == list(range(1, 9))


def test_lora_through_peft_saves_a_merged_model(ray_session, corpus_dir, tmp_path, shared_data):
    from transformers import AutoModelForCausalLM

    from agentflan.train.recipe import run_train

    cfg = fresh_run(
        corpus_dir,
        tmp_path,
        shared_data,
        "train.max_steps=2",
        "train.model.lora.enabled=true",
        "train.model.lora.r=4",
        "train.model.lora.alpha=8",
    )
    summary = run_train(cfg)
    model = AutoModelForCausalLM.from_pretrained(summary["model_dir"])
    names = [n for n, _ in model.named_parameters()]
    assert names and not any("lora" in n for n in names)  # adapters merged into plain Llama weights
    # Adapters were created and trained: merging them changed exactly the target modules, nothing else
    # (LoRA's B starts at zero, so an untrained adapter would change nothing).
    base, merged = initial_weights(cfg), saved_weights(summary["model_dir"])
    assert base.keys() == merged.keys()
    targets = tuple(f"{m}.weight" for m in cfg.train.model.lora.target_modules)
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed == {k for k in base if k.endswith(targets)}
    assert len(changed) == len(targets) * cfg.train.model.num_layers


_SINGLE_PROCESS = """
import json, sys
from pathlib import Path
from agentflan.config import Config
from agentflan.train.loop import train_single_process
from agentflan.train.shards import PackedShards
cfg = Config.model_validate(json.loads(sys.argv[1]))
out = Path(cfg.output_dir)
train_single_process(cfg, PackedShards(out / "train/packed_train"), None, str(out / "train/tokenizer"), out)
"""


def test_two_workers_with_accumulation_step_like_one_process(ray_session, corpus_dir, tmp_path, shared_data):
    """Gradient scaling: 2 workers x 2 accumulation steps of 1 row take the same optimizer steps as one
    process over the same 4 rows (4 accumulation steps): same losses, same updated weights."""
    import subprocess
    import sys

    from agentflan.train.recipe import run_train

    extra = ("train.max_steps=2", "train.lr=1e-3", "train.micro_batch_size=1", "train.global_batch_size=4")
    workers = fresh_run(corpus_dir, tmp_path / "w", shared_data, *extra)
    summary = run_train(workers)
    single = fresh_run(corpus_dir, tmp_path / "s", shared_data, *extra, "train.scaling.num_workers=1")
    from agentflan.train.data import prepare

    prepare(single)
    assert single.train.grad_accum_steps == 4 and workers.train.grad_accum_steps == 2
    proc = subprocess.run(
        [sys.executable, "-c", _SINGLE_PROCESS, single.model_dump_json()], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = [
        [json.loads(x) for x in (Path(c.output_dir) / "train/steps.jsonl").read_text().splitlines()]
        for c in (workers, single)
    ]
    assert [r["trained_tokens"] for r in logs[0]] == [r["trained_tokens"] for r in logs[1]]
    assert [r["loss"] for r in logs[0]] == pytest.approx([r["loss"] for r in logs[1]], rel=1e-5)
    a, b = saved_weights(summary["model_dir"]), saved_weights(Path(single.output_dir) / "model")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    start = initial_weights(workers)
    assert all(not torch.equal(a[k], start[k]) for k in a if k.endswith("proj.weight"))  # the steps did train
