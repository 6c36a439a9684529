"""Tokenization parity across tokenizer families: the ids training sees are the ids inference sees.

Families: (a) Llama-2 style SentencePiece (byte fallback, dummy prefix), loaded through AutoTokenizer from a
tokenizer.model; (b) byte-level BPE with chat markers as special tokens (Llama-3 / Qwen style); (c) the BPE the
embedded default trains. Every named template runs on every family (a model's tokenizer is first made to speak
the template: adapt_tokenizer), and a model's own Jinja template in the Llama-3 and the Qwen/ChatML style.

For each conversation:
- the training ids are the ids of the whole rendered conversation tokenized at once;
- the rendered text is what the tokenizer's chat_template renders (byte for byte), and the prompt up to each
  trained reply (with the generation prompt) tokenizes to a prefix of the training ids ending exactly where
  the reply's labels start;
- the labels cover exactly the reply and its end-of-turn marker, nothing of the header or the separator.
"""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from agentflan.train.templates import IGNORE_INDEX, TEMPLATES, encode_conversation, get_template, render_text
from agentflan.train.tokenizer import adapt_tokenizer

FAMILIES = ("sentencepiece", "byte_level", "trained")
CASES = [(family, name) for family in FAMILIES for name in TEMPLATES] + [
    ("byte_level", "own:llama3"),
    ("byte_level", "own:qwen"),
]


@pytest.fixture(scope="module")
def conversations(mixed_conversation_module, agent_chats, chats):
    return [mixed_conversation_module, *agent_chats[:6], chats[0], chats[502]]


@pytest.fixture(scope="module")
def mixed_conversation_module():
    return [
        {"role": "system", "content": "You are a helpful assistant with a weather tool."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": 'Thought: call it.\nAction: weather\nAction Input: {"city": "Paris"}',
         "loss": True, "weight": 2.0},
        {"role": "tool", "content": "Sunny, 21 C", "name": "weather"},
        {"role": "assistant", "content": "It is sunny.", "loss": False},
        {"role": "user", "content": "Thanks! And tomorrow? (Ça va?) 42 km"},
        {"role": "assistant", "content": "I do not know yet. 🙂", "loss": True, "weight": 0.5},
    ]  # fmt: skip


def _tokenizer(family: str, name: str, tokenizers, sentencepiece_dir, byte_level_dirs):
    if family == "trained":
        return tokenizers[name], name
    path = sentencepiece_dir if family == "sentencepiece" else byte_level_dirs["llama3"]
    if name.startswith("own:"):
        return AutoTokenizer.from_pretrained(byte_level_dirs[name.split(":")[1]]), None
    tok = AutoTokenizer.from_pretrained(path)
    adapt_tokenizer(tok, name)
    return tok, name


def test_the_sentencepiece_fixture_is_a_llama_tokenizer(sentencepiece_dir):
    tok = AutoTokenizer.from_pretrained(sentencepiece_dir)
    assert tok.is_fast and type(tok).__name__.startswith("Llama")
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.convert_ids_to_tokens(tok("hello", add_special_tokens=False)["input_ids"])[0].startswith(
        "\u2581"
    )
    assert "<0xF0>" in tok.convert_ids_to_tokens(tok("🙂", add_special_tokens=False)["input_ids"])  # bytes


def test_segments_and_whole_text_disagree_on_sentencepiece(sentencepiece_dir, mixed_conversation_module):
    """Why training tokenizes the whole text: segment by segment, SentencePiece's dummy prefix and merges at
    the boundaries give other ids than inference's whole-text tokenization (the bug this file guards)."""
    from agentflan.train.templates import render_segments

    tok = AutoTokenizer.from_pretrained(sentencepiece_dir)
    adapt_tokenizer(tok, "agentflan")
    segments = render_segments(mixed_conversation_module, "agentflan", tok.bos_token, tok.eos_token)
    by_segment = [i for seg in segments for i in tok(seg.text, add_special_tokens=False)["input_ids"]]
    whole = tok("".join(seg.text for seg in segments), add_special_tokens=False)["input_ids"]
    assert by_segment != whole
    assert encode_conversation(mixed_conversation_module, tok, "agentflan").input_ids == whole


@pytest.mark.parametrize(("family", "name"), CASES, ids=[f"{f}-{n}" for f, n in CASES])
def test_training_ids_are_inference_ids(
    family, name, tokenizers, sentencepiece_dir, byte_level_dirs, conversations
):
    tok, template = _tokenizer(family, name, tokenizers, sentencepiece_dir, byte_level_dirs)
    for messages in conversations:
        sample = encode_conversation(messages, tok, template)
        text = tok.apply_chat_template([_plain(m) for m in messages], tokenize=False)
        if template is not None:
            assert text == render_text(messages, template, tok.bos_token, tok.eos_token)  # byte for byte
        whole = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        assert sample.input_ids == whole["input_ids"]

        trained = [i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("loss")]
        runs = _runs(sample.labels)
        assert len(runs) == len(trained)
        offsets = whole["offset_mapping"]
        for (start, stop), i in zip(runs, trained, strict=True):
            prompt = tok.apply_chat_template(
                [_plain(m) for m in messages[:i]], tokenize=False, add_generation_prompt=True
            )
            prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            assert sample.input_ids[: len(prompt_ids)] == prompt_ids and len(prompt_ids) == start
            covered = text[offsets[start][0] : offsets[stop - 1][1]]
            assert covered == _reply_text(messages[i], template, tok), (family, name, covered)
            assert sample.weights[start:stop] == [messages[i].get("weight", 1.0)] * (stop - start)


def _plain(m):
    return {"role": m["role"], "content": m["content"]}


def _reply_text(message, template, tok) -> str:
    """What a reply's labels must cover: the reply (as the template writes it) and its end-of-turn marker."""
    if template is None:  # own templates here: Llama-3 trims the content, both end with one marker
        marker = "<|eot_id|>" if "<|eot_id|>" in (tok.chat_template or "") else "<|im_end|>"
        content = message["content"].strip() if marker == "<|eot_id|>" else message["content"]
        return content + marker
    turn = get_template(template).turns["assistant"]
    return turn.lead + message["content"] + turn.end.replace("{eos}", tok.eos_token or "")


def _runs(labels):
    runs, start = [], None
    for k, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = k
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, k))
            start = None
    return runs


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_adapt_tokenizer_sets_markers_template_eos_and_pad(name, sentencepiece_dir):
    tok = AutoTokenizer.from_pretrained(sentencepiece_dir)
    before = len(tok)
    added = adapt_tokenizer(tok, name)
    chat = get_template(name)
    assert added == list(chat.special_tokens) and len(tok) == before + len(added)
    for marker in chat.special_tokens:  # each marker is one token now
        assert len(tok(marker, add_special_tokens=False)["input_ids"]) == 1
    assert tok.eos_token == {"chatml": "<|im_end|>", "llama2": "</s>", "agentflan": "\u0d3f"}[name]
    assert tok.pad_token == "<unk>"  # Llama-2 has no pad: its unk stands in (never trained on)
    assert "{% generation %}" in tok.chat_template
