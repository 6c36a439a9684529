"""Stage 2, align agent trajectories to natural multi-turn chat.

Agent-FLAN's central finding is that agent data in the ReAct format is *format* the model must learn on
top of the agent skills, and that the format is learned fast while the skills are not. Aligning to chat
removes the format: each ReAct step becomes separate assistant turns, each asked for by a short "elicit"
turn from the other side::

    assistant  (reasoning)      the Thought
    user       (elicit)         "Which tool will you use next?"
    assistant  (retrieval)      the tool's name
    user       (elicit)         "What arguments will you pass?"
    assistant  (understanding)  the arguments
    tool                        the observation

A seeded share of trajectories (``data.react_share``, paper: 10%) stays in the original ReAct format
(both forms are kept until the mixture chooses, see :func:`align_record`), and format-following samples
that explicitly ask for ReAct or JSON output are added
(:func:`make_format_following`), so the model still follows a format when one is asked for.

``data.call_format`` chooses the main form. ``chat`` is the above; ``react`` keeps every trajectory in ReAct;
``native`` writes each step as one assistant message with OpenAI ``tool_calls`` (the thought as its content or
``reasoning``) followed by a tool message per call (``tool_call_id``, ``name``), as function-calling models are
trained and served; the parts of such a message are weighed apart later (:mod:`agentflan.data.decompose`).
Records read with native calls (function-calling datasets) are written in every form too: in chat, each call
becomes its tool and arguments turns; in ReAct, its ``Action`` / ``Action Input`` lines.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

from agentflan.data.react import Step, parse_step, render_json_call, render_react, render_react_calls
from agentflan.data.record import Message, Record
from agentflan.data.stage import Drop, rng, unit

ELICIT_TOOL = (
    "Which tool will you use next?",
    "What tool do you choose for this step?",
    "Which function should be called now?",
    "Name the tool you want to call.",
    "Which of the available tools fits this step?",
)
ELICIT_ARGS = (
    "What arguments will you pass?",
    "Provide the input for that tool.",
    "What parameters should the call use?",
    "Give the arguments for the call.",
    "What exactly do you pass to it?",
)
ELICIT_FINAL = (
    "What is your final answer?",
    "Please give the final answer.",
    "So, what is the answer?",
    "Please state your conclusion.",
)
FORMAT_INSTRUCTIONS = {
    "react": "Respond in the ReAct format: a line 'Thought: ...', then 'Action: <tool name>', then "
    "'Action Input: <arguments>'.",
    "json": 'Respond with only a JSON object: {"thought": "...", "name": "<tool name>", "arguments": {...}}.',
}
TOOLS_SYSTEM_PROMPT = "You can call the following tools:\n{tools}"
_OBSERVATION = re.compile(r"^\s*Observation(?:\s+\d+)?\s*:\s*", re.I)


def _assistant(content: str, capability: str, loss: bool) -> Message:
    return Message(role="assistant", content=content, loss=loss, capability=capability)  # type: ignore[arg-type]


def _elicit(options: tuple[str, ...], r) -> Message:
    return Message(role="user", content=r.choice(options))


def _plain_capability(text: str) -> str:
    return "reasoning" if re.match(r"\s*(?:thought|think)\s*:", text, re.I) else "general"


def _emit_step(step: Step, loss: bool, out: list[Message], r) -> None:
    """Append the chat turns of one ReAct step."""
    if step.thought:
        out.append(_assistant(step.thought, "reasoning", loss))
    if step.final_answer is not None:
        if step.final_answer.strip():
            if out and out[-1].role == "assistant":
                out.append(_elicit(ELICIT_FINAL, r))
            out.append(_assistant(step.final_answer, "reasoning", loss))
        return
    if step.tool:
        if out and out[-1].role == "assistant":
            out.append(_elicit(ELICIT_TOOL, r))
        out.append(_assistant(step.tool, "retrieval", loss))
        if step.arguments is not None and step.arguments.strip():
            out.append(_elicit(ELICIT_ARGS, r))
            out.append(_assistant(step.arguments, "understanding", loss))


def _emit_native(m: Message, out: list[Message], r) -> None:
    """A message read with native calls (or a reasoning text), as chat turns: thought, then per call the tool
    and the arguments turns; a reply after reasoning comes after an elicit turn."""
    thought = "\n".join(t for t in (m.reasoning, m.content if m.tool_calls else None) if t and t.strip())
    if thought:
        out.append(_assistant(thought, "reasoning", m.loss))
    for call in m.tool_calls or []:
        fn = call["function"]
        if out and out[-1].role == "assistant":
            out.append(_elicit(ELICIT_TOOL, r))
        out.append(_assistant(fn["name"], "retrieval", m.loss))
        out.append(_elicit(ELICIT_ARGS, r))
        out.append(_assistant(fn["arguments"], "understanding", m.loss))
    if not m.tool_calls and m.content.strip():
        if out and out[-1].role == "assistant":
            out.append(_elicit(ELICIT_FINAL, r))
        out.append(_assistant(m.content, _plain_capability(m.content), m.loss))


def _to_chat(record: Record, seed: int) -> list[Message]:
    r = rng(seed, "align", record.id)
    out: list[Message] = []
    pending_tool: str | None = None  # the tool whose observation the next non-assistant turn is
    for m in record.messages:
        if m.role == "assistant" and (m.tool_calls or m.reasoning):
            _emit_native(m, out, r)
            pending_tool = None
            continue
        if m.role == "assistant":
            step = parse_step(m.content)
            if step is None:
                out.append(_assistant(m.content, _plain_capability(m.content), m.loss))
                pending_tool = None
                continue
            _emit_step(step, m.loss, out, r)
            pending_tool = step.tool if step.tool and not step.is_final else None
        elif pending_tool is not None and m.role in ("user", "tool"):
            out.append(
                Message(
                    role="tool", content=_OBSERVATION.sub("", m.content, count=1), name=m.name or pending_tool
                )
            )
            pending_tool = None
        else:
            out.append(replace(m, loss=False, capability="none"))
            pending_tool = None
    while out and out[-1].role != "assistant":  # e.g. FireAct's "Observation: Episode finished"
        out.pop()
    return out


def _keep_react(record: Record) -> list[Message]:
    """The original ReAct turns, tagged: a turn with an action teaches the format. Native calls are written as
    ReAct (one ``Action`` / ``Action Input`` pair per call)."""
    tagged = []
    for m in record.messages:
        if m.role == "assistant" and m.tool_calls:
            thought = "\n".join(t for t in (m.reasoning, m.content) if t and t.strip())
            text = render_react_calls(
                thought, [(c["function"]["name"], c["function"]["arguments"]) for c in m.tool_calls]
            )
            tagged.append(
                Message(role="assistant", content=text, loss=m.loss, capability="instruction_following")
            )
        elif m.role == "assistant":
            cap = (
                "instruction_following" if parse_step(m.content) is not None else _plain_capability(m.content)
            )
            tagged.append(replace(m, capability=cap))
        else:
            tagged.append(replace(m, loss=False, capability="none"))
    return tagged


def align_record(
    record: Record, seed: int, call_format: str = "chat", native_thought: str = "content"
) -> Record | list[Record]:
    """A general chat is tagged as it is; an agent trajectory yields two variants: the ``call_format`` form
    (chat-aligned or native) and ReAct (under ``call_format`` react, only ReAct).

    Both variants go into ``decomposed/`` with the same id; the mixture keeps one of them per trajectory
    (:func:`choose_format`), so the ReAct share is a mixture knob a Tune trial can change without
    re-aligning. The ReAct variant is counted as an extra copy (``repeated``) of this stage.
    """
    kind = record.meta.get("kind")
    if record.meta.get("generated"):
        return record
    if kind == "general":
        messages = [
            replace(m, capability="general" if m.role == "assistant" else "none") for m in record.messages
        ]
        return replace(record, messages=messages, meta={**record.meta, "format": "chat"})
    listed = _with_tool_list(record)  # text forms name the tools in a system turn; native passes them apart
    react = replace(listed, messages=_keep_react(listed), meta={**record.meta, "format": "react"})
    if call_format == "react":
        return replace(react, meta={**react.meta, "only_variant": True})
    if call_format == "native":
        messages, tools = to_native(record, seed, native_thought)
        main = replace(record, messages=messages, tools=tools, meta={**record.meta, "format": "native"})
        react = replace(react, tools=[])  # its text lists the tools; a tool-calling template must not again
    else:
        main = replace(listed, messages=_to_chat(listed, seed), meta={**record.meta, "format": "chat"})
    return [main, react]


def _with_tool_list(record: Record) -> Record:
    """A trajectory that offers no tools (FireAct's tool description went with its few-shot preamble) gets
    a system turn naming the tools its actions use. Agent-H's cases hinge on it: a model must see tools
    offered whenever it acts, or it cannot learn not to act when none are (cases c and d)."""
    if record.tools or any(m.role == "system" for m in record.messages):
        return record
    names = [
        s.tool for m in record.messages if m.role == "assistant" and (s := parse_step(m.content)) and s.tool
    ]
    tools = [{"name": n} for n in dict.fromkeys(names) if n.lower() != "finish"]
    if not tools:
        return record
    system = Message(role="system", content=TOOLS_SYSTEM_PROMPT.format(tools=json.dumps(tools)))
    return replace(record, messages=[system, *record.messages])


def has_variants(record: Record) -> bool:
    return record.meta.get("kind") == "agent" and not record.meta.get("generated")


def choose_format(record: Record, seed: int, react_share: float) -> Record | Drop:
    """Keep the ReAct variant of a seeded ``react_share`` of trajectories, the other (chat or native) variant of
    the rest."""
    if not has_variants(record) or record.meta.get("only_variant"):
        return record
    react = unit(seed, "react_share", record.id) < react_share
    return record if (record.meta.get("format") == "react") == react else Drop("other_format_variant")


def make_format_following(
    record: Record, seed: int, per_25k: float, call_format: str = "chat"
) -> Record | Drop | None:
    """A sample whose system prompt asks for ReAct or JSON output, built from a trajectory's first tool call.

    Its tools are listed in that system prompt; under ``call_format`` native its ``tools`` column stays empty,
    so a tool-calling template does not offer them a second time, natively."""
    if record.meta.get("kind") != "agent" or record.meta.get("generated"):
        return None
    if unit(seed, "format_following", record.id) >= per_25k / 25_000:
        return Drop("not_sampled")
    query = None
    for m in record.messages:
        if m.role == "user":
            query = m.content
        elif m.role == "assistant" and (step := parse_step(m.content)) and step.tool and not step.is_final:
            break
    else:
        return Drop("no_tool_step")
    if query is None:
        return Drop("no_query")
    # Trajectories without schemas (FireAct, AgentInstruct) name their tools only in the actions.
    tools = record.tools or [{"name": step.tool}]
    r = rng(seed, "format_following", record.id)
    fmt = r.choice(sorted(FORMAT_INSTRUCTIONS))
    render = render_react if fmt == "react" else render_json_call
    system = (
        TOOLS_SYSTEM_PROMPT.format(tools=json.dumps(tools, ensure_ascii=False))
        + "\n"
        + FORMAT_INSTRUCTIONS[fmt]
    )
    messages = [
        Message(role="system", content=system),
        Message(role="user", content=query),
        _assistant(render(step.thought, step.tool, step.arguments), "instruction_following", True),
    ]
    return Record(
        id=f"{record.id}#format_following",
        source=record.source,
        bucket="format_following",
        messages=messages,
        tools=[] if call_format == "native" else tools,
        meta={"kind": "agent", "generated": "format_following", "output_format": fmt, "seed_id": record.id},
    )


# ------------------------------------------------------------------------------------------ native calls

_FUNCTION_NAME = re.compile(r"^[A-Za-z_][\w.\-]{0,63}$")
NATIVE_PARTS = {"reasoning": 1.0, "names": 1.0, "arguments": 1.0}


def native_call(tool: str, arguments: str | None, call_id: str) -> dict:
    """A ReAct action as an OpenAI call. JSON-object arguments stay as they are; anything else (``search[x]``'s
    ``x``, a code block) becomes ``{"input": ...}``; an action that is not a function name (ALFWorld's ``go to
    drawer 1``) becomes a call of ``act`` with the whole command as its input."""
    args: dict = {}
    if arguments is not None and arguments.strip():
        try:
            value = json.loads(arguments)
        except ValueError:
            value = None
        args = value if isinstance(value, dict) else {"input": arguments.strip()}
    if not _FUNCTION_NAME.match(tool):
        args, tool = {"input": f"{tool} {arguments}".strip() if arguments else tool}, "act"
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": tool, "arguments": json.dumps(args, ensure_ascii=False)},
    }


def native_tools(record_tools: list, calls: list[dict]) -> list[dict]:
    """The record's tools in OpenAI's wrapper, plus a minimal schema (one ``input`` string) for every called
    function the record does not describe (ReAct trajectories name their tools only in their actions)."""
    from agentflan.data.tool_schema import normalize_tools

    try:
        tools = normalize_tools(
            [t for t in record_tools if isinstance(t, dict) and (t.get("name") or t.get("function"))]
        )
    except ValueError:
        tools = []
    known = {t["function"]["name"] for t in tools}
    for call in calls:
        name = call["function"]["name"]
        if name not in known:
            known.add(name)
            props = {k: {"type": "string"} for k in json.loads(call["function"]["arguments"])}
            tools.append({"type": "function", "function": {"name": name, "description": "",
                          "parameters": {"type": "object", "properties": props}}})  # fmt: skip
    return tools


def _native_message(thought: str, calls: list[dict], loss: bool, native_thought: str) -> Message:
    parts = dict(NATIVE_PARTS) if thought else {k: v for k, v in NATIVE_PARTS.items() if k != "reasoning"}
    return Message(
        role="assistant",
        content=thought if native_thought == "content" else "",
        reasoning=thought if native_thought == "reasoning" and thought else None,
        loss=loss,
        capability="tool_call",
        tool_calls=calls,
        part_weights=parts,
    )


def to_native(record: Record, seed: int, native_thought: str = "content") -> tuple[list[Message], list[dict]]:
    """The trajectory with native calls: each ReAct step (or native call message) one assistant message with
    ``tool_calls``, each observation a tool message answering it; final answers and plain replies as they are."""
    out: list[Message] = []
    pending: list[dict] = []  # calls of the last step whose results are still to come
    calls_made: list[dict] = []
    for i, m in enumerate(record.messages):
        if m.role == "assistant" and m.tool_calls:
            thought = "\n".join(t for t in (m.reasoning, m.content) if t and t.strip())
            out.append(_native_message(thought, [dict(c) for c in m.tool_calls], m.loss, native_thought))
            pending = list(m.tool_calls)
            calls_made += m.tool_calls
            continue
        if m.role == "assistant":
            step = parse_step(m.content)
            if step is not None and step.tool and not step.is_final:
                call = native_call(step.tool, step.arguments, f"call_{i}")
                out.append(_native_message(step.thought, [call], m.loss, native_thought))
                pending, calls_made = [call], [*calls_made, call]
                continue
            final = step is not None and step.final_answer is not None
            answer = step.final_answer if final else m.content
            thought = "\n".join(t for t in (m.reasoning, step.thought if final else "") if t and t.strip())
            content = answer if native_thought == "reasoning" or not thought else f"{thought}\n{answer}"
            out.append(
                Message(role="assistant", content=content, loss=m.loss, capability="reasoning" if thought else
                        _plain_capability(m.content), reasoning=thought if native_thought == "reasoning" and thought else None)
            )  # fmt: skip
            pending = []
            continue
        if pending and m.role in ("user", "tool"):
            call = pending.pop(0)
            out.append(Message(role="tool", content=_OBSERVATION.sub("", m.content, count=1),
                               name=call["function"]["name"], tool_call_id=call["id"]))  # fmt: skip
            continue
        out.append(replace(m, loss=False, capability="none"))
    while out and out[-1].role != "assistant":
        out.pop()
    return out, native_tools(record.tools, calls_made)
