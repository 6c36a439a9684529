"""Training on native tool calls with a tool-calling Jinja template (``hermes``: Hermes/Qwen ``<tool_call>``
tags; ``llama31``: Llama-3.1 ``{"name", "parameters"}`` JSON). Both templates are written here
(``agentflan/train/chat_templates``), the tokenizers are trained on the sample corpus: nothing is downloaded.

What must hold: the ids are those of ``apply_chat_template(messages, tools=...)`` tokenized whole (what
inference sees); the thought, the function names and the arguments are trained at their own weights (a token
takes the weight of the part its first character lies in); the call's structure at the message's weight; a
part at weight 0 is not trained; and the weights change the loss by exactly what they say.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from agentflan.data.record import CALL_PARTS
from agentflan.train.loss import IGNORE_INDEX, weighted_token_loss
from agentflan.train.model_template import chat_message
from agentflan.train.templates import encode_conversation
from agentflan.train.tokenizer import BOS, EOS, train_bpe_tokenizer
from agentflan.train.tool_templates import JINJA_TEMPLATES

NATIVE = tuple(JINJA_TEMPLATES)
PART_WEIGHTS = {"reasoning": 1.0, "names": 0.25, "arguments": 0.75}
THOUGHT = "I need the weather in Paris and the local time there."
CALLS = [("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_time", {"timezone": "Europe/Paris"})]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"The {name[4:]} of a place.",
            "parameters": {
                "type": "object",
                "properties": {key: {"type": "string"} for key in args},
                "required": list(args),
            },
        },
    }
    for name, args in CALLS
]


def conversation(
    part_weights: dict[str, float] | None = None, weight: float = 1.0, thought_as: str = "content"
) -> list[dict[str, Any]]:
    """A parallel two-call step, the two results, and a final answer (weighed 0.5)."""
    calls = [
        {"id": f"call_{k}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
        for k, (name, args) in enumerate(CALLS)
    ]
    return [
        {"role": "system", "content": "You are a helpful assistant.", "loss": False},
        {"role": "user", "content": "What's the weather and time in Paris?", "loss": False},
        {
            "role": "assistant",
            "content": THOUGHT if thought_as == "content" else "",
            "reasoning": THOUGHT if thought_as == "reasoning" else None,
            "tool_calls": calls,
            "part_weights": dict(PART_WEIGHTS if part_weights is None else part_weights),
            "loss": True,
            "weight": weight,
        },
        {
            "role": "tool",
            "content": '{"temp": 18}',
            "tool_call_id": "call_0",
            "name": "get_weather",
            "loss": False,
        },
        {
            "role": "tool",
            "content": '{"time": "14:05"}',
            "tool_call_id": "call_1",
            "name": "get_time",
            "loss": False,
        },
        {"role": "assistant", "content": "It is 18 °C and 14:05 in Paris.", "loss": True, "weight": 0.5},
    ]


@pytest.fixture(scope="module")
def native_tokenizers(chats) -> dict[str, Any]:
    """A 1,000-token byte-level BPE per tool-calling template, trained on chats and rendered calls."""
    texts = [m["content"] for c in chats for m in c] + [json.dumps(t) for t in TOOLS] * 20
    texts += [THOUGHT, json.dumps({"name": CALLS[0][0], "arguments": CALLS[0][1]})] * 20
    return {name: train_bpe_tokenizer(texts, 1000, name) for name in NATIVE}


def rendered(tok, messages, **kw) -> str:
    return tok.apply_chat_template([chat_message(m) for m in messages], tools=TOOLS, tokenize=False, **kw)


def expected_part_spans(text: str, template: str, thought_in_text: bool) -> list[tuple[int, int, str]]:
    """Where the step's parts are in the rendered text, found from how each template writes a call (written
    out here, apart from the code under test)."""
    step = text.index("assistant")  # the first assistant header: the call step
    spans = []
    if thought_in_text:
        k = text.index(THOUGHT, step)
        spans.append((k, k + len(THOUGHT), "reasoning"))
    key = '"arguments": ' if template == "hermes" else '"parameters": '
    for name, args in CALLS:
        k = text.index(f'{{"name": "{name}", {key}', step) + len('{"name": "')
        spans.append((k, k + len(name), "names"))
        a = text.index(key, k) + len(key)
        spans.append((a, a + len(json.dumps(args)), "arguments"))
    return spans


def token_starts(tok, text: str) -> list[int]:
    return [s for s, _ in tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]


@pytest.mark.parametrize("template", NATIVE)
def test_ids_are_the_whole_rendered_conversation(template, native_tokenizers) -> None:
    tok = native_tokenizers[template]
    messages = conversation()
    sample = encode_conversation(messages, tok, None, tools=TOOLS)
    text = rendered(tok, messages)
    assert '"name": "get_time"' in text and "Europe/Paris" in text  # both parallel calls are rendered
    assert sample.input_ids == tok(text, add_special_tokens=False)["input_ids"]
    # the prompt a user renders for the step is the training text up to the step's first trained token
    prompt = rendered(tok, messages[:2], add_generation_prompt=True)
    assert text.startswith(prompt)
    first_trained = next(i for i, label in enumerate(sample.labels) if label != IGNORE_INDEX)
    assert token_starts(tok, text)[first_trained] == len(prompt)


@pytest.mark.parametrize("template", NATIVE)
def test_thought_names_and_arguments_carry_their_own_weights(template, native_tokenizers) -> None:
    tok = native_tokenizers[template]
    messages = conversation(weight=0.9)
    sample = encode_conversation(messages, tok, None, tools=TOOLS)
    text = rendered(tok, messages)
    starts = token_starts(tok, text)
    parts = expected_part_spans(text, template, thought_in_text=True)
    step_end = text.index(JINJA_TEMPLATES[template].end, parts[-1][1]) + len(JINJA_TEMPLATES[template].end)
    step_start = len(rendered(tok, messages[:2], add_generation_prompt=True))
    seen = set()
    for i, start in enumerate(starts):
        if not step_start <= start < step_end:
            continue
        part = next((p for a, b, p in parts if a <= start < b), None)
        expected = PART_WEIGHTS[part] if part else 0.9  # structure and end marker: the message's weight
        assert sample.labels[i] == sample.input_ids[i], (i, text[start : start + 10])
        assert sample.weights[i] == pytest.approx(expected), (part, text[start : start + 10])
        seen.add(part)
    assert seen == {"reasoning", "names", "arguments", None}
    # the tool results are never trained; the final answer is, at its own weight
    for a, b in [(text.index('{"temp": 18}'), text.index('{"temp": 18}') + 12)]:
        assert all(sample.labels[i] == IGNORE_INDEX for i, s in enumerate(starts) if a <= s < b)
    answer = text.index("It is 18")
    assert {sample.weights[i] for i, s in enumerate(starts) if s >= answer and sample.labels[i] != -100} == {
        0.5
    }


@pytest.mark.parametrize("template", NATIVE)
def test_a_part_at_weight_zero_is_not_trained(template, native_tokenizers) -> None:
    tok = native_tokenizers[template]
    messages = conversation({"reasoning": 1.0, "names": 0.0, "arguments": 1.0})
    sample = encode_conversation(messages, tok, None, tools=TOOLS)
    text = rendered(tok, messages)
    starts = token_starts(tok, text)
    names = [(a, b) for a, b, p in expected_part_spans(text, template, True) if p == "names"]
    in_names = [i for i, s in enumerate(starts) if any(a <= s < b for a, b in names)]
    assert in_names and all(sample.labels[i] == IGNORE_INDEX for i in in_names)
    assert all(sample.weights[i] == 0.0 for i in in_names)


def test_reasoning_is_trained_where_the_template_renders_it(native_tokenizers) -> None:
    """Hermes writes a reasoning text as ``<think>``; Llama-3.1's template drops it (nothing to train)."""
    messages = conversation(thought_as="reasoning")
    hermes = native_tokenizers["hermes"]
    text = rendered(hermes, messages)
    assert f"<think>\n{THOUGHT}\n</think>" in text
    sample = encode_conversation(messages, hermes, None, tools=TOOLS)
    k = text.index(THOUGHT)
    thought = [i for i, s in enumerate(token_starts(hermes, text)) if k <= s < k + len(THOUGHT)]
    assert thought and all(sample.labels[i] != IGNORE_INDEX for i in thought)

    llama = native_tokenizers["llama31"]
    assert THOUGHT not in rendered(llama, messages)
    sample = encode_conversation(messages, llama, None, tools=TOOLS)
    assert sample.input_ids == llama(rendered(llama, messages), add_special_tokens=False)["input_ids"]
    assert 0.25 in sample.weights and 0.75 in sample.weights  # the names and arguments are still weighed


