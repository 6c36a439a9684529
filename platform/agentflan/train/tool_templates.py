"""Named tool-calling templates: Jinja chat templates that render native calls (``tools=``, ``tool_calls``).

The text templates of :mod:`agentflan.train.templates` (chatml, llama2, agentflan) write messages, not calls.
A corpus written with ``data.call_format: native`` needs a template that renders OpenAI ``tool_calls`` and
``tools`` the way the model will see them at inference. That is the model's own ``chat_template``
(``template: model``), or one of these, for a model (or the embedded tiny one) whose tokenizer has none:

``hermes``
    Hermes / Qwen2.5 style (ChatML turns): tools as JSON lines inside ``<tools></tools>`` in the system turn,
    each call ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``, results as
    ``<tool_response>`` blocks in a user turn, a ``reasoning`` text as ``<think>...</think>``.
``llama31``
    Llama-3.1 style: tools as indented JSON in the first user turn, each call
    ``{"name": ..., "parameters": {...}}``, results in an ``ipython`` turn. Like Meta's template it does not
    render a ``reasoning`` text.

Both mark every assistant message with ``{% generation %}`` (so ``return_assistant_tokens_mask`` works) and
accept call arguments as an object or as JSON text. Encoding with them goes through the model-template path of
:mod:`agentflan.train.model_template`, exactly as with a model's own template.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_DIR = Path(__file__).parent / "chat_templates"


@dataclass(frozen=True)
class JinjaTemplate:
    name: str
    special_tokens: tuple[str, ...]  # markers a tokenizer keeps whole (added as special tokens where missing)
    end: str  # the end-of-turn marker: generation stops here

    @property
    def source(self) -> str:
        return (_DIR / f"{self.name}.jinja").read_text()

    def end_of_turn(self, eos: str | None) -> str:
        return self.end


JINJA_TEMPLATES: dict[str, JinjaTemplate] = {
    t.name: t
    for t in (
        JinjaTemplate("hermes", ("<|im_start|>", "<|im_end|>"), "<|im_end|>"),
        JinjaTemplate("llama31", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "<|eot_id|>"),
    )
}
