"""Agent-H scores: the paper's H_ReAct, H_General and H_Score, plus the missed calls the paper leaves out.

Over the N_plain samples whose right answer is a plain reply (cases a, b, c):

    H_ReAct   = #{plain replies containing ReAct words (markers.REACT_WORDS)} / N_plain
    H_General = #{plain replies announcing a tool (markers.GENERAL_TOOL_PHRASES)} / N_plain
    H_Score   = ((1 - H_ReAct) + (1 - H_General)) / 2

The paper stops there, so a model that never calls a tool scores a perfect 1. Over the N_d samples of
case (d), where a call is the right answer:

    missed_call_rate = #{(d) replies with no parseable tool call (tool_calls.parse_call)} / N_d
    combined         = (H_Score + (1 - missed_call_rate)) / 2

``combined`` weighs the two kinds of error equally: a call hallucinated where none is wanted, and a call
missed where one is. Reported as well, in no score: ``plain_call_rate``, the share of plain replies that
hold a parseable call (a bare JSON call has no ReAct words and announces nothing, so H_Score misses it), and
``irrelevance_rate``, the share of case (b) and (c) replies that make no call: BFCL's irrelevance measure.
A rate over zero samples is None, and so is any score built from it.

Every number comes with its 95% interval (:mod:`agentflan.eval.stats`): Wilson for the rates, a stratified
bootstrap over the replies for H_Score and the combined score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from agentflan.eval.agent_h import CASES, PLAIN_CASES
from agentflan.eval.first_call import Reply, parse_call
from agentflan.eval.sources import EvalSample
from agentflan.eval.stats import Interval, bootstrap, wilson
from agentflan.markers import has_react_words, has_tool_phrases


@dataclass(frozen=True)
class Judgement:
    """What one reply shows, whatever its case."""

    react: bool  # contains ReAct words
    general: bool  # announces a tool call in prose
    call: bool  # holds a parseable tool call


def judge_reply(sample: EvalSample, reply: Reply) -> Judgement:
    """Judge one reply. A reply given as turns (chat protocol) is judged on all its turns together."""
    text = reply if isinstance(reply, str) else "\n".join(reply)
    call = parse_call(reply, tool_names=[t.get("name", "") for t in sample.tools])
    return Judgement(react=has_react_words(text), general=has_tool_phrases(text), call=call.found)


@dataclass(frozen=True)
class CaseCounts:
    n: int
    react: int  # replies with ReAct words
    general: int  # replies announcing a tool
    calls: int  # replies holding a parseable call (for case d: n - calls were missed)


def _rate(count: int, n: int) -> float | None:
    return count / n if n else None


@dataclass(frozen=True)
class AgentHReport:
    per_case: dict[str, CaseCounts]
    n_plain: int
    n_call: int
    h_react: float | None
    h_general: float | None
    h_score: float | None
    missed_call_rate: float | None
    combined: float | None
    plain_call_rate: float | None
    # Cases (b) and (c) read as BFCL reads its irrelevance category: the share of replies that make no call.
    irrelevance_rate: float | None = None
    intervals: dict[str, Interval] = field(default_factory=dict)  # 95% interval of each score above

    def to_dict(self) -> dict:
        """The scores, their intervals, and per case its counts, rates and rate intervals."""
        out = asdict(self)
        out["intervals"] = {k: v.to_dict() for k, v in self.intervals.items()}
        out["per_case"] = {
            case: {
                **asdict(c),
                "react_rate": _rate(c.react, c.n),
                "general_rate": _rate(c.general, c.n),
                "call_rate": _rate(c.calls, c.n),
                "intervals": {
                    "react_rate": wilson(c.react, c.n).to_dict(),
                    "general_rate": wilson(c.general, c.n).to_dict(),
                    "call_rate": wilson(c.calls, c.n).to_dict(),
                },
            }
            for case, c in self.per_case.items()
        }
        return out


def _h_score(plain: list[Judgement]) -> float | None:
    if not plain:
        return None
    n = len(plain)
    return ((1 - sum(j.react for j in plain) / n) + (1 - sum(j.general for j in plain) / n)) / 2


def _combined(plain: list[Judgement], call: list[Judgement]) -> float | None:
    h = _h_score(plain)
    if h is None or not call:
        return None
    return (h + sum(j.call for j in call) / len(call)) / 2


def score_agent_h(samples: Sequence[EvalSample], replies: Sequence[Reply]) -> AgentHReport:
    """Score one reply per Agent-H sample (see the module docstring for the formulas)."""
    if len(samples) != len(replies):
        raise ValueError(f"{len(samples)} samples but {len(replies)} replies")
    judged: dict[str, list[Judgement]] = {case: [] for case in CASES}
    for sample, reply in zip(samples, replies, strict=True):
        if sample.case not in judged:
            raise ValueError(f"sample {sample.id}: unknown Agent-H case {sample.case!r}")
        judged[sample.case].append(judge_reply(sample, reply))
    per_case = {
        case: CaseCounts(
            n=len(js),
            react=sum(j.react for j in js),
            general=sum(j.general for j in js),
            calls=sum(j.call for j in js),
        )
        for case, js in judged.items()
    }
    plain = [per_case[c] for c in PLAIN_CASES]
    call = [per_case[c] for c in CASES if c not in PLAIN_CASES]
    n_plain, n_call = sum(c.n for c in plain), sum(c.n for c in call)
    h_react = _rate(sum(c.react for c in plain), n_plain)
    h_general = _rate(sum(c.general for c in plain), n_plain)
    h_score = None if h_react is None or h_general is None else ((1 - h_react) + (1 - h_general)) / 2
    missed = _rate(sum(c.n - c.calls for c in call), n_call)
    combined = None if h_score is None or missed is None else (h_score + (1 - missed)) / 2
    plain_j = [j for c in PLAIN_CASES for j in judged[c]]
    irrelevant = judged.get("b", []) + judged.get("c", [])
    call_j = [j for c in CASES if c not in PLAIN_CASES for j in judged[c]]
    intervals = {
        "h_react": wilson(sum(j.react for j in plain_j), n_plain),
        "h_general": wilson(sum(j.general for j in plain_j), n_plain),
        "h_score": bootstrap([plain_j], lambda g: _h_score(list(g[0]))),  # type: ignore[arg-type]
        "missed_call_rate": wilson(sum(not j.call for j in call_j), n_call),
        "combined": bootstrap([plain_j, call_j], lambda g: _combined(list(g[0]), list(g[1]))),  # type: ignore[arg-type]
        "plain_call_rate": wilson(sum(j.call for j in plain_j), n_plain),
        "irrelevance_rate": wilson(sum(not j.call for j in irrelevant), len(irrelevant)),
    }
    return AgentHReport(
        per_case=per_case,
        n_plain=n_plain,
        n_call=n_call,
        h_react=h_react,
        h_general=h_general,
        h_score=h_score,
        missed_call_rate=missed,
        combined=combined,
        plain_call_rate=_rate(sum(c.calls for c in plain), n_plain),
        irrelevance_rate=intervals["irrelevance_rate"].value,
        intervals=intervals,
    )
