"""Read a model's tool call from its reply, and score it against the reference call.

The calls are read by :mod:`agentflan.calls` (the parser every caller shares); the rule here is tool-use
eval's: the FIRST call of the reply, in whichever of these formats it comes, scored leniently:

=====  ==========================================================================================
chat   the chat-aligned protocol the model is tuned on (:mod:`agentflan.data.align`): the harness
       sends the query, then an ``ELICIT_TOOL`` turn, then an ``ELICIT_ARGS`` turn, and the reply is
       the list of the three assistant turns ``[thought, tool name, arguments]``
react  ``Thought: ...\\nAction: name\\nAction Input: {json}`` (other ReAct dialects are read by
       :func:`~agentflan.data.react.parse_step` too, but are not *valid*: see below)
json   ``{"name", "arguments"}`` or ``{"thought", "name", "arguments"}``, bare or in a ```json fence
native what a tool-calling chat template writes (``eval.output_format: native``, tools passed as
       ``tools=``): Hermes/Qwen ``<tool_call>{"name", "arguments"}</tool_call>`` blocks (text may
       precede them; parallel calls are several blocks, the first is scored; an unclosed block is
       read by :func:`~agentflan.calls.parse_calls`'s rule and is not valid), or Llama-3.1's bare
       ``{"name", "parameters"}``
=====  ==========================================================================================

A call is **valid** when it could be executed as it stands: the format's structure is all there (the
three ReAct labels; a JSON object with no other keys and nothing around it; a bare tool name in the tool
turn), the arguments are a JSON object, and, where the prompt asked for a format, it is that format.
A call that is found but not valid still gets its name and arguments read leniently, so retrieval and
understanding are scored apart from instruction following, as the paper separates the capabilities:

* retrieval: the tool name equals the reference's (case-folded);
* understanding: argument exact match and F1 over normalised key/value pairs;
* instruction following: the share of valid calls.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, get_args

from agentflan import calls
from agentflan.calls import json_objects, whole_json
from agentflan.data.align import FORMAT_INSTRUCTIONS
from agentflan.data.react import count_actions, parse_step
from agentflan.data.stage import rng
from agentflan.eval.sources import (
    EvalSample,
    EvalSet,
    EvalSources,
    ReferenceCall,
    dedupe,
    make_set,
    normalize_query,
    prompt_messages,
    read_teval,
    read_toolbench_eval,
)
from agentflan.eval.stats import bootstrap, wilson

CallFormat = Literal["chat", "react", "json", "native"]
CALL_FORMATS: tuple[str, ...] = get_args(CallFormat)
Reply = str | Sequence[str]  # one text, or the assistant turns of the chat-aligned protocol


@dataclass(frozen=True)
class FoundCall:
    """The first call of a reply as tool-use eval scores it (read by :mod:`agentflan.calls`)."""

    name: str | None  # None: the reply holds no tool call
    arguments: dict[str, Any] | str | None  # a dict when they parse as a JSON object, else the raw text
    format: CallFormat | None  # the format the call was read from
    valid: bool
    error: str = ""  # why it is not valid (or why no call was found)

    @property
    def found(self) -> bool:
        return self.name is not None


_THOUGHT_LINE = re.compile(r"^\s*Thought\s*:", re.I)
_INPUT_LINE = re.compile(r"^[ \t]*Action[ \t]*Input[ \t]*:", re.I | re.M)
_OBSERVATION_LINE = re.compile(r"^[ \t]*Observation(?:[ \t]+\d+)?[ \t]*:", re.I | re.M)
_JSON_CALL_KEYS = {"thought", "name", "arguments"}


def _decode_arguments(raw: Any) -> tuple[dict[str, Any] | str | None, str]:
    """Arguments as a dict where possible (also from a JSON-encoded string, OpenAI style, or one encoded twice;
    an object inside a text is read, as an error), else the raw text, and an error."""
    if isinstance(raw, dict):
        return raw, ""
    if raw is None:
        return None, "no arguments"
    if not isinstance(raw, str):
        return json.dumps(raw, ensure_ascii=False), "arguments are not a JSON object"
    ok, value = whole_json(raw)
    if ok and isinstance(value, dict):
        return value, ""
    if ok and isinstance(value, str):  # double-encoded
        return _decode_arguments(value)
    embedded = next((o for o, _, _ in json_objects(raw) if isinstance(o, dict)), None)
    if embedded is not None:
        return embedded, "text around the arguments object"
    return raw.strip(), "arguments are not a JSON object"


def _object(call: calls.ToolCall) -> dict[str, Any]:
    """The JSON object a call was written as (its keys say whether it kept to the format)."""
    ok, value = whole_json(call.raw)
    return value if ok and isinstance(value, dict) else {}


def _from_json(call: calls.ToolCall, exact: bool) -> FoundCall:
    obj = _object(call)
    key = next((k for k in ("arguments", "args", "parameters") if k in obj), None)
    arguments, error = _decode_arguments(obj[key]) if key else (None, "no 'arguments' key")
    if not error and key != "arguments":
        error = f"arguments under {key!r}, not 'arguments'"
    if not error and (extra := sorted(set(obj) - _JSON_CALL_KEYS)):
        error = f"unexpected keys {extra}"
    if not error and not exact:
        error = "text around the JSON object"
    return FoundCall(call.name, arguments, "json", not error, error)


def _from_native(text: str) -> FoundCall | None:
    """The first ``<tool_call>`` block of a reply (Hermes/Qwen templates), or a whole-reply Llama-3.1 call."""
    tags = calls.parse_calls(text, "hermes")
    if not tags:
        ok, value = whole_json(text)
        if ok and isinstance(value, dict) and set(value) == {"name", "parameters"} and isinstance(value["name"], str):
            (call,) = calls.parse_calls(text, "llama31")
            arguments, error = _decode_arguments(call.raw_arguments)
            return FoundCall(call.name, arguments, "native", not error, error)
        return None
    call = tags[0]
    if call.name is None or call.error_code == "bad_call":
        return FoundCall(call.name, None, "native", False, "a <tool_call> block that is not a JSON call")
    keys = set(_object(call))
    arguments, error = _decode_arguments(call.raw_arguments) if "arguments" in keys else (None, "no arguments")
    if not error and (extra := sorted(keys - {"name", "arguments"})):
        error = f"unexpected keys {extra}"
    if not error and call.span and not text[call.span[0] : call.span[1]].rstrip().endswith("</tool_call>"):
        error = "no closing </tool_call>"
    return FoundCall(call.name, arguments, "native", not error, error)


def _from_react(text: str) -> FoundCall | None:
    step = parse_step(text)
    if step is None:
        return None
    if step.is_final or not step.tool:
        return FoundCall(None, None, "react", False, "a final answer, not a call")
    first = calls.parse_calls(text, "react")
    name, raw = (first[0].name, first[0].raw_arguments) if first else (step.tool, step.arguments)
    arguments, error = _decode_arguments(raw)
    if _OBSERVATION_LINE.search(text):
        error = "an 'Observation:' the model wrote itself"
    if (actions := count_actions(text)) > 1:
        error = f"{actions} actions in one reply"
    if not _INPUT_LINE.search(text):
        error = "no 'Action Input:' line"
    if not _THOUGHT_LINE.match(text):
        error = "no 'Thought:' line"
    return FoundCall(name, arguments, "react", not error, error)


def _from_chat(turns: Sequence[str], tool_names: Collection[str]) -> FoundCall:
    found = calls.parse_calls(turns, "chat")
    if not found:
        return FoundCall(None, None, "chat", False, "the tool turn names no tool")
    name, error = found[0].name, ""
    if name is None:  # a chatty tool turn: the one offered tool it mentions, as an invalid call
        mentioned = [n for n in tool_names if re.search(rf"(?<![\w.]){re.escape(n)}(?!\w|\.\w)", turns[1])]
        if len(mentioned) != 1:
            return FoundCall(None, None, "chat", False, "no tool name in the tool turn")
        name, error = mentioned[0], "the tool name is not alone in its turn"
    if len(turns) < 3:
        return FoundCall(name, None, "chat", False, "no arguments turn")
    arguments, args_error = _decode_arguments(turns[2])
    error = error or args_error or ("more turns than [thought, tool, arguments]" if len(turns) > 3 else "")
    return FoundCall(name, arguments, "chat", not error, error)


def _from_text(text: str) -> FoundCall:
    """A native call first (``<tool_call>`` tags; a Llama-3.1 call), then JSON that is the whole reply, then
    ReAct, then a JSON call anywhere in the text, then a reply that starts as a JSON call but does not parse
    (a malformed call is a call, not a missed one).

    ReAct comes before the lenient search because its Action Input is a JSON object that may itself
    have a ``name`` key.
    """
    if (call := _from_native(text)) is not None:
        return call
    ok, value = whole_json(text)
    if ok and isinstance(value, (dict, list)):
        found = calls.parse_calls(text, "json")
        if found and found[0].name is not None and found[0].error_code != "bad_call":
            call = _from_json(found[0], exact=True)
            return replace(call, valid=False, error="a list of calls, not one call") if isinstance(value, list) else call
    if (call := _from_react(text)) is not None:
        return call
    if not ok and (found := calls.parse_calls(text, "json")) and found[0].name is not None:
        if found[0].error_code == "bad_call":  # a JSON call that does not parse
            return FoundCall(found[0].name, _decode_arguments(found[0].raw_arguments)[0], "json", False, "malformed JSON")
        return _from_json(found[0], exact=False)
    return FoundCall(None, None, None, False, "no tool call found")


def parse_call(
    reply: Reply, expected_format: CallFormat | None = None, tool_names: Collection[str] = ()
) -> FoundCall:
    """Read the tool call in a reply: a text (ReAct or JSON), or the turns of the chat-aligned protocol.

    A sequence of two or more turns is read as ``[thought, tool name, arguments]``; a one-turn sequence
    as its text. ``tool_names`` (the tools offered) lets a chatty tool turn ("I'll use X.") still yield
    the name, as an invalid call. ``expected_format``: the format the prompt asked for; a call in another
    format is found but not valid.
    """
    turns = [reply] if isinstance(reply, str) else list(reply)
    if len(turns) >= 2:
        call = _from_chat(turns, tool_names)
    elif turns:
        call = _from_text(turns[0])
    else:
        call = FoundCall(None, None, None, False, "empty reply")
    if expected_format is not None and call.found and call.format != expected_format:
        call = replace(call, valid=False, error=f"asked for {expected_format}, got {call.format}")
    return call


_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")


def normalize_value(value: Any) -> Hashable:
    """The form argument values are compared in.

    Strings are stripped and case-folded; numbers, and strings that spell one, become floats (so
    ``"3"``, ``3`` and ``3.0`` agree); booleans become ``"true"``/``"false"`` (so they never equal 1/0);
    lists and objects are compared element by element.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        s = value.strip()
        return float(s) if _NUMBER.match(s) else s.casefold()
    if isinstance(value, Mapping):
        return tuple(sorted((str(k).strip(), normalize_value(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(normalize_value(v) for v in value)
    return value if value is None else str(value)


def _pairs(arguments: Mapping[str, Any]) -> set[tuple[str, Hashable]]:
    return {(str(k).strip(), normalize_value(v)) for k, v in arguments.items()}


@dataclass(frozen=True)
class ArgumentScore:
    exact: bool
    precision: float
    recall: float
    f1: float


def score_arguments(predicted: dict[str, Any] | str | None, reference: Mapping[str, Any]) -> ArgumentScore:
    """Exact match and F1 over normalised (key, value) pairs.

    precision = |P∩R| / |P|, recall = |P∩R| / |R|, F1 = 2PR / (P + R) (0 when nothing matches). Two
    empty objects match exactly (F1 1). Arguments that are not a JSON object score 0.
    """
    if not isinstance(predicted, Mapping):
        return ArgumentScore(False, 0.0, 0.0, 0.0)
    pred, ref = _pairs(predicted), _pairs(reference)
    if not pred and not ref:
        return ArgumentScore(True, 1.0, 1.0, 1.0)
    hits = len(pred & ref)
    precision = hits / len(pred) if pred else 0.0
    recall = hits / len(ref) if ref else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return ArgumentScore(pred == ref, precision, recall, f1)


def name_correct(call: FoundCall, reference: ReferenceCall) -> bool:
    return call.name is not None and call.name.strip().casefold() == reference.name.strip().casefold()


@dataclass(frozen=True)
class ToolUseScores:
    n: int  # samples with a reference call
    n_arguments: int  # of those, samples whose reference holds the arguments (understanding is over these)
    retrieval: float | None  # tool-name accuracy
    understanding_exact: float | None  # argument exact match
    understanding_f1: float | None  # mean argument F1
    instruction_following: float | None  # share of replies with a valid call
    intervals: dict[str, dict[str, Any]]  # 95%: Wilson for the rates, bootstrap for the mean F1


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _scores(pairs: Sequence[tuple[ReferenceCall, FoundCall]]) -> ToolUseScores:
    args = [score_arguments(c.arguments, r.arguments) for r, c in pairs if r.arguments is not None]
    names = [name_correct(c, r) for r, c in pairs]
    valid = [c.valid for _, c in pairs]
    f1 = [a.f1 for a in args]
    return ToolUseScores(
        n=len(pairs),
        n_arguments=len(args),
        retrieval=_mean([float(x) for x in names]),
        understanding_exact=_mean([float(a.exact) for a in args]),
        understanding_f1=_mean(f1),
        instruction_following=_mean([float(x) for x in valid]),
        intervals={
            "retrieval": wilson(sum(names), len(names)).to_dict(),
            "understanding_exact": wilson(sum(a.exact for a in args), len(args)).to_dict(),
            "understanding_f1": bootstrap([f1], lambda g: _mean(list(g[0]))).to_dict(),  # type: ignore[arg-type]
            "instruction_following": wilson(sum(valid), len(valid)).to_dict(),
        },
    )


def score_tool_use(
    samples: Sequence[EvalSample], replies: Sequence[Reply], expected_format: CallFormat | None = None
) -> dict[str, Any]:
    """Retrieval, understanding and instruction-following scores, overall and per source.

    Samples without a reference call are skipped. Understanding is scored over every sample whose
    reference holds arguments, whether or not the name was right (a wrong tool's arguments score 0).
    """
    if len(samples) != len(replies):
        raise ValueError(f"{len(samples)} samples but {len(replies)} replies")
    pairs: dict[str, list[tuple[ReferenceCall, FoundCall]]] = {}
    for sample, reply in zip(samples, replies, strict=True):
        if sample.reference is None:
            continue
        call = parse_call(reply, expected_format, [t.get("name", "") for t in sample.tools])
        pairs.setdefault(sample.source, []).append((sample.reference, call))
    every = [p for source_pairs in pairs.values() for p in source_pairs]
    return {
        "overall": asdict(_scores(every)),
        "by_source": {source: asdict(_scores(p)) for source, p in sorted(pairs.items())},
    }


def build_tool_use_set(
    sources: EvalSources,
    seed: int = 0,
    *,
    exclude_queries: Collection[str] = frozenset(),
    max_per_source: int | None = None,
    output_format: CallFormat = "chat",
) -> EvalSet:
    """Held-out tool queries (ToolBench tooleval G1, T-Eval plan) with their tools and first reference call.

    Deterministic: each source is shuffled with the seed, then cut to ``max_per_source``. For the
    ``native`` format the tools go to the chat template and there is no system prompt; for the
    ``react`` and ``json`` formats the system prompt adds the same format instruction the
    format-following training samples use; ``chat`` adds none (the harness elicits tool and arguments).
    """
    exclude = {normalize_query(q) for q in exclude_queries}
    seen: set[str] = set()
    counts: dict[str, dict[str, int]] = {}
    instruction = FORMAT_INSTRUCTIONS.get(output_format, "")
    samples = []
    unscorable: dict[str, int] = {}  # queries with no tools or no reference call
    for read, path in ((read_toolbench_eval, sources.toolbench), (read_teval, sources.teval)):
        read_queries = read(path)
        queries = [q for q in read_queries if q.tools and q.reference is not None]
        for q in read_queries:
            unscorable[q.source] = unscorable.get(q.source, 0) + (not (q.tools and q.reference is not None))
        queries = dedupe(queries, exclude, seen, counts)
        rng(seed, "tool_use", path.name).shuffle(queries)
        samples += [
            EvalSample(
                id=f"tool_use/{q.source}/{q.source_id}",
                case="d",
                expected="call",
                source=q.source,
                query=q.query,
                messages=prompt_messages(q.query, q.tools, instruction, output_format == "native"),
                tools=q.tools,
                reference=q.reference,
            )
            for q in queries[:max_per_source]
        ]
    manifest = {
        "benchmark": "tool_use",
        "seed": seed,
        "output_format": output_format,
        "sources": counts,
        "unscorable": unscorable,
        "max_per_source": max_per_source,
        "taken": {src: sum(s.source == src for s in samples) for src in counts},
        "scorable": {
            src: {
                "name": sum(s.source == src for s in samples),
                "arguments": sum(
                    s.source == src and s.reference is not None and s.reference.arguments is not None
                    for s in samples
                ),
            }
            for src in counts
        },
        "excluded_queries": len(exclude),
    }
    return make_set("tool_use", samples, manifest)
