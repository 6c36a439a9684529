"""CI's proof that the base install (`pip install -e .`, README command 1) fine-tunes a pretrained checkpoint.

Run with the python of a venv made exactly as README command 1 makes it, from the repository root, before any
test extra is installed (the test extras pull in packages, such as accelerate through peft, that a user of the
base install does not have):

    python3 -m venv /tmp/base-venv && /tmp/base-venv/bin/pip install -e . && /tmp/base-venv/bin/python .ci/base_install_check.py

It writes a small Llama checkpoint as a user's would lie on disk (``from_config`` + ``save_pretrained``, with a
byte-level BPE tokenizer trained here on the bundled chats: nothing is downloaded) and runs the checkpoint job
on it through the installed ``agentflan`` command: the corpus on Ray Data, 2 optimizer steps under DeepSpeed
ZeRO-3 on 2 Ray Train workers, the model exported. No eval: the point is the install, and CI time is short.
About a minute and a half on 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "platform/agentflan/sample_data"
HIDDEN = 64  # not the embedded default's width (96): the exported model shows which one was trained


def write_checkpoint(out: Path) -> None:
    """A 2-layer Llama (untied, as Llama-2) and its tokenizer, laid out as a hub checkpoint is."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    chats = json.loads((SAMPLE / "general/fastchat_dummy_conversation.json").read_text())
    texts = [turn["value"] for chat in chats for turn in chat["conversations"]]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=1000,
            special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tok.save_pretrained(out)


def main() -> int:
    if importlib.util.find_spec("peft") is not None:
        print("base install check: peft is installed here; run this in a venv made by `pip install -e .` alone")
        return 2
    agentflan = Path(sys.executable).parent / "agentflan"
    with tempfile.TemporaryDirectory(prefix="agentflan-base-") as tmp:
        checkpoint, out = Path(tmp) / "checkpoint", Path(tmp) / "run"
        write_checkpoint(checkpoint)
        command = [
            str(agentflan), "train", "pipelines/local.yaml", f"output_dir={out}",
            f"data.inputs=[{{path: {SAMPLE}/react/fireact_hotpotqa.jsonl, source: react, kind: agent}}, "
            f"{{path: {SAMPLE}/general/fastchat_dummy_conversation.json, source: sharegpt, kind: general}}]",
            f"train.model.name_or_path={checkpoint}", "train.model.template=agentflan",
            "train.deepspeed.zero_stage=3", "train.max_steps=2", "train.seq_len=512",
        ]  # fmt: skip
        print("base install check:", " ".join(command), flush=True)
        start = time.monotonic()
        proc = subprocess.run(command, cwd=REPO)
        seconds = time.monotonic() - start
        log = out / "logs/agentflan.log"
        if proc.returncode != 0:
            tail = log.read_text().splitlines()[-60:] if log.is_file() else ["(no log)"]
            print("\n".join(tail))
            print(f"base install check FAILED: agentflan train exited {proc.returncode} after {seconds:.0f} s")
            return 1
        steps = [json.loads(line) for line in (out / "train/steps.jsonl").read_text().splitlines()]
        exported = json.loads((out / "model/config.json").read_text())
        problems = []
        if max(s.get("step", 0) for s in steps) != 2:
            problems.append(f"expected 2 optimizer steps, steps.jsonl ends at {steps[-1]}")
        if exported.get("hidden_size") != HIDDEN:
            problems.append(f"the exported model is not the checkpoint (hidden_size {exported.get('hidden_size')})")
        if problems:
            print("base install check FAILED: " + "; ".join(problems))
            return 1
        print(f"base install check: ok, the checkpoint trained 2 steps under ZeRO-3 in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