@pytest.mark.parametrize("template", NATIVE)
def test_part_weights_change_the_loss_by_what_they_say(template, native_tokenizers) -> None:
    """Raising the names' weight from 0.25 to 1 adds exactly 0.75 x their tokens' cross-entropy to the summed
    loss; the trained-token count stays the same."""
    tok = native_tokenizers[template]
    low = encode_conversation(conversation(), tok, None, tools=TOOLS)
    high = encode_conversation(conversation({**PART_WEIGHTS, "names": 1.0}), tok, None, tools=TOOLS)
    assert low.input_ids == high.input_ids and low.labels == high.labels
    names = [i for i, (a, b) in enumerate(zip(low.weights, high.weights, strict=True)) if a != b]
    assert names and all(low.weights[i] == 0.25 and high.weights[i] == 1.0 for i in names)

    torch.manual_seed(0)
    logits = torch.randn(1, len(low.input_ids), len(tok))
    labels = torch.tensor([low.labels])
    total = {}
    for key, sample in (("low", low), ("high", high)):
        total[key], count = weighted_token_loss(logits, labels, torch.tensor([sample.weights]))
        assert int(count) == low.n_trained - 0  # weights do not change how many tokens are trained
    per_token = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], reduction="none")
    name_ce = sum(float(per_token[i - 1]) for i in names)
    assert float(total["high"] - total["low"]) == pytest.approx(0.75 * name_ce, rel=1e-5)


