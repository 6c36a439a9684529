"""Chat templates: how a conversation becomes ``input_ids``, ``labels`` and per-token ``weights``.

A conversation is written either with a *named* template from :data:`TEMPLATES` or with *the model's own*
template (the tokenizer's Jinja ``chat_template``, chosen with ``template=None``). Either way the conversation
becomes one text plus the character spans that are trained on, and **the whole text is tokenized once**, with
offsets, exactly as inference tokenizes the rendered prompt; a token is trained when its first character lies in
a trained span. Tokenizing segment by segment instead gives other ids wherever a tokenizer does not cut at the
segment boundary: SentencePiece tokenizers (Llama-2: the ``▁`` prefix, byte fallback) and byte-level BPEs
(Llama-3, Qwen) whose chat markers are plain text to them (tests check every named template against three
tokenizer families, and two model templates).

* A named template is data (:class:`ChatTemplate`). Each message is rendered into segments (the header that
  opens it, the part that may be trained on, the separator after it); the trained segments are the spans.
* The model's own template (or a named tool-calling one, :mod:`~agentflan.train.tool_templates`) is a black
  box; :mod:`~agentflan.train.model_template` finds the assistant spans, and the parts of a native call
  message, by rendering prefixes of the conversation (see there).

Only assistant messages with ``loss`` true are trained on. Their trained span is the content plus the
end-of-turn marker (``<|im_end|>``, ``</s>``, ``ി``), because the model must learn to stop; the header that opens
the turn (``<|im_start|>assistant\\n``) is prompt, not answer. Each trained token carries its message's
``weight``; every other token has label -100 and weight 0 (so does a message of weight 0: counted as a trained
token it would add nothing to the loss sum but dilute the mean). Tool messages are written as the template's
observation side: a ``tool`` turn in ChatML, a user turn in Llama-2 and Agent-FLAN.

The first token's label is always -100: nothing predicts it, and clearing it means a packed row (where the
previous sample's last token sits before it) trains on exactly what the samples train on alone.

Truncation keeps the head: the first ``max_length`` tokens (the system prompt and the first turns, which every
later turn depends on). A reply cut in the middle keeps its trained prefix without its end-of-turn marker; a sample
left with nothing to train on has :attr:`EncodedSample.n_trained` 0, for the caller to drop and count.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from transformers import PreTrainedTokenizerBase

from agentflan.train.model_template import Span, template_spans
from agentflan.train.tool_templates import JINJA_TEMPLATES

if TYPE_CHECKING:
    from agentflan.config import Config

IGNORE_INDEX = -100  # the label torch's cross-entropy skips

_PLACEHOLDER = re.compile(r"(\{bos\}|\{eos\})")


@dataclass(frozen=True)
class Turn:
    """How one role's message is written around its content.

    ``{bos}`` and ``{eos}`` stand for the tokenizer's own tokens, so a template serves any tokenizer.
    """

    begin: str  # opens the message; never trained on
    end: str  # closes it; on an assistant message this is the end-of-turn marker and is trained on
    lead: str = (
        ""  # assistant: text before the content that is trained on (Llama-2 answers start with a space)
    )
    after: str = ""  # assistant: separator after the end-of-turn marker, not trained on


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    turns: Mapping[str, Turn]  # one per role: system, user, assistant, tool
    prefix: str = ""  # written once, before the first message
    # (previous role, role) -> what replaces ``role``'s ``begin`` right after ``previous role``. Llama-2 folds the
    # system prompt into the first user turn, so that user turn does not open a new ``[INST]``.
    joins: Mapping[tuple[str, str], str] = field(default_factory=dict)
    special_tokens: tuple[str, ...] = ()  # markers that a tokenizer trained for this template keeps whole

    @property
    def generation_prompt(self) -> str:
        """What is appended to a prompt so the model writes the next assistant message."""
        return self.turns["assistant"].begin

    def end_of_turn(self, eos: str | None) -> str:
        """The marker that ends a reply (``<|im_end|>``, the tokenizer's ``</s>``, ``ി``): generation stops here."""
        return _fill(self.turns["assistant"].end, self, None, eos).strip()


_CHATML_END = "<|im_end|>"
CHATML = ChatTemplate(
    name="chatml",
    turns={
        "system": Turn("<|im_start|>system\n", _CHATML_END + "\n"),
        "user": Turn("<|im_start|>user\n", _CHATML_END + "\n"),
        "assistant": Turn("<|im_start|>assistant\n", _CHATML_END, after="\n"),
        "tool": Turn("<|im_start|>tool\n", _CHATML_END + "\n"),
    },
    special_tokens=("<|im_start|>", _CHATML_END),
)

# Llama-2-chat: ``<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {answer} </s><s>[INST] ...``
_LLAMA2_USER = Turn("{bos}[INST] ", " [/INST]")
LLAMA2 = ChatTemplate(
    name="llama2",
    turns={
        "system": Turn("{bos}[INST] <<SYS>>\n", "\n<</SYS>>\n\n"),
        "user": _LLAMA2_USER,
        "assistant": Turn("", " {eos}", lead=" "),
        "tool": _LLAMA2_USER,
    },
    joins={("system", "user"): "", ("system", "tool"): ""},
)

# The Agent-FLAN release template (Llama-2 base): system and user turns are ``<|Human|>െ{content}\n `, replies
# ``<|Assistant|>െ{content}ി\n ``; ``ി`` ends a reply.
_AGENTFLAN_HUMAN = Turn("<|Human|>\u0d46", "\n ")
AGENTFLAN = ChatTemplate(
    name="agentflan",
    prefix="{bos}",
    turns={
        "system": _AGENTFLAN_HUMAN,
        "user": _AGENTFLAN_HUMAN,
        "assistant": Turn("<|Assistant|>\u0d46", "\u0d3f", after="\n "),
        "tool": _AGENTFLAN_HUMAN,
    },
    special_tokens=("<|Human|>", "<|Assistant|>", "\u0d46", "\u0d3f"),
)

TEMPLATES: dict[str, ChatTemplate] = {t.name: t for t in (CHATML, LLAMA2, AGENTFLAN)}


def get_template(template: str | ChatTemplate) -> ChatTemplate:
    if isinstance(template, ChatTemplate):
        return template
    if template not in TEMPLATES:
        raise ValueError(f"unknown chat template {template!r}; named templates: {', '.join(TEMPLATES)}")
    return TEMPLATES[template]


@dataclass
class EncodedSample:
    """One tokenized conversation; the three lists have the same length."""

    input_ids: list[int]
    labels: list[int]  # the token id where trained on, else IGNORE_INDEX
    weights: list[float]  # the message's weight where trained on, else 0.0
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    def truncate(self, max_length: int) -> EncodedSample:
        """Keep the first ``max_length`` tokens (see the module docstring for why the head)."""
        if len(self) <= max_length:
            return self
        return EncodedSample(
            self.input_ids[:max_length], self.labels[:max_length], self.weights[:max_length], truncated=True
        )


@dataclass(frozen=True)
class Segment:
    text: str
    weight: float | None  # None: not trained on


def render_segments(
    messages: Sequence[Mapping[str, Any]], template: str | ChatTemplate, bos: str | None, eos: str | None
) -> list[Segment]:
    """Write a conversation as segments, each trained on (with a weight) or not.

    ``bos``/``eos`` are the tokenizer's token strings; a template that writes one the tokenizer lacks is an error.
    """
    chat = get_template(template)

    def fill(text: str) -> str:
        return _fill(text, chat, bos, eos)

    segments = [Segment(fill(chat.prefix), None)]
    previous = ""
    for i, message in enumerate(messages):
        role = message["role"]
        if role not in chat.turns:
            raise ValueError(
                f"message {i}: role {role!r} is not in template {chat.name!r} ({', '.join(chat.turns)})"
            )
        turn = chat.turns[role]
        trained = role == "assistant" and bool(message.get("loss", False))
        segments += [
            Segment(fill(chat.joins.get((previous, role), turn.begin)), None),
            Segment(
                fill(turn.lead) + message["content"] + fill(turn.end),
                float(message.get("weight", 1.0)) if trained else None,
            ),
            Segment(fill(turn.after), None),
        ]
        previous = role
    return _join_untrained(segments)


def _fill(text: str, chat: ChatTemplate, bos: str | None, eos: str | None) -> str:
    for placeholder, token in (("{bos}", bos), ("{eos}", eos)):
        if placeholder in text:
            if token is None:
                raise ValueError(f"template {chat.name!r} writes {placeholder} but the tokenizer has none")
            text = text.replace(placeholder, token)
    return text


def _join_untrained(segments: list[Segment]) -> list[Segment]:
    """Join neighbouring untrained segments and drop empty ones, so only trained/untrained boundaries cut text."""
    out: list[Segment] = []
    for seg in segments:
        if not seg.text:
            continue
        if out and seg.weight is None and out[-1].weight is None:
            out[-1] = Segment(out[-1].text + seg.text, None)
        else:
            out.append(seg)
    return out


def render_text(
    messages: Sequence[Mapping[str, Any]],
    template: str | ChatTemplate,
    bos: str | None,
    eos: str | None,
    add_generation_prompt: bool = False,
) -> str:
    """The conversation as one string, exactly as :func:`to_jinja`'s template renders it."""
    chat = get_template(template)
    text = "".join(s.text for s in render_segments(messages, chat, bos, eos))
    return text + _fill(chat.generation_prompt, chat, bos, eos) if add_generation_prompt else text


def to_jinja(template: str | ChatTemplate) -> str:
    """The template as a Hugging Face Jinja ``chat_template``, with ``{% generation %}`` around the part of every
    reply that is trained on when its ``loss`` is true (the template does not read ``loss``), so
    ``apply_chat_template(..., return_assistant_tokens_mask=True)`` works.

    Written on one line with all text inside expressions, so the ``trim_blocks``/``lstrip_blocks`` settings
    transformers renders with cannot change it.
    """
    chat = get_template(template)
    branches = []
    for role, turn in chat.turns.items():
        joins = [
            (f"previous == {json.dumps(prev)}", _jinja_text(text))
            for (prev, r), text in chat.joins.items()
            if r == role
        ]
        begin = _jinja_branches(joins, default=_jinja_text(turn.begin)) if joins else _jinja_text(turn.begin)
        body = _jinja_text(turn.lead) + "{{ message['content'] }}" + _jinja_text(turn.end)
        if role == "assistant":
            body = "{% generation %}" + body + "{% endgeneration %}"
        branches.append((f"message['role'] == {json.dumps(role)}", begin + body + _jinja_text(turn.after)))
    return (
        _jinja_text(chat.prefix)
        + "{% for message in messages %}"
        + "{% set previous = messages[loop.index0 - 1]['role'] if loop.index0 > 0 else '' %}"
        + _jinja_branches(branches, default="{{ raise_exception('unknown role: ' + message['role']) }}")
        + "{% endfor %}"
        + "{% if add_generation_prompt %}"
        + _jinja_text(chat.generation_prompt)
        + "{% endif %}"
    )


def _jinja_branches(branches: Sequence[tuple[str, str]], default: str) -> str:
    """``{% if c1 %}b1{% elif c2 %}b2...{% else %}default{% endif %}``."""
    out = "".join(
        ("{% if " if k == 0 else "{% elif ") + f"{cond} %}}{body}" for k, (cond, body) in enumerate(branches)
    )
    return out + "{% else %}" + default + "{% endif %}"


def _jinja_text(text: str) -> str:
    """A Jinja expression printing ``text``, with ``{bos}``/``{eos}`` as the tokenizer's ``bos_token``/``eos_token``."""
    pieces = [p for p in _PLACEHOLDER.split(text) if p]
    if not pieces:
        return ""
    names = {"{bos}": "bos_token", "{eos}": "eos_token"}
    return "{{ " + " + ".join(names.get(p) or json.dumps(p, ensure_ascii=False) for p in pieces) + " }}"


def encode_conversation(
    messages: Sequence[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    template: str | ChatTemplate | None,
    max_length: int | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> EncodedSample:
    """Tokenize a conversation with labels and weights.

    ``messages`` are the canonical record's message dicts (``role``, ``content``, ``loss``, ``weight``...).
    ``template`` names a template in :data:`TEMPLATES` (or is one), or is None for the tokenizer's own
    ``chat_template`` (also a named tool-calling one set on it, :mod:`~agentflan.train.tool_templates`), which
    renders ``tools`` and native calls (:mod:`~agentflan.train.model_template`). ``max_length`` truncates to
    the first ``max_length`` tokens. The ids are those of the whole rendered text tokenized at once (a fast
    tokenizer is needed, for the offsets).
    """
    if not tokenizer.is_fast:
        raise ValueError("training needs a fast tokenizer (for offsets); load it with use_fast=True")
    if template is None:
        text, spans = template_spans(messages, tokenizer, tools)
    elif any(m.get("tool_calls") for m in messages):
        raise ValueError(
            f"template {get_template(template).name!r} does not write native tool calls; use the model's own "
            "template or a tool-calling one (hermes, llama31)"
        )
    else:
        text, spans = _named_template_spans(messages, template, tokenizer.bos_token, tokenizer.eos_token)
    ids, token_weights = _tokenize_spans(text, spans, tokenizer, stop_at_marker=template is None)
    labels = [t if w is not None else IGNORE_INDEX for t, w in zip(ids, token_weights, strict=True)]
    weights = [w if w is not None else 0.0 for w in token_weights]
    if labels:  # nothing predicts the first token (see the module docstring)
        labels[0], weights[0] = IGNORE_INDEX, 0.0
    sample = EncodedSample(ids, labels, weights)
    return sample.truncate(max_length) if max_length is not None else sample


def _named_template_spans(
    messages: Sequence[Mapping[str, Any]], template: str | ChatTemplate, bos: str | None, eos: str | None
) -> tuple[str, list[Span]]:
    text, spans = "", []
    for seg in render_segments(messages, template, bos, eos):
        if seg.weight is not None:
            spans.append(Span(len(text), len(text) + len(seg.text), seg.weight))
        text += seg.text
    return text, spans


def _tokenize_spans(
    text: str, spans: list[Span], tokenizer: PreTrainedTokenizerBase, stop_at_marker: bool
) -> tuple[list[int], list[float | None]]:
    """Tokenize ``text`` once; a token whose first character lies in a span gets the span's weight (the last
    such span's, where spans nest)."""
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = encoding["input_ids"]
    starts = [start for start, _ in encoding["offset_mapping"]]
    control_ids = (
        {i for i, t in tokenizer.added_tokens_decoder.items() if t.special} if stop_at_marker else set()
    )
    token_weights: list[float | None] = [None] * len(ids)
    for span in spans:
        k = bisect.bisect_left(starts, span.start)
        while k < len(ids) and starts[k] < span.stop:
            token_weights[k] = span.weight or None  # weight 0 is not trained: it would only dilute the mean
            if span.content_end is not None and starts[k] >= span.content_end and ids[k] in control_ids:
                break
            k += 1
    return ids, token_weights


def encoding_template(cfg: Config) -> str | None:
    """The named text template to encode with, or None: the tokenizer's own ``chat_template`` (the model's, or
    a named tool-calling template that :func:`~agentflan.train.tokenizer.load_tokenizer` set on it)."""
    template = cfg.train.model.template
    return None if template == "model" or template in JINJA_TEMPLATES else template
