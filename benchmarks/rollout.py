"""Benchmark: rollout episodes per second, batched stepping against one episode at a time.

Both arms run in one process on the same tiny model (a 2-layer Llama with the Hermes tool template, as
``template: hermes`` exports it; or ``--model DIR``, e.g. the embedded default's ``<output_dir>/model``), the
same episodes and greedy decoding, with the ``hf`` backend on the CPU. Each episode is ``--turns`` user turns
of one reply each, so every episode costs the same number of model calls whatever the untrained model says.
``batched``: ``--live`` episodes live at once, every one waiting for the model in one batch; ``one at a
time``: ``max_live 1``. With ``--serve``, the same comparison for the ``openai`` backend against
``transformers serve`` on the same model (``pip install 'transformers[serving]'``):

    python benchmarks/rollout.py [--model DIR] [--episodes 32] [--live 16] [--turns 4] [--serve]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from agentflan.rollout.types import Observation, Reply, Task, Verdict

ADD = {"type": "function", "function": {"name": "add", "description": "Add to the total.", "parameters": {
    "type": "object", "properties": {"amount": {"type": "integer"}}, "required": ["amount"]}}}  # fmt: skip


class TurnsEnv:
    """``turns`` user turns; any reply ends its turn (calls are answered, then the turn moves on)."""

    max_steps = 1

    def __init__(self, task: Task) -> None:
        self.task, self.left = task, task.data["turns"]

    def reset(self) -> list[dict[str, Any]]:
        return [{"role": "system", "content": "You keep a running total."}]

    def tools(self) -> list[dict[str, Any]]:
        return [ADD]

    def next_turn(self) -> list[dict[str, Any]] | None:
        if not self.left:
            return None
        self.left -= 1
        return [{"role": "user", "content": f"Add {self.left + int(self.task.id)} to the total."}]

    def step(self, reply: Reply) -> Observation:
        msgs = [{"role": "tool", "tool_call_id": c.id, "content": "ok"} for c in reply.calls if c.error is None]
        return Observation(messages=msgs, turn_over=True)

    def step_limit_hit(self) -> None:
        pass

    def verdict(self) -> Verdict:
        return Verdict(False, "turns")


class Turns:
    name = "turns"

    def __init__(self, episodes: int, turns: int) -> None:
        self.tasks = [Task("turns", str(i), "turns", {"turns": turns}) for i in range(episodes)]

    def load_tasks(self) -> list[Task]:
        return self.tasks

    def make(self, task: Task) -> TurnsEnv:
        return TurnsEnv(task)


def tiny_model(out: Path) -> Path:
    """A 2-layer Llama with a byte-level tokenizer and the Hermes template: no download."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from agentflan.train.tool_templates import JINJA_TEMPLATES

    # trained on what its prompts hold (the template's tool preamble, the tool schema), as the embedded default's
    # tokenizer is trained on its corpus: prompts of realistic length in tokens
    texts = [f"Add {i} to the total. The total is {i * 7}. " * 4 for i in range(200)]
    texts += [JINJA_TEMPLATES["hermes"].source, json.dumps(ADD)] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    special = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=2048, special_tokens=special))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>",
                                   pad_token="<pad>", unk_token="<unk>")  # fmt: skip
    fast.chat_template = JINJA_TEMPLATES["hermes"].source
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                      pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(out)
    fast.save_pretrained(out)
    return out


def timed(backend: Any, episodes: int, live: int, turns: int) -> tuple[float, int]:
    from agentflan.rollout.engine import run_episodes

    env = Turns(episodes, turns)
    start = time.perf_counter()
    results = run_episodes([(env, t) for t in env.load_tasks()], backend, live)
    secs = time.perf_counter() - start
    return secs, sum(r.steps for r in results)


def serve(model: Path, port: int, batching: bool) -> subprocess.Popen:
    cli = Path(sys.executable).with_name("transformers")
    flags = ["--continuous-batching"] if batching else []
    proc = subprocess.Popen([str(cli), "serve", str(model), "--port", str(port), "--device", "cpu",
                             "--dtype", "float32", *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    for _ in range(180):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return proc
        except OSError:
            time.sleep(1)
    proc.terminate()
    raise RuntimeError("transformers serve did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="a model directory (default: a tiny one built here)")
    ap.add_argument("--episodes", type=int, default=32)
    ap.add_argument("--live", type=int, default=16)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a model actor gets 1 CPU)")
    ap.add_argument("--serve", action="store_true", help="also the openai backend against transformers serve")
    ap.add_argument("--continuous-batching", action="store_true", help="transformers serve batches requests")
    ap.add_argument("--no-hf", action="store_true", help="only the openai arms")
    args = ap.parse_args()

    import torch

    from agentflan.backends import make_backend
    from agentflan.config import BackendConfig

    torch.set_num_threads(args.threads)
    model = args.model or tiny_model(Path(tempfile.mkdtemp(prefix="rollout-bench-")))
    sampling = {"max_new_tokens": args.max_new_tokens}
    rows = []
    hf = make_backend(BackendConfig(model=str(model), num_actors=0, batch_size=args.live, sampling=sampling),
                      "hermes")  # fmt: skip
    timed(hf, 2, 2, 1)  # warm-up
    for label, live in (("hf, one at a time", 1), (f"hf, batched ({args.live} live)", args.live))[: 0 if args.no_hf else 2]:
        secs, steps = timed(hf, args.episodes, live, args.turns)
        rows.append((label, secs, steps))
    hf.close()
    if args.serve:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = serve(model, port, args.continuous_batching)
        try:
            cfg = BackendConfig(kind="openai", model=str(model), base_url=f"http://127.0.0.1:{port}/v1",
                                max_in_flight=args.live, timeout_s=300, sampling=sampling)  # fmt: skip
            api = make_backend(cfg, "hermes")
            timed(api, 2, 2, 1)
            for label, live in (("openai (transformers serve), one at a time", 1),
                                (f"openai (transformers serve), {args.live} in flight", args.live)):  # fmt: skip
                secs, steps = timed(api, args.episodes, live, args.turns)
                rows.append((label, secs, steps))
            api.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"{args.episodes} episodes x {args.turns} replies, max_new_tokens {args.max_new_tokens}, "
          f"{args.threads} torch thread(s), model {model}\n")  # fmt: skip
    print("| arm | seconds | episodes/s | replies/s | speed-up |")
    print("|---|---|---|---|---|")
    base: dict[str, float] = {}
    for label, secs, steps in rows:
        kind = label.split(",")[0].split(" ")[0]
        base.setdefault(kind, secs)
        print(f"| {label} | {secs:.1f} | {args.episodes / secs:.2f} | {steps / secs:.1f} | {base[kind] / secs:.1f}x |")


if __name__ == "__main__":
    main()
