"""The run's tokenizer (:func:`load_tokenizer`): a model's, taught the named template, or a small byte-level
BPE tokenizer trained from text, for tests and for tiny models trained from scratch.

Byte-level, so every string encodes (no unknown characters; ``<unk>`` exists only because tooling expects one).
The chat template's markers (``<|im_start|>``, ``<|Human|>``, ``ി``...) are special tokens, so each is one token
and never merges with the text around it: that is what lets :mod:`agentflan.train.templates` tokenize a
conversation segment by segment and still get the ids a whole-text tokenization gives. The template itself is
set as the Jinja ``chat_template``, so ``apply_chat_template`` renders exactly what ``template`` renders and the
tokenizer saves and reloads with ``save_pretrained`` / ``AutoTokenizer.from_pretrained``.

Training is deterministic: the same texts in the same order give the same vocabulary and merges.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from agentflan.train.templates import ChatTemplate, get_template, to_jinja
from agentflan.train.tool_templates import JINJA_TEMPLATES, JinjaTemplate

if TYPE_CHECKING:
    from agentflan.config import Config

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, template: str = "chatml", min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` with the special tokens and chat template of ``template``.

    ``vocab_size`` counts the 256 byte symbols and the special tokens; pairs seen fewer than ``min_frequency``
    times are not merged, so a small corpus may give a smaller vocabulary.
    """
    chat = _spec(template)
    special_tokens = [BOS, EOS, PAD, UNK, *chat.special_tokens]
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(
            f"vocab_size {vocab_size} is below the 256 bytes plus {len(special_tokens)} special tokens"
        )

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=list(chat.special_tokens),
        chat_template=_jinja(chat),
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def adapt_tokenizer(tok: PreTrainedTokenizerBase, template: str) -> list[str]:
    """Make a model's own tokenizer speak a named template, so one template goes from training to inference.

    - the template's markers become special tokens where the tokenizer lacks them (each one token, never
      merged with the text around it; the model's embeddings grow by as many, see :func:`agentflan.train.model.training_model`);
    - ``chat_template`` is the template itself (with ``{% generation %}`` markers), so
      ``apply_chat_template(messages, add_generation_prompt=True)`` renders byte for byte what training did;
    - ``eos`` is the template's end-of-turn marker (generation stops where a reply ends; the exported
      ``generation_config.json`` keeps the model's own eos as a second stop token);
    - ``pad`` is the tokenizer's pad, else its unk, else eos (padding is never trained on).

    Returns the tokens added.
    """
    chat = _spec(template)
    vocab = tok.get_vocab()
    missing = [t for t in chat.special_tokens if t not in vocab]
    if missing:
        tok.add_tokens(missing, special_tokens=True)
    tok.chat_template = _jinja(chat)
    end = chat.end_of_turn(tok.eos_token)
    if end and end != tok.eos_token and end in tok.get_vocab():
        tok.eos_token = end
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    return missing


def _spec(template: str) -> ChatTemplate | JinjaTemplate:
    """A text template (:mod:`~agentflan.train.templates`) or a tool-calling Jinja one
    (:mod:`~agentflan.train.tool_templates`): both give markers, an end-of-turn marker and a Jinja source."""
    return JINJA_TEMPLATES[template] if template in JINJA_TEMPLATES else get_template(template)


def _jinja(chat: ChatTemplate | JinjaTemplate) -> str:
    return chat.source if isinstance(chat, JinjaTemplate) else to_jinja(chat)


def load_tokenizer(cfg: Config, texts: list[str], save_dir: Path) -> PreTrainedTokenizerBase:
    """The run's tokenizer: the model's (made to speak the named template: :func:`adapt_tokenizer`), or
    (embedded default) a BPE tokenizer trained on ``texts``; saved to ``save_dir``, and later with the model."""
    from transformers import AutoTokenizer

    m = cfg.train.model
    source = m.tokenizer or m.name_or_path
    if source is not None:
        tok = AutoTokenizer.from_pretrained(source)
        if m.template != "model":
            adapt_tokenizer(tok, m.template)  # markers, chat_template, eos and pad of the named template
        elif tok.pad_token is None:
            tok.pad_token = tok.eos_token
    else:
        template = "chatml" if m.template == "model" else m.template
        tok = train_bpe_tokenizer(texts, m.vocab_size, template=template)
    tok.save_pretrained(save_dir)
    return tok
