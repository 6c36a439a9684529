"""Responders that write negative replies: a local HF model (a tiny one built here) and an
OpenAI-compatible endpoint (a stub server stands in: no endpoint can be reached from CI)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from agentflan.config import ResponderConfig
from agentflan.data.record import Message
from agentflan.data.responders import (
    HFResponder,
    NegativeRequest,
    OpenAIResponder,
    TemplateResponder,
    make_responder,
)


def request(i: int, case: str = "c") -> NegativeRequest:
    return NegativeRequest(f"r{i}", case, [Message("user", f"What is the weather in city number {i}?")])


@pytest.fixture(scope="module")
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


def test_hf_responder_generates_deterministically(tiny_model_dir):
    cfg = ResponderConfig(kind="hf", model=str(tiny_model_dir), max_new_tokens=8, batch_size=2)
    responder = make_responder(cfg, seed=0)
    assert isinstance(responder, HFResponder)
    reqs = [request(i) for i in range(3)]
    first = responder.respond(reqs)
    assert len(first) == 3 and all(isinstance(r, str) for r in first)
    assert responder.respond(reqs) == first  # greedy
    # batching (left padding) does not change an answer
    assert HFResponder(cfg.model_copy(update={"batch_size": 1})).respond(reqs) == first


def test_hf_responder_in_the_ray_pipeline(ray_session, tiny_model_dir, shared_data, tmp_path):
    """A model-backed responder runs in Ray actors; whatever it says is checked, and counts add up."""
    from agentflan.config import load_config
    from agentflan.data.pipeline import run_data

    cfg = load_config(
        "pipelines/local.yaml",
        [
            f"data.inputs=[{shared_data}/general/sharegpt_examples.json, {shared_data}/react/fireact_hotpotqa.jsonl]",
            f"data.negatives.tool_pool_files=[{shared_data}/toolbench/G1_query.json]",
            f"data.negatives.responder={{kind: hf, model: {tiny_model_dir}, max_new_tokens: 6}}",
            "data.negatives.case_b_rate=1.0",
            f"output_dir={tmp_path}",
        ],
    )
    m = run_data(cfg)
    neg = next(s for s in m["stages"] if s["name"] == "negatives")
    assert neg["in"] > 5 and neg["in"] == neg["out"] + neg["filtered"] + neg["quarantined"]


class _Stub(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Stub.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        reply = {
            "choices": [
                {
                    "message": {
                        "role": "assistant",
                        "content": f"Plain answer to: {body['messages'][-1]['content']}",
                    }
                }
            ]
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_openai_responder_speaks_the_protocol(monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("TEST_KEY", "sk-test")
        cfg = ResponderConfig(
            kind="openai",
            model="m",
            base_url=f"http://127.0.0.1:{server.server_port}/v1",
            api_key_env="TEST_KEY",
        )
        replies = OpenAIResponder(cfg).respond([request(1), request(2)])
    finally:
        server.shutdown()
    assert replies == [f"Plain answer to: What is the weather in city number {i}?" for i in (1, 2)]
    call = _Stub.seen[0]
    assert call["path"] == "/v1/chat/completions" and call["auth"] == "Bearer sk-test"
    assert call["body"]["model"] == "m" and call["body"]["temperature"] == 0


def test_template_responder_is_offline_and_seeded():
    a = TemplateResponder(seed=0).respond([request(i) for i in range(10)])
    assert a == TemplateResponder(seed=0).respond([request(i) for i in range(10)])
    assert len(set(a)) > 1
    b = NegativeRequest("x", "b", [Message("user", "hi")], reference="Hello there!")
    assert TemplateResponder(seed=0).respond([b]) == ["Hello there!"]
