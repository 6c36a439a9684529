"""The BPE tokenizer: trains deterministically, keeps template markers whole, round-trips through disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from agentflan.train.templates import TEMPLATES, encode_conversation, get_template, render_text
from agentflan.train.tokenizer import BOS, EOS, PAD, UNK, train_bpe_tokenizer


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_special_tokens_are_single_tokens(name: str, tokenizers) -> None:
    tok = tokenizers[name]
    assert len(tok) <= 1000
    for token in (BOS, EOS, PAD, UNK, *get_template(name).special_tokens):
        ids = tok.encode(token, add_special_tokens=False)
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids[0]) == token
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (BOS, EOS, PAD, UNK)


def test_training_is_deterministic_across_processes(chats, tmp_path: Path) -> None:
    """Same texts, same tokenizer, also in a fresh process (the trainer's hash maps are randomly seeded)."""
    texts = [render_text(m, "chatml", BOS, EOS) for m in chats[:200]]
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    here = train_bpe_tokenizer(iter(texts), 600, "chatml").backend_tokenizer.to_str()
    script = (
        "import json, sys; from agentflan.train.tokenizer import train_bpe_tokenizer; "
        "texts = json.load(open(sys.argv[1])); "
        "sys.stdout.write(train_bpe_tokenizer(texts, 600, 'chatml').backend_tokenizer.to_str())"
    )
    there = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "texts.json")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert here == there


def test_byte_level_encodes_anything(tokenizers) -> None:
    tok = tokenizers["chatml"]
    text = "naïve café — 東京 🚀 <|im_start|>"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_save_and_reload_with_auto_tokenizer(
    name: str, tokenizers, mixed_conversation, tmp_path: Path
) -> None:
    tok = tokenizers[name]
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)

    assert loaded.get_vocab() == tok.get_vocab()
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    rendered = loaded.apply_chat_template(mixed_conversation, tokenize=False)
    assert rendered == render_text(mixed_conversation, name, BOS, EOS)
    prompt = loaded.apply_chat_template(mixed_conversation[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == render_text(mixed_conversation[:2], name, BOS, EOS, add_generation_prompt=True)
    # The reloaded tokenizer's own template gives the same training sample as the named template.
    assert encode_conversation(mixed_conversation, loaded, None) == encode_conversation(
        mixed_conversation, tok, name
    )


def test_too_small_a_vocabulary_is_refused() -> None:
    with pytest.raises(ValueError, match="below the 256 bytes"):
        train_bpe_tokenizer(["hello"], 258, "chatml")
