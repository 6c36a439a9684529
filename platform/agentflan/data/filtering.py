"""Stage 1, filter as the paper did.

Agent-FLAN keeps only ReAct-format trajectories, removes the few-shot demonstrations some prompts carry
(the model should learn the task, not the demonstrations), keeps ToolBench trajectories only when they end
with a final answer, and drops the DFSDT "give up and restart" preface from ToolBench system prompts (the
retry mechanism belongs to the search algorithm, not to the agent). General chat passes untouched.
"""

from __future__ import annotations

import re
from dataclasses import replace

from agentflan.data.function_calling import FORMATS as NATIVE_FORMATS
from agentflan.data.react import parse_step
from agentflan.data.record import Record
from agentflan.data.stage import Drop, Quarantine

_ACTION_INPUT = re.compile(r"^\s*Action\s*Input\s*:", re.M | re.I)
_QUESTION = re.compile(r"^\s*Question\s*\d*\s*:", re.M)
_NUMBERED_REACT = re.compile(r"^\s*(?:Thought|Action|Observation)\s+\d+\s*:", re.M)
# Lines of the ToolBench DFSDT system prompt that only make sense inside the tree search.
_DFSDT_LINES = re.compile(
    r"^.*(?:state change is irreversible|I give up and restart|more then one trys|more than one tries).*\n?",
    re.M | re.I,
)
_DFSDT_CLAUSE = re.compile(r",?\s*If you can't handle the task.*?give_up_and_restart\.?", re.S | re.I)


def strip_fewshot(text: str) -> tuple[str, bool]:
    """Keep only the last question of a prompt that carries numbered ReAct demonstrations before it."""
    questions = list(_QUESTION.finditer(text))
    if len(questions) < 2 or not _NUMBERED_REACT.search(text[: questions[-1].start()]):
        return text, False
    return text[questions[-1].start() :].strip(), True


def strip_dfsdt_preface(text: str) -> tuple[str, bool]:
    """Remove the DFSDT retry instructions from a ToolBench system prompt."""
    new = _DFSDT_CLAUSE.sub(".", _DFSDT_LINES.sub("", text))
    return new, new != text


def _is_toolbench(record: Record, steps: list) -> bool:
    return any(s.tool and s.tool.lower() == "finish" for s in steps) or any(
        t.get("name") == "Finish" for t in record.tools if isinstance(t, dict)
    )


def _check_action_inputs(messages: list) -> None:
    """In the ``Action Input:`` dialect (ToolLLaMA) every action needs its input: one without is broken."""
    assistant = [(i, m.content) for i, m in enumerate(messages) if m.role == "assistant"]
    if not any(_ACTION_INPUT.search(text) for _, text in assistant):
        return
    for i, text in assistant:
        step = parse_step(text)
        if (
            step is not None
            and step.tool
            and step.final_answer is None
            and not step.gave_up
            and step.arguments is None
        ):
            raise Quarantine("action_without_input", f"message {i}: Action {step.tool!r} has no Action Input")


def filter_record(record: Record) -> Record | Drop:
    """Agent trajectories in ReAct are filtered as the paper did; general chats and records read with native
    calls (function-calling datasets: their calls are structured already, and a turn that offers tools but
    answers plainly is the lesson of Agent-FLAN's negatives) pass."""
    if record.meta.get("kind") == "general" or record.meta.get("format") in NATIVE_FORMATS:
        return record
    messages = list(record.messages)
    changed: dict[str, bool] = {}
    for i, m in enumerate(messages):
        if m.role == "user":
            text, hit = strip_fewshot(m.content)
            if hit:
                messages[i] = replace(m, content=text)
                changed["fewshot_removed"] = True
        elif m.role == "system":
            text, hit = strip_dfsdt_preface(m.content)
            if hit:
                messages[i] = replace(m, content=text)
                changed["dfsdt_preface_removed"] = True
    steps = [s for m in messages if m.role == "assistant" and (s := parse_step(m.content)) is not None]
    if not any(s.tool for s in steps):
        return Drop("not_react")
    _check_action_inputs(messages)
    if _is_toolbench(record, steps):
        last = steps[-1]
        if last.gave_up:
            return Drop("gave_up")
        if not last.final_answer:
            return Drop("no_final_answer")
    return replace(record, messages=messages, meta={**record.meta, **changed})
