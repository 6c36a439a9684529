"""Agent-H, the paper's hallucination benchmark, rebuilt from public data (the original was never released).

The paper tests four cases; only in (d) is a tool call the right answer:

====  ===============  ==============================  ==========  ======================================
case  tools offered    query                           expected    built from
====  ===============  ==============================  ==========  ======================================
(a)   no               a chat query                    plain       general chats (first human turn)
(b)   yes              a chat query that needs none    plain       general chats + a tool list drawn from
                                                                   the tool queries' lists
(c)   no               a query that looks like it      plain       tool queries with their tools taken
                       needs a tool                                away, plus HotpotQA dev questions
(d)   yes              a query that needs a tool       call        tool queries with their own tools
====  ===============  ==============================  ==========  ======================================

Each query is used once: the general chats are split in halves between (a) and (b), the tool queries
(ToolBench tooleval G1 and T-Eval plan) in halves between (d) and (c), after a seeded shuffle; HotpotQA
adds up to ``max_hotpot`` questions to (c). Queries found in the training corpus (``exclude_queries``) are
dropped first, so the set is disjoint from training. Scores: :mod:`agentflan.eval.hallucination`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from typing import Literal, get_args

from agentflan.data.align import FORMAT_INSTRUCTIONS
from agentflan.data.stage import rng
from agentflan.eval.sources import (
    EvalQuery,
    EvalSample,
    EvalSet,
    EvalSources,
    Expected,
    dedupe,
    make_set,
    normalize_query,
    prompt_messages,
    read_general,
    read_hotpot,
    read_teval,
    read_toolbench_eval,
)

Case = Literal["a", "b", "c", "d"]
CASES: tuple[str, ...] = get_args(Case)
EXPECTED: dict[str, Expected] = {"a": "plain", "b": "plain", "c": "plain", "d": "call"}
PLAIN_CASES: tuple[str, ...] = tuple(c for c in CASES if EXPECTED[c] == "plain")


def _shuffled(items: list[EvalQuery], seed: int, key: str) -> list[EvalQuery]:
    out = list(items)
    rng(seed, "agent_h", key).shuffle(out)
    return out


def _sample(case: str, q: EvalQuery, tools: list[dict], instruction: str, native: bool) -> EvalSample:
    return EvalSample(
        id=f"agent_h/{case}/{q.source}/{q.source_id}",
        case=case,
        expected=EXPECTED[case],
        source=q.source,
        query=q.query,
        messages=prompt_messages(q.query, tools, instruction, native),
        tools=tools,
        reference=q.reference if case == "d" else None,
    )


def build_agent_h(
    sources: EvalSources,
    seed: int = 0,
    *,
    exclude_queries: Collection[str] = frozenset(),
    max_per_case: Mapping[str, int | None] | None = None,
    max_hotpot: int | None = 200,
    output_format: str | None = "react",
) -> EvalSet:
    """Build Agent-H deterministically: the same files, seed and arguments give the same fingerprint.

    ``exclude_queries`` holds normalised query texts (:func:`~agentflan.eval.sources.training_queries`);
    ``max_per_case`` caps a case (missing or None: no cap); ``max_hotpot`` caps the HotpotQA extras.
    ``output_format`` (``react``, ``json`` or None) adds that format instruction to the system prompt of
    the cases that offer tools, as an agent is deployed (``native``: no system prompt, the tools go to the chat
    template): the paper's (b) and (d) prompts ask for a format,
    which is what makes a plain answer to (b) the hard, informative case.
    The manifest says, per case, how many the sources allow (after dedupe, exclusion and the split
    between cases sharing a pool) and how many were taken.
    """
    caps = dict(max_per_case or {})
    if unknown := set(caps) - set(CASES):
        raise ValueError(f"max_per_case: unknown case(s) {sorted(unknown)} (expected {', '.join(CASES)})")
    exclude = {normalize_query(q) for q in exclude_queries}
    seen: set[str] = set()
    counts: dict[str, dict[str, int]] = {}
    general = dedupe([q for p in sources.general for q in read_general(p)], exclude, seen, counts)
    tool_queries = read_toolbench_eval(sources.toolbench) + read_teval(sources.teval)
    tool_lists = [q.tools for q in tool_queries if q.tools]  # all lists, kept or not: (b) only shows them
    tooled = dedupe([q for q in tool_queries if q.tools], exclude, seen, counts)
    hotpot = dedupe(read_hotpot(sources.hotpot), exclude, seen, counts)

    general = _shuffled(general, seed, "general")
    tooled = _shuffled(tooled, seed, "tool_queries")
    hotpot = _shuffled(hotpot, seed, "hotpot")[:max_hotpot]
    candidates: dict[str, list[EvalQuery]] = {
        "a": general[0::2],
        "b": general[1::2] if tool_lists else [],
        "c": _shuffled(tooled[1::2] + hotpot, seed, "c"),
        "d": tooled[0::2],
    }
    samples = []
    for case in CASES:
        for q in candidates[case][: caps.get(case)]:
            if case == "b":
                tools = rng(seed, "agent_h_b_tools", q.source, q.source_id).choice(tool_lists)
            else:
                tools = q.tools if case == "d" else []
            instruction = FORMAT_INSTRUCTIONS.get(output_format or "", "")
            samples.append(_sample(case, q, tools, instruction, output_format == "native"))

    taken = {c: sum(s.case == c for s in samples) for c in CASES}
    manifest = {
        "benchmark": "agent_h",
        "seed": seed,
        "sources": counts,
        "pools": {"general": len(general), "tool_queries": len(tooled), "hotpot_extras": len(hotpot)},
        "allowed": {c: len(candidates[c]) for c in CASES},
        "taken": taken,
        "taken_by_source": {c: dict(Counter(s.source for s in samples if s.case == c)) for c in CASES},
        "caps": {c: caps.get(c) for c in CASES},
        "max_hotpot": max_hotpot,
        "output_format": output_format,
        "excluded_queries": len(exclude),
        "d_reference": {
            "name": sum(s.case == "d" and s.reference is not None for s in samples),
            "arguments": sum(
                s.case == "d" and s.reference is not None and s.reference.arguments is not None
                for s in samples
            ),
        },
    }
    return make_set("agent_h", samples, manifest)
