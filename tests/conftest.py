"""Shared fixtures: where the real corpora are, one Ray instance for the whole session, and the expensive
work tests share (one small corpus, one model trained on it with ZeRO-2 across two Ray Train workers).

The real corpora the tests read live in the repository, in ``tests/data/real/`` (its SOURCES.md names each file,
its source and licence; most are links into the bundled ``sample_data/``). ``AGENTFLAN_SHARED_DATA`` points the
tests at another folder of the same layout instead (e.g. the full ``shared/data`` of a development machine).

Starting Ray costs ~5 s and ~760 MB; every test that needs it shares the session-scoped instance. A Ray
Train worker group costs ~30 s before its first step on 2 cores: tests that only read a trained model take
``trained_zero2`` instead of training their own, and tests about the math train in this process
(``train_single_process``), and a Tune trial of one CPU worker trains in its own process.

Markers (pyproject.toml): ``ray`` (starts or uses Ray: added here for users of ``ray_session``), ``slow``
(over ~5 s: added here to every ``ray`` and ``bench`` test, declared by the others), ``bench`` (the benchmark
scripts' smoke tests). ``pytest -m "not slow"`` is the fast loop
(55-58 s for 576 tests on 2 cores, 2026-12-06; the whole suite 604 s).

pytest-xdist runs the suite on two workers (pyproject's addopts, ``-n 2 --dist loadgroup``): serially the suite left
~27% of 2 cores idle. A session fixture is built once per worker process, so each worker starts its own Ray
instance when its first Ray test asks for ``ray_session`` (2 CPUs each; they coexist as the subprocess clusters of
the two-node and benchmark tests always did). The tests that read ``trained_zero2`` carry
``xdist_group("trained_zero2")`` (added here, see ``SHARED_BY_GROUP``), so that model is trained once, on one
worker; grouping every Ray test instead would put most of the suite's worker-seconds on one worker. The modules
of the longest tests are handed out first (``LONGEST_FIRST``), so that the short tests even out the end.
``-n 0`` runs serially, for a debugger.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Ray Train 2.60 starts a PreemptionWatcher actor with every worker group: it watches for spot nodes being
# preempted, which a test machine has none of, and it is one more process (~1 s of CPU, then a poll every 5 s)
# at each of the suite's ~15 group starts. Set before any Ray starts here; the Ray clusters and jobs the tests
# start in subprocesses inherit it. Users' runs keep Ray's default.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
IN_REPO_DATA = REPO / "tests" / "data" / "real"
SHARED_DATA = Path(os.environ.get("AGENTFLAN_SHARED_DATA") or IN_REPO_DATA)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The root of the real corpora (``tests/data/real`` unless ``AGENTFLAN_SHARED_DATA`` says otherwise)."""
    if not (SHARED_DATA / "SOURCES.md").is_file():
        pytest.fail(f"real corpora not found at {SHARED_DATA} (unset AGENTFLAN_SHARED_DATA to use {IN_REPO_DATA})")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, shared_data) -> Path:
    """A 2-layer Llama with a BPE tokenizer trained on real chats: no download."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    chats = json.loads((shared_data / "general/fastchat_dummy_conversation.json").read_text())
    texts = [t["value"] for c in chats for t in c["conversations"]]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>"])
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.chat_template = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<s>assistant:{% endif %}"
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    out = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(cfg).save_pretrained(out)
    fast.save_pretrained(out)
    return out


# Session fixtures whose build costs a Ray Train fit or more: the tests that take one share an xdist group, so
# the fixture is built once, on one worker (a session fixture is per worker process under xdist).
SHARED_BY_GROUP = ("trained_zero2",)


# The modules of the longest tests (by --durations on 2 cores, 2026-12-06), longest first: they are handed
# out first, and the short tests fill in around them. In collection order they came last (tests/train/ and the
# root test files sort after data/, eval/ and rollout/), so one worker ran the tail alone (~40 s of the wall).
# Each module keeps its own order (module-scoped fixtures are built once).
LONGEST_FIRST = (
    "tests/test_two_nodes.py",
    "tests/train/test_train_paper_run.py",
    "tests/train/test_train_ray.py",
    "tests/test_native_job.py",
    "tests/test_benchmarks.py",
    "tests/train/test_train_ingest.py",
    "tests/data/test_batch_negatives.py",
    "tests/test_tune.py",
    "tests/test_cli.py",
)


def _longest_first(item: pytest.Item) -> int:
    module = item.nodeid.split("::")[0]
    return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook turns xdist_group marks into node ids
def pytest_collection_modifyitems(config, items):
    items.sort(key=_longest_first)  # stable
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "ray_session" in fixtures:
            item.add_marker(pytest.mark.ray)
        if item.get_closest_marker("ray") or item.get_closest_marker("bench"):
            item.add_marker(pytest.mark.slow)
        for name in SHARED_BY_GROUP:
            if name in fixtures:
                item.add_marker(pytest.mark.xdist_group(name))


class SmallJob:
    """The small job the training and eval tests start from: two real inputs (ReAct trajectories and the
    FastChat chats, so every validation capability the eval reports has rows), rows of 256 tokens, 4 rows a
    step in micro-batches of 1, on the local data engine. The corpus is built once (:attr:`corpus`);
    :meth:`fresh` gives a test its own output dir holding a copy of it."""

    def __init__(self, shared: Path, corpus: Path) -> None:
        self.shared = shared
        self.corpus = corpus

    def overrides(self, out: Path, *extra: str) -> list[str]:
        s = self.shared
        return [
            f"output_dir={out}",
            f"data.inputs=[{{path: {s}/react/fireact_hotpotqa.jsonl, source: react}}, "
            f"{{path: {s}/general/fastchat_dummy_conversation.json, source: sharegpt, kind: general}}]",
            f"data.negatives.tool_pool_files=[{s}/toolbench/G1_query.json]",
            "data.engine=local",
            "train.seq_len=256",
            "train.global_batch_size=4",
            "train.micro_batch_size=1",
            "train.checkpoint_every=2",
            "eval.general.limit=4",  # lm-eval's GSM8K / MMLU on 4 items each: the wiring, in seconds
            *extra,
        ]

    def cfg(self, out: Path, *extra: str):
        from agentflan.config import load_config

        return load_config("pipelines/local.yaml", self.overrides(out, *extra))

    def fresh(self, out: Path, *extra: str):
        """The config of a new output dir ``out`` holding a copy of the shared corpus."""
        import shutil

        shutil.copytree(self.corpus, out)
        return self.cfg(out, *extra)


@pytest.fixture(scope="session")
def small_job(tmp_path_factory, shared_data) -> SmallJob:
    from agentflan.data.pipeline import run_data

    corpus = tmp_path_factory.mktemp("small_corpus") / "out"
    job = SmallJob(shared_data, corpus)
    run_data(job.cfg(corpus))
    return job


# What `trained_zero2` trains: 8 steps (cosine from step 1: 8 x 0.03 warmup rounds to 0), a checkpoint and
# a validation loss every 2 steps, one restart allowed (the resume test kills a worker of the same run).
ZERO2_STEPS = ("train.max_steps=8", "train.eval_every=2", "train.max_failures=1")


@pytest.fixture(scope="session")
def trained_zero2(ray_session, small_job, tmp_path_factory):
    """ONE model trained through Ray Train (2 workers, DeepSpeed ZeRO-2) for the session: the tests of the
    ZeRO-2 run itself, the eval, the resume and LoRA read it; none writes to it except the eval (its own
    ``eval/`` and metrics in the run). ``.cfg``, ``.summary`` (run_train's), ``.out``, and ``.extra``: the
    overrides it took on top of ``small_job``'s, for a test that runs the same job another way."""
    from types import SimpleNamespace

    from agentflan.train.recipe import run_train

    cfg = small_job.fresh(tmp_path_factory.mktemp("zero2") / "out", *ZERO2_STEPS)
    summary = run_train(cfg)
    return SimpleNamespace(cfg=cfg, summary=summary, out=Path(cfg.output_dir), extra=ZERO2_STEPS)


def _sample_texts() -> list[str]:
    """Message texts of the bundled sample corpus (FastChat chats and AgentInstruct trajectories)."""
    import agentflan

    data = Path(agentflan.__file__).parent / "sample_data"
    chats = json.loads((data / "general/fastchat_dummy_conversation.json").read_text())
    agent = json.loads((data / "agentinstruct/mixed_sample_200.messages.json").read_text())[:20]
    return [t["value"] for c in chats for t in c["conversations"]] + [
        m["content"] for r in agent for m in r["messages"]
    ]


@pytest.fixture(scope="session")
def sentencepiece_dir(tmp_path_factory) -> Path:
    """A Llama-2-style tokenizer: SentencePiece BPE, byte fallback, dummy prefix, <unk>/<s>/</s> = 0/1/2, saved
    as tokenizer.model with a LlamaTokenizer config, as meta-llama/Llama-2-7b-hf lays it out (nothing
    downloaded: trained here on the sample corpus with the sentencepiece library)."""
    import io

    import sentencepiece as spm

    out = tmp_path_factory.mktemp("llama2_tokenizer")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_sample_texts()),
        model_writer=model,
        model_type="bpe",
        vocab_size=1200,
        byte_fallback=True,
        add_dummy_prefix=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    (out / "tokenizer.model").write_bytes(model.getvalue())
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "pad_token": None,
                "add_bos_token": True,
                "add_eos_token": False,
                "legacy": False,
                "clean_up_tokenization_spaces": False,
                "model_max_length": 4096,
            }
        )
    )
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    )
    return out


