"""Parse and render ReAct steps in the dialects found in real agent corpora.

One parser serves every reader, the filter, the aligner and (later) evaluation, because the corpora do
not agree on a dialect:

==================  ==================================================================
ToolLLaMA           ``Thought: ...\\nAction: name\\nAction Input: {json}``
FireAct / HotpotQA  ``Thought: ...\\nAction: search[query]``
AgentInstruct db    free reasoning, then ``Action: Operation\\n```sql ...```\\``
AgentInstruct os    ``Think: ...\\n\\nAct: bash\\n\\n```bash ...```\\``
ALFWorld            ``THOUGHT: ...\\n ACTION: go to drawer 1``
WebShop             ``Thought:\\n...\\n\\nAction:\\nclick[Buy Now]``
KG                  ``Thought: ...\\nAction: get_relations(Kerosene)``
==================  ==================================================================

The step's *action* is split into a tool name and its arguments where the dialect allows (``name[args]``,
``name(args)``, a fenced code block, or an ``Action Input:`` line); where it does not (``go to drawer 1``),
the whole action is the tool choice and there are no arguments.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_ACTION = re.compile(r"^[ \t]*(?:action|act)(?:[ \t]+\d+)?[ \t]*:[ \t]*", re.I | re.M)
_INPUT = re.compile(r"^[ \t]*action[ \t]*input(?:[ \t]+\d+)?[ \t]*:[ \t]*", re.I | re.M)
_THOUGHT = re.compile(r"^\s*(?:thoughts?|think)(?:[ \t]+\d+)?[ \t]*:[ \t]*", re.I)
_FINAL = re.compile(r"^[ \t]*final[ \t]*answer[ \t]*:[ \t]*", re.I | re.M)
_BRACKET = re.compile(r"^([A-Za-z_][\w\-. ]{0,63}?)\s*\[(.*)\]$", re.S)
_PAREN = re.compile(r"^([A-Za-z_][\w\-.]{0,63})\s*\((.*)\)$", re.S)
_FENCE = re.compile(r"```[\w+-]*\n?(.*?)```", re.S)
_FINISH_TOOLS = {"finish", "answer", "final answer", "final_answer"}
# Where an action's arguments end: the next action, or an observation the model wrote itself.
_NEXT_STEP = re.compile(r"^[ \t]*(?:action|act|observation)(?:[ \t]+\d+)?[ \t]*:", re.I | re.M)


@dataclass(frozen=True)
class Step:
    """One parsed assistant turn of a ReAct trajectory."""

    thought: str
    tool: str | None  # None when the turn has no action at all
    arguments: str | None  # the raw argument text; JSON when the dialect uses JSON
    final_answer: str | None = None  # set when the action ends the episode with an answer
    gave_up: bool = False  # ToolBench's Finish(return_type="give_up_and_restart")
    # Actions after the first in the same turn. A ReAct executor runs the first action and answers it with
    # the next observation, so the step is the first action; the others are counted, never merged into it.
    extra_actions: int = 0

    @property
    def is_final(self) -> bool:
        return self.final_answer is not None or self.gave_up


def _strip_thought_label(text: str) -> str:
    return _THOUGHT.sub("", text, count=1).strip()


def _split_action(body: str) -> tuple[str, str | None]:
    """Split the text after ``Action:`` into (tool, arguments)."""
    lines = body.strip().split("\n", 1)
    head = lines[0].strip()
    rest = lines[1] if len(lines) > 1 else ""
    if m := _BRACKET.match(head):
        return m.group(1).strip(), m.group(2).strip()
    if m := _PAREN.match(head):
        return m.group(1).strip(), m.group(2).strip()
    if fence := _FENCE.search(rest):
        return head, fence.group(1).strip()
    rest = rest.strip()
    return head, (rest or None)


def _final_answer(tool: str, arguments: str | None, text: str) -> tuple[str | None, bool]:
    if m := _FINAL.search(text):
        return text[m.end() :].strip(), False
    if tool.lower() not in _FINISH_TOOLS:
        return None, False
    if arguments is None:
        return "", False
    try:
        parsed = json.loads(arguments)
    except (json.JSONDecodeError, ValueError):
        return arguments, False
    if isinstance(parsed, dict):
        if parsed.get("return_type") == "give_up_and_restart":
            return None, True
        return str(parsed.get("final_answer", "")), False
    return str(parsed), False


def parse_step(text: str) -> Step | None:
    """Parse an assistant turn; None if it holds no ReAct action (a plain reply)."""
    m = _ACTION.search(text)
    if m is None:
        final = _FINAL.search(text)  # KG: "Thought: ...\nFinal Answer: #3" ends with no Action line
        if final is None:
            return None
        thought = _strip_thought_label(text[: final.start()])
        return Step(thought=thought, tool=None, arguments=None, final_answer=text[final.end() :].strip())
    thought = _strip_thought_label(text[: m.start()])
    after = text[m.end() :]
    extra = len(_ACTION.findall(after))
    if nxt := _NEXT_STEP.search(after):
        after = after[: nxt.start()]
    if inp := _INPUT.search(after):
        tool, arguments = after[: inp.start()].strip(), after[inp.end() :].strip()
        tool = tool.split("\n", 1)[0].strip()
    else:
        tool, arguments = _split_action(after)
    final_m = _FINAL.search(after)
    if final_m and arguments is not None and _FINAL.search(arguments):
        arguments = None  # "Action: Answer\nFinal Answer: [0]": the answer is not an argument
    if not tool:
        return None
    final, gave_up = _final_answer(tool, arguments, after)
    return Step(
        thought=thought,
        tool=tool,
        arguments=arguments,
        final_answer=final,
        gave_up=gave_up,
        extra_actions=extra,
    )


_THOUGHT_LINE = re.compile(r"^[ \t]*(?:thoughts?|think)(?:[ \t]+\d+)?[ \t]*:", re.I | re.M)
_OBSERVATION_LINE = re.compile(r"^[ \t]*observation(?:[ \t]+\d+)?[ \t]*:", re.I | re.M)


def count_actions(text: str) -> int:
    """How many ``Action:`` lines a turn holds (an executor runs the first; more are parallel calls or noise)."""
    return len(_ACTION.findall(text))


def action_spans(text: str) -> list[tuple[int, int]]:
    """The span of each action of a turn, in order, up to an observation the model wrote itself: the first
    holds the thought before it; a later one starts at its own ``Thought:`` line, if it has one, else at its
    ``Action:`` line. Parallel calls are written so (one ``Action`` / ``Action Input`` pair each, as
    :mod:`agentflan.data.align` renders native calls in ReAct)."""
    starts = [m.start() for m in _ACTION.finditer(text)]
    if not starts:
        return []
    if obs := _OBSERVATION_LINE.search(text, starts[0]):
        starts = [s for s in starts if s < obs.start()]
    end = obs.start() if obs else len(text)
    bounds = [0]
    for prev, nxt in zip(starts, starts[1:], strict=False):
        thoughts = [m.start() for m in _THOUGHT_LINE.finditer(text, prev, nxt)]
        bounds.append(thoughts[-1] if thoughts else nxt)
    return list(zip(bounds, [*bounds[1:], end], strict=True))


def render_react(thought: str, tool: str, arguments: str | None) -> str:
    """Render a step in the ToolLLaMA ReAct dialect (the one Agent-FLAN keeps for its ReAct share)."""
    text = f"Thought: {thought}\nAction: {tool}"
    if arguments is not None:
        text += f"\nAction Input: {arguments}"
    return text


def render_react_calls(thought: str, calls: list[tuple[str, str | None]]) -> str:
    """Several calls in one ReAct turn (parallel calls): the thought and the first ``Action`` / ``Action Input``
    pair, then one pair per further call, which :func:`agentflan.calls.parse_calls` reads back one call each."""
    first, *rest = calls
    return "\n".join([render_react(thought, *first), *(render_react("", *c).split("\n", 1)[1] for c in rest)])


def render_json_call(thought: str, tool: str, arguments: str | None) -> str:
    """Render a step as a JSON tool call, the other output format the format-following samples ask for."""
    try:
        args: object = json.loads(arguments) if arguments else {}
    except (json.JSONDecodeError, ValueError):
        args = arguments
    return json.dumps({"thought": thought, "name": tool, "arguments": args}, ensure_ascii=False)