def test_capability_weights_reach_the_parts(native_tokenizers) -> None:
    """``data.capability_weights`` decide the parts' weights (reasoning, retrieval, understanding)."""
    from agentflan.config import CapabilityWeights
    from agentflan.data.decompose import _weigh_parts
    from agentflan.data.record import Message

    m = Message(
        role="assistant",
        content=THOUGHT,
        loss=True,
        tool_calls=conversation()[2]["tool_calls"],
        part_weights={part: 1.0 for part in CALL_PARTS},
    )
    weights = CapabilityWeights(reasoning=0.5, retrieval=0.0, understanding=0.75)
    weighed = _weigh_parts(m, weights, "scale", seed=0, rid="r", i=2)
    assert weighed.part_weights == {"reasoning": 0.5, "names": 0.0, "arguments": 0.75}
    messages = conversation(weighed.part_weights)
    tok = native_tokenizers["hermes"]
    sample = encode_conversation(messages, tok, None, tools=TOOLS)
    assert set(sample.weights) == {0.0, 0.5, 0.75, 1.0}  # untrained, thought, arguments, structure


def test_text_templates_refuse_native_calls(tokenizers) -> None:
    with pytest.raises(ValueError, match="does not write native tool calls"):
        encode_conversation(conversation(), tokenizers["chatml"], "chatml")


def test_named_tool_template_is_the_exported_chat_template(native_tokenizers) -> None:
    """``train_bpe_tokenizer`` / ``adapt_tokenizer`` put the template on the tokenizer, with its end marker
    as a special token, so eval and users render what training did."""
    for name, spec in JINJA_TEMPLATES.items():
        tok = native_tokenizers[name]
        assert tok.chat_template == spec.source
        assert all(len(tok(t, add_special_tokens=False)["input_ids"]) == 1 for t in spec.special_tokens)
        assert BOS in tok.get_vocab() and EOS in tok.get_vocab()