@pytest.fixture(scope="session")
def llama2_checkpoint(tmp_path_factory, sentencepiece_dir) -> Path:
    """A small Llama checkpoint on disk with the Llama-2-style SentencePiece tokenizer, laid out as a hub model
    is (config.json, model.safetensors, generation_config.json, tokenizer.model, tokenizer_config.json): what a
    user's ``train.model.name_or_path`` points at, shrunk (hidden 64, 2 layers, untied like Llama-2)."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    out = tmp_path_factory.mktemp("llama2_tiny")
    for f in sentencepiece_dir.iterdir():
        shutil.copy(f, out / f.name)
    tok = AutoTokenizer.from_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(out)
    return out


def _check_job_outputs(out: Path, overrides: list[str], per_case: int) -> dict:
    """What a user reads after a 2-step ``agentflan run`` (data, train on 2 workers, eval) under ``out``,
    checked: the steps and their losses, a model that loads and generates, the eval's counts and rates, the
    metrics in the training run. Returns the eval report."""
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentflan.config import load_config
    from agentflan.tracking import client

    summary = json.loads((out / "train/summary.json").read_text())
    steps = [json.loads(x) for x in (out / "train/steps.jsonl").read_text().splitlines()]
    assert summary["steps"] == 2 and [x["step"] for x in steps] == [1, 2]
    assert all(math.isfinite(x["loss"]) and x["loss"] > 0 and x["trained_tokens"] > 0 for x in steps)
    assert math.isfinite(steps[-1]["val_loss"]) and steps[-1]["val_loss"] > 0
    assert json.loads((out / "train/attempts.jsonl").read_text().splitlines()[0])["world_size"] == 2

    model = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    tok = AutoTokenizer.from_pretrained(out / "model")
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        generated = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > ids["input_ids"].shape[1]

    report = json.loads((out / "eval/report.json").read_text())
    assert {c: report["agent_h"]["per_case"][c]["n"] for c in "abcd"} == dict.fromkeys("abcd", per_case)
    assert 0 <= report["agent_h"]["h_score"] <= 1
    assert set(report["validation_loss"]) >= {"reasoning", "general"}
    assert all(v["loss"] > 0 and v["tokens"] > 0 for v in report["validation_loss"].values())
    replies = (out / "eval/replies.jsonl").read_text().splitlines()
    assert report["quality"]["n"] == len(replies) > 4 * per_case

    run = client(load_config("pipelines/local.yaml", overrides)).get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["model_path"] == str(out / "model")
    assert "agent_h.h_score" in run.data.metrics and "loss" in run.data.metrics
    return report


@pytest.fixture(scope="session")
def check_job_outputs():
    """``f(out, overrides, per_case)``: the outputs of a 2-step whole job checked as a user reads them."""
    return _check_job_outputs


def _own_ray_process(*needles: str) -> int | None:
    """The pid of a process started by this pytest process (Ray's raylet and workers are its descendants) whose
    command line holds every needle, else None. Tests that SIGKILL a Ray worker find it here, never in ``ps``
    of the whole machine: a job or study running beside the suite has workers of the same name."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if all(n in cmdline for n in needles):
            return child.pid
    return None


@pytest.fixture
def own_ray_process():
    """``own_ray_process(*needles)``: see ``_own_ray_process``."""
    return _own_ray_process
