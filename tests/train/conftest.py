"""Fixtures for the training-side tests: real conversations from the bundled sample data, and one small BPE
tokenizer per named template trained on them (session-scoped: training takes well under a second each)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import PreTrainedTokenizerFast

import agentflan
from agentflan.train.templates import TEMPLATES, render_text
from agentflan.train.tokenizer import BOS, EOS, train_bpe_tokenizer

SAMPLE_DATA = Path(agentflan.__file__).parent / "sample_data"
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
