"""The hf backend: the whole conversation reaches the chat template, a step's prompts are one batch, and
greedy replies do not depend on the batching."""

from __future__ import annotations

import pytest
from scripted_env import ADD, Counter

from agentflan.backends import BackendFailure, generate, make_backend
from agentflan.config import BackendConfig
from agentflan.generation import ChatGenerator
from agentflan.rollout.engine import run_episodes
from agentflan.rollout.types import Reply

CONVO = [
    {"role": "user", "content": "Make the total 3."},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "add", "arguments": '{"amount": 3}'}}]},
    {"role": "tool", "tool_call_id": "call_0", "content": "3"},
]  # fmt: skip


def test_prompt_carries_calls_tool_results_and_tools(tiny_model_dir):
    from transformers import AutoTokenizer

    from agentflan.train.tool_templates import JINJA_TEMPLATES

    gen = ChatGenerator.__new__(ChatGenerator)  # prompt rendering only
    gen.tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    gen.tokenizer.chat_template = JINJA_TEMPLATES["hermes"].source
    prompt = gen.prompt(CONVO, [ADD])
    assert '<tool_call>\n{"name": "add", "arguments": {"amount": 3}}\n</tool_call>' in prompt
    assert "<tool_response>\n3\n</tool_response>" in prompt
    assert "\"name\": \"add\"" in prompt.split("<|im_end|>")[0]  # the tools, in the system turn


def test_hf_backend_batches_a_step_and_reports_tokens(tiny_model_dir):
    cfg = BackendConfig(model=str(tiny_model_dir), num_actors=0, batch_size=16, sampling={"max_new_tokens": 6})
    backend = make_backend(cfg, "hermes")
    sizes = []
    model = backend._local.gen.model
    real = model.generate

    def counting(**kw):
        sizes.append(kw["input_ids"].shape[0])
        return real(**kw)

    model.generate = counting
    env = Counter([{"target": i} for i in range(1, 9)])
    results = run_episodes([(env, t) for t in env.load_tasks()], backend, 8)
    assert sizes and sizes[0] == 8  # the first step of all 8 episodes: one generate call
    assert all(r.steps >= 1 and r.prompt_tokens > 0 and r.completion_tokens > 0 for r in results)
    one = make_backend(cfg.model_copy(update={"batch_size": 1}), "hermes")
    requests = [([{"role": "user", "content": f"Make the total {i}."}], None) for i in range(4)]
    assert [r.content for r in generate(one, requests)] == [r.content for r in generate(backend, requests)]


def test_a_prompt_that_fills_the_context_is_not_generated(tiny_model_dir):
    backend = make_backend(BackendConfig(model=str(tiny_model_dir), num_actors=0), None)
    [long, short] = generate(backend, [([{"role": "user", "content": "word " * 400}], None), (CONVO[:1], None)])
    assert isinstance(long, BackendFailure) and long.reason == "context_overflow"
    assert isinstance(short, Reply)


@pytest.mark.ray
def test_hf_backend_on_long_lived_ray_actors(ray_session, tiny_model_dir):
    cfg = BackendConfig(model=str(tiny_model_dir), num_actors=2, sampling={"max_new_tokens": 4})
    backend = make_backend(cfg, None)
    requests = [([{"role": "user", "content": f"Question {i}?"}], None) for i in range(5)]
    first = generate(backend, requests)
    actors = list(backend._actors)
    assert [r.content for r in generate(backend, requests)] == [r.content for r in first]
    assert backend._actors == actors  # the same actors answered twice: no reload
    local = make_backend(cfg.model_copy(update={"num_actors": 0}), None)
    assert [r.content for r in generate(local, requests)] == [r.content for r in first]
    backend.close()
