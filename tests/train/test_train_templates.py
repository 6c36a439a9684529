"""Labels and weights from each named template, and from the tokenizer's own template."""

from __future__ import annotations

import copy

import pytest

from agentflan.train.templates import (
    IGNORE_INDEX,
    TEMPLATES,
    encode_conversation,
    get_template,
    render_text,
)

NAMES = list(TEMPLATES)


def _runs(labels: list[int]) -> list[tuple[int, int]]:
    """[start, stop) of each maximal stretch of trained positions."""
    runs, start = [], None
    for k, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = k
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, k))
            start = None
    return runs


@pytest.mark.parametrize("name", NAMES)
def test_labels_are_exactly_the_trained_replies(name: str, tokenizers, mixed_conversation) -> None:
    tok = tokenizers[name]
    chat = get_template(name)
    sample = encode_conversation(mixed_conversation, tok, name)
    text = render_text(mixed_conversation, name, tok.bos_token, tok.eos_token)

    # The ids are the rendered text, and the Python rendering is what the tokenizer's Jinja template renders.
    assert tok.decode(sample.input_ids) == text == tok.apply_chat_template(mixed_conversation, tokenize=False)
    assert all(lab in (IGNORE_INDEX, tid) for lab, tid in zip(sample.labels, sample.input_ids, strict=True))

    trained = [(i, m) for i, m in enumerate(mixed_conversation) if m["role"] == "assistant" and m.get("loss")]
    runs = _runs(sample.labels)
    assert len(runs) == len(trained)
    end = chat.turns["assistant"].end.replace("{eos}", tok.eos_token)
    lead = chat.turns["assistant"].lead
    for (start, stop), (i, message) in zip(runs, trained, strict=True):
        # Each run starts right after the reply's header and is the reply plus its end-of-turn marker.
        before = render_text(
            mixed_conversation[:i], name, tok.bos_token, tok.eos_token, add_generation_prompt=True
        )
        assert tok.decode(sample.input_ids[:start]) == before
        assert tok.decode(sample.labels[start:stop]) == lead + message["content"] + end
        assert sample.weights[start:stop] == [message["weight"]] * (stop - start)
    assert all(w == 0.0 for w, lab in zip(sample.weights, sample.labels, strict=True) if lab == IGNORE_INDEX)


@pytest.mark.parametrize("name", NAMES)
def test_tool_messages_are_rendered_on_the_observation_side(name: str, mixed_conversation) -> None:
    text = render_text(mixed_conversation, name, "<s>", "</s>")
    observation = {
        "chatml": "<|im_start|>tool\nSunny, 21 C<|im_end|>\n",
        "llama2": "<s>[INST] Sunny, 21 C [/INST]",
        "agentflan": "<|Human|>\u0d46Sunny, 21 C\n ",
    }[name]
    assert observation in text


def test_llama2_folds_the_system_prompt_into_the_first_user_turn(mixed_conversation) -> None:
    text = render_text(mixed_conversation[:3], "llama2", "<s>", "</s>")
    assert text.startswith(
        "<s>[INST] <<SYS>>\nYou are a helpful assistant with a weather tool.\n<</SYS>>\n\n"
        "What is the weather in Paris? [/INST] Thought:"
    )
    assert text.endswith('"Paris"} </s>')


@pytest.mark.parametrize("name", NAMES)
def test_own_template_matches_the_named_template(
    name: str, tokenizers, mixed_conversation, agent_chats
) -> None:
    """The prefix-rendering path (template=None) finds the same spans as the segment path."""
    tok = tokenizers[name]
    for messages in [mixed_conversation, *agent_chats[:5]]:
        named, own = encode_conversation(messages, tok, name), encode_conversation(messages, tok, None)
        assert own.input_ids == named.input_ids
        assert own.labels == named.labels
        assert own.weights == named.weights


@pytest.mark.parametrize("name", NAMES)
def test_generation_markers_agree_with_labels(name: str, tokenizers, agent_chats) -> None:
    """Our Jinja marks replies with {% generation %}: transformers' assistant mask is our trained positions."""
    tok = tokenizers[name]
    messages = agent_chats[0]
    out = tok.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    sample = encode_conversation(messages, tok, name)
    assert out["input_ids"] == sample.input_ids
    assert out["assistant_masks"] == [int(lab != IGNORE_INDEX) for lab in sample.labels]


def test_first_token_is_never_a_target(tokenizers) -> None:
    tok = tokenizers["llama2"]
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello", "loss": True}]
    sample = encode_conversation(messages, tok, "llama2")
    assert sample.labels[0] == IGNORE_INDEX and sample.weights[0] == 0.0
    assert sample.n_trained == len(tok.encode(" hello </s>", add_special_tokens=False))


def test_truncation_keeps_the_head(tokenizers, agent_chats) -> None:
    tok = tokenizers["chatml"]
    full = encode_conversation(agent_chats[0], tok, "chatml")
    cut = encode_conversation(agent_chats[0], tok, "chatml", max_length=50)
    assert len(full) > 50 and not full.truncated
    assert cut.truncated and len(cut) == 50
    assert (cut.input_ids, cut.labels, cut.weights) == (
        full.input_ids[:50],
        full.labels[:50],
        full.weights[:50],
    )
    assert encode_conversation(agent_chats[0], tok, "chatml", max_length=len(full)) == full


def test_untrained_conversation_has_no_labels(tokenizers, mixed_conversation) -> None:
    messages = [{**m, "loss": False} for m in mixed_conversation]
    assert encode_conversation(messages, tokenizers["agentflan"], "agentflan").n_trained == 0


def test_errors_name_the_problem(tokenizers, mixed_conversation) -> None:
    tok = tokenizers["chatml"]
    with pytest.raises(ValueError, match="unknown chat template 'vicuna'"):
        encode_conversation(mixed_conversation, tok, "vicuna")
    with pytest.raises(ValueError, match="message 1: role 'human'"):
        encode_conversation(
            [{"role": "system", "content": "s"}, {"role": "human", "content": "x"}], tok, "chatml"
        )
    bare = copy.deepcopy(tok)
    bare.chat_template = None
    with pytest.raises(ValueError, match="no chat_template"):
        encode_conversation(mixed_conversation, bare, None)


def test_own_template_that_rewrites_history_is_refused(tokenizers, mixed_conversation) -> None:
    tok = copy.deepcopy(tokenizers["chatml"])
    # Renders the last message differently from the same message in a longer conversation.
    tok.chat_template = (
        "{% for m in messages %}{% if loop.last %}LAST {% endif %}{{ m['content'] }}\n{% endfor %}"
    )
    with pytest.raises(ValueError, match="prefix-consistently"):
        encode_conversation(mixed_conversation, tok, None)


def test_a_template_without_bos_is_refused_for_templates_that_need_it(tokenizers) -> None:
    tok = copy.deepcopy(tokenizers["chatml"])
    tok.bos_token = None
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "loss": True}]
    assert encode_conversation(messages, tok, "chatml").n_trained > 0  # ChatML writes no BOS
    with pytest.raises(ValueError, match=r"'agentflan' writes \{bos\}"):
        encode_conversation(messages, tok, "agentflan")
