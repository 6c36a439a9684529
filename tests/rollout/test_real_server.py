"""The ``openai`` backend against a real server: ``transformers serve`` (the ``serving`` extra) serving a tiny
model with the Hermes tool template, on this machine. Skipped where the extra is not installed."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from scripted_env import Counter

from agentflan.backends import BackendFailure, make_backend
from agentflan.config import BackendConfig
from agentflan.rollout.engine import run_episodes
from agentflan.rollout.types import Reply

pytest.importorskip("openai", reason="transformers serve needs the serving extra (openai, fastapi, uvicorn)")

pytestmark = pytest.mark.slow  # a transformers serve process per module: ~10 s to start


@pytest.fixture(scope="module")
def hermes_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with the Hermes tool-calling template (what `template: hermes` exports)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentflan.train.tool_templates import JINJA_TEMPLATES

    out = tmp_path_factory.mktemp("hermes")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = JINJA_TEMPLATES["hermes"].source
    tok.save_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.max_position_embeddings = 2048  # RoPE: room for the tool schemas in the prompt
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def served(hermes_model_dir, tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    cli = Path(sys.executable).with_name("transformers")
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(cli), "serve", str(hermes_model_dir), "--port", str(port), "--device", "cpu",
             "--dtype", "float32"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"transformers serve did not start: {log.read_text()[-2000:]}")
                time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1", str(hermes_model_dir)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_rollouts_against_transformers_serve(served):
    base_url, model = served
    cfg = BackendConfig(
        kind="openai", model=model, base_url=base_url, max_in_flight=4, timeout_s=120,
        sampling={"max_new_tokens": 12},
    )  # fmt: skip
    backend = make_backend(cfg, "hermes")
    # a conversation with an earlier call and its result: the server takes tool_calls and tool messages
    convo = [
        {"role": "user", "content": "Make the total 3."},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "add", "arguments": '{"amount": 3}'}}]},
        {"role": "tool", "tool_call_id": "call_0", "content": "3"},
    ]  # fmt: skip
    env = Counter([{"target": i} for i in range(1, 5)])
    [answer] = [f.result() for f in backend.submit([(convo, env.make(env.load_tasks()[0]).tools())])]
    assert isinstance(answer, Reply), answer
    assert answer.prompt_tokens and answer.completion_tokens and answer.finish_reason in ("stop", "length")
    results = run_episodes([(env, t) for t in env.load_tasks()], backend, 4)
    backend.close()
    assert len(results) == 4 and all(r.reason != "backend_error" for r in results), [r.detail for r in results]
    assert all(r.steps >= 1 and r.prompt_tokens > 0 for r in results)


def test_a_prompt_longer_than_the_context_is_an_overflow(served):
    base_url, model = served
    backend = make_backend(BackendConfig(kind="openai", model=model, base_url=base_url, max_retries=0), "hermes")
    long = [{"role": "user", "content": "word " * 3000}]  # the model holds 2048 positions
    [answer] = [f.result() for f in backend.submit([(long, None)])]
    assert isinstance(answer, BackendFailure) and answer.reason == "context_overflow", answer
