"""Score a model's tool call against the reference call, and build the tool-use set (ToolBench tooleval G1,
T-Eval plan). Calls are read by :mod:`agentflan.eval.first_call` (the first call, leniently); a call that is
found but not valid still gets its name and arguments scored, so retrieval and understanding are scored apart
from instruction following, as the paper separates the capabilities:

* retrieval: the tool name equals the reference's (case-folded);
* understanding: argument exact match and F1 over normalised key/value pairs;
* instruction following: the share of valid calls.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from agentflan.data.align import FORMAT_INSTRUCTIONS
from agentflan.data.stage import rng
from agentflan.eval.first_call import CallFormat, FoundCall, Reply, parse_call
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

__all__ = ["build_tool_use_set", "normalize_value", "parse_call", "score_arguments", "score_tool_use"]

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
