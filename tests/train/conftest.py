"""Fixtures for the training-side tests: real conversations from the bundled sample data, and tokenizers
trained on them (session-scoped: each takes about a second): one small byte-level BPE per named template (the
embedded default's kind), a Llama-2-style SentencePiece tokenizer, and byte-level BPEs with Llama-3's and
Qwen's chat templates. Nothing is downloaded."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import PreTrainedTokenizerFast

import agentflan
from agentflan.train.templates import TEMPLATES, render_text
from agentflan.train.tokenizer import BOS, EOS, train_bpe_tokenizer

SAMPLE_DATA = Path(agentflan.__file__).parent / "sample_data"
# benchmarks/collate.py: rows collated by hand and the padded baseline, shared with the benchmarks
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant"}

Messages = list[dict[str, Any]]


def _sharegpt(path: Path) -> list[Messages]:
    return [
        [
            {"role": _SHAREGPT_ROLES[turn["from"]], "content": turn["value"], "loss": turn["from"] == "gpt"}
            for turn in conv["conversations"]
        ]
        for conv in json.loads(path.read_text())
    ]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Run the tiny models on one thread. On a small shared machine torch's default of one thread per core
    is some 30x slower here (threads wait for each other when another process holds a core); restored after
    each test so tests elsewhere keep their setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def chats() -> list[Messages]:
    """Plain multi-turn chats: the 500 FastChat identity chats and the 5 ShareGPT ones."""
    general = SAMPLE_DATA / "general"
    return _sharegpt(general / "fastchat_dummy_conversation.json") + _sharegpt(
        general / "sharegpt_examples.json"
    )


@pytest.fixture(scope="session")
def agent_chats() -> list[Messages]:
    """AgentInstruct trajectories (system prompt, task, Thought/Action replies, observations), first 20."""
    records = json.loads((SAMPLE_DATA / "agentinstruct" / "mixed_sample_200.messages.json").read_text())[:20]
    return [[{**m, "loss": m["role"] == "assistant"} for m in r["messages"]] for r in records]


@pytest.fixture(scope="session")
def tokenizers(chats: list[Messages], agent_chats: list[Messages]) -> dict[str, PreTrainedTokenizerFast]:
    """A 1,000-token byte-level BPE per named template, trained on the rendered conversations."""
    return {
        name: train_bpe_tokenizer([render_text(m, name, BOS, EOS) for m in chats + agent_chats], 1000, name)
        for name in TEMPLATES
    }


@pytest.fixture
def mixed_conversation() -> Messages:
    """Every role, trained and untrained replies, and weights other than 1."""
    return [
        {"role": "system", "content": "You are a helpful assistant with a weather tool."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": 'Thought: call the tool.\nAction: weather\nAction Input: {"city": "Paris"}',
            "loss": True,
            "weight": 2.0,
            "capability": "retrieval",
        },
        {"role": "tool", "content": "Sunny, 21 C", "name": "weather"},
        {"role": "assistant", "content": "It is sunny.", "loss": False},
        {"role": "user", "content": "Thanks! And tomorrow?"},
        {
            "role": "assistant",
            "content": "I do not know yet.",
            "loss": True,
            "weight": 0.5,
            "capability": "general",
        },
    ]


# ----------------------------------------------------------------------------- tokenizer families
# Built here from the corpus, laid out as a hub model's tokenizer is, loaded through AutoTokenizer.

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)  # Meta-Llama-3-8B-Instruct's template
QWEN_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)  # Qwen2's ChatML template, without the default system prompt
BYTE_LEVEL_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>",
]  # fmt: skip
# GPT-4 / Llama-3 pre-tokenizer pattern (words, numbers of up to 3 digits, punctuation runs, newlines).
BYTE_LEVEL_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def _corpus_text(chats: list[Messages], agent_chats: list[Messages]) -> list[str]:
    return [m["content"] for conv in chats + agent_chats for m in conv]


def _byte_level(texts: list[str], template: str) -> PreTrainedTokenizerFast:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(BYTE_LEVEL_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1500,
        special_tokens=BYTE_LEVEL_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        extra_special_tokens=BYTE_LEVEL_SPECIALS[2:],
        chat_template=template,
        clean_up_tokenization_spaces=False,
    )


@pytest.fixture(scope="session")
def byte_level_dirs(tmp_path_factory, chats, agent_chats) -> dict[str, Path]:
    """Byte-level BPE tokenizers (GPT-2 / Llama-3 / Qwen style) with their chat markers as special tokens,
    one with Llama-3's chat template and one with Qwen's (ChatML), saved as a hub model's tokenizer is."""
    texts = _corpus_text(chats, agent_chats)
    dirs = {}
    for name, template in (("llama3", LLAMA3_TEMPLATE), ("qwen", QWEN_TEMPLATE)):
        out = tmp_path_factory.mktemp(f"{name}_tokenizer")
        _byte_level(texts, template).save_pretrained(out)
        dirs[name] = out
    return dirs


# ----------------------------------------------------------------------------- training in this process


def _cosine_lr(lr: float, warmup: int, total: int, step: int) -> float:
    if step < warmup:
        return lr * step / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@pytest.fixture(scope="session")
def cosine_lr():
    """``f(lr, warmup, total, step)``: the lr after ``step`` optimizer steps of a linear warmup over ``warmup``
    steps then a half cosine down to 0 at ``total``; written out here (not transformers' function), so a
    wrong schedule in the loop shows."""
    return _cosine_lr


@pytest.fixture
def train_in_process():
    """Train ``cfg`` here, world size 1, with ``train_single_process`` (no Ray, no worker group to start): for
    the tests about the math. Packs the corpus under ``cfg.output_dir`` first; returns the step metrics."""

    def train(cfg) -> list[dict[str, Any]]:
        from agentflan.train.data import prepare
        from agentflan.train.loop import train_single_process
        from agentflan.train.shards import PackedShards

        packed = prepare(cfg)
        return train_single_process(
            cfg,
            PackedShards(packed.train),
            PackedShards(packed.validation),
            str(packed.tokenizer_dir),
            Path(cfg.output_dir),
        )

    return train
