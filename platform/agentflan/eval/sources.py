"""Held-out queries for evaluation, read from the public eval files, and the eval-set type both builders share.

Every eval query becomes an :class:`EvalQuery`: the user's text, the tools offered with it (OpenAI function
schemas, shown with the same system prompt the training negatives use) and, where the source holds one, the
reference for its first tool call. Four readers cover the sources in ``shared/data``:

==========================  ============================================================================
ShareGPT-schema chats       the first human turn (later turns depend on the earlier replies)
ToolBench tooleval (G1)     ``query`` with ``available_tools``; the reference is the first call of the
                            solved answer, whose messages are cut at 100 characters (see below)
T-Eval ``plan_json``        the user turn of ``origin_prompt``; tools parsed from the API list in its
                            system turn; the reference is ``ground_truth[0]`` (the only step with no
                            ``prev``, so the first call is unambiguous)
HotpotQA dev                ``question``; no tools, no reference
==========================  ============================================================================

Queries are compared after :func:`normalize_query`, which is how an eval set is kept disjoint from a
training corpus (:func:`training_queries`) and free of duplicates.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import unicodedata
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from agentflan.data.align import TOOLS_SYSTEM_PROMPT
from agentflan.data.negatives import toolbench_function
from agentflan.data.record import Record

Expected = Literal["plain", "call"]  # the right kind of reply: a plain answer, or a tool call


@dataclass(frozen=True)
class ReferenceCall:
    """The first tool call a solved trajectory makes for a query."""

    name: str
    arguments: dict[str, Any] | None  # None when the source does not hold them in full (cut ToolBench)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments}


@dataclass(frozen=True)
class EvalQuery:
    source: str  # a short source name, e.g. "toolbench_g1"
    source_id: str  # the query's id in its file (a key, an id field, or the list index)
    query: str
    tools: list[dict[str, Any]] = field(default_factory=list)
    reference: ReferenceCall | None = None


@dataclass(frozen=True)
class EvalSources:
    """Where the eval files are. :meth:`from_dir` names the files of ``shared/data``."""

    general: tuple[Path, ...]  # ShareGPT-schema chats: cases (a) and (b)
    toolbench: Path  # ToolBench tooleval G1 instruction set: cases (c) and (d), tool use
    teval: Path  # T-Eval plan_json: cases (c) and (d), tool use
    hotpot: Path  # HotpotQA dev: extra case (c) queries

    @classmethod
    def from_dir(cls, data_dir: Path | str) -> EvalSources:
        d = Path(data_dir)
        return cls(
            general=(d / "general/sharegpt_examples.json", d / "general/fastchat_dummy_conversation.json"),
            toolbench=d / "eval/toolbench_tooleval_G1_instruction.json",
            teval=d / "eval/teval_plan_json_v1.json",
            hotpot=d / "eval/hotpot_dev_v1_simplified.json",
        )


def normalize_query(text: str) -> str:
    """The form queries are compared in: NFKC, case-folded, whitespace collapsed. Idempotent."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def training_queries(records: Iterable[Record]) -> set[str]:
    """Every user turn of a training corpus, normalised: pass it as ``exclude_queries`` to a builder.

    All user turns, not only the first, so a query that shows up mid-conversation is excluded too; the
    short elicit turns of aligned samples match no eval query, so they do no harm.
    """
    return {normalize_query(m.content) for r in records for m in r.messages if m.role == "user"}


def _load_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read eval source: {e}") from None


def read_general(path: Path) -> list[EvalQuery]:
    """First human turns of ShareGPT-schema chats (``[{"id", "conversations": [{"from", "value"}]}]``)."""
    source = Path(path).stem
    out = []
    for i, conv in enumerate(_load_json(path)):
        turns = conv.get("conversations") if isinstance(conv, dict) else None
        if not isinstance(turns, list):
            raise ValueError(f"{path}: item {i}: no 'conversations' list")
        first = next(
            (t.get("value") for t in turns if isinstance(t, dict) and t.get("from") == "human"), None
        )
        if isinstance(first, str) and first.strip():
            out.append(EvalQuery(source, str(conv.get("id", i)), first.strip()))
    return out


_TB_NAME = re.compile(r"^\{'name': '([^']+)'")
# The ``arguments`` value as a complete Python string literal; absent when the 100-character cut fell inside it.
_TB_ARGS = re.compile(r"""'arguments': ('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
_TB_FINISH = "Finish"


def _first_toolbench_call(details: list[dict[str, Any]]) -> ReferenceCall | None:
    """The first ``tool`` node on the answer path, read from its cut message.

    The message is ``str({'name': ..., 'arguments': '<json>', 'response': ...})`` cut at 100 characters:
    the name always survives; the arguments only when their literal closes before the cut.
    CoT answers do not branch; should one, the first child is followed.
    """
    nodes = details
    while nodes:
        node = nodes[0]
        if node.get("role") == "tool":
            message = str(node.get("message", ""))
            if not (m := _TB_NAME.match(message)) or m.group(1) == _TB_FINISH:
                return None
            arguments = None
            if a := _TB_ARGS.search(message):
                try:
                    parsed = json.loads(ast.literal_eval(a.group(1)))
                except (ValueError, SyntaxError, TypeError):
                    parsed = None
                arguments = parsed if isinstance(parsed, dict) else None
            return ReferenceCall(m.group(1), arguments)
        nodes = node.get("next") or []
    return None


def read_toolbench_eval(path: Path) -> list[EvalQuery]:
    """ToolBench tooleval queries. ToolBench's own ``Finish`` function is left out of the tools shown: the
    training tool pool (``toolbench_function`` over ``api_list``) has none, so the prompt matches training."""
    out = []
    for key, item in _load_json(path).items():
        if not isinstance(item, dict) or not isinstance(item.get("query"), str):
            raise ValueError(f"{path}: entry {key!r}: no 'query' string")
        tools = [t for t in item.get("available_tools", []) if t.get("name") != _TB_FINISH]
        details = (item.get("answer") or {}).get("answer_details") or []
        out.append(
            EvalQuery("toolbench_g1", str(key), item["query"].strip(), tools, _first_toolbench_call(details))
        )
    return out


_TEVAL_APIS = re.compile(r"following API:\n(\[.*?\])\n", re.S)


def _teval_tool(spec: dict[str, Any]) -> dict[str, Any]:
    """A T-Eval API spec as an OpenAI function schema; keeps T-Eval's dotted name, which the ground truth uses."""
    api = {
        "api_description": spec.get("description", ""),
        "required_parameters": spec.get("required_parameters", []),
        "optional_parameters": spec.get("optional_parameters", []),
    }
    return {**toolbench_function(api), "name": spec["name"]}


def read_teval(path: Path) -> list[EvalQuery]:
    """T-Eval plan queries: the user turn of ``origin_prompt``, the API list of its system turn."""
    out = []
    for key, item in _load_json(path).items():
        prompt = item.get("origin_prompt") if isinstance(item, dict) else None
        user = next((m["content"] for m in prompt or [] if m.get("role") == "user"), None)
        system = next((m["content"] for m in prompt or [] if m.get("role") == "system"), "")
        if not isinstance(user, str) or not (apis := _TEVAL_APIS.search(system)):
            raise ValueError(f"{path}: entry {key!r}: origin_prompt lacks a user turn or an API list")
        try:
            specs = ast.literal_eval(apis.group(1))
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"{path}: entry {key!r}: API list does not parse: {e}") from None
        tools = [_teval_tool(spec) for _, spec in specs]
        first = next((g for g in item.get("ground_truth", []) if not g.get("prev")), None)
        reference = ReferenceCall(first["name"], dict(first.get("args") or {})) if first else None
        out.append(EvalQuery("teval_plan", str(key), user.strip(), tools, reference))
    return out


def read_hotpot(path: Path) -> list[EvalQuery]:
    return [EvalQuery("hotpotqa_dev", str(i), q["question"].strip()) for i, q in enumerate(_load_json(path))]


def dedupe(
    queries: Iterable[EvalQuery], exclude: Collection[str], seen: set[str], counts: dict[str, dict[str, int]]
) -> list[EvalQuery]:
    """Keep the first of each normalised query not in ``exclude``; ``seen`` carries across calls.

    ``counts[source]`` gets ``read``, ``duplicates``, ``excluded`` and ``kept``, so the manifest says
    where every dropped query went.
    """
    kept = []
    for q in queries:
        c = counts.setdefault(q.source, {"read": 0, "duplicates": 0, "excluded": 0, "kept": 0})
        c["read"] += 1
        key = normalize_query(q.query)
        if key in exclude:
            c["excluded"] += 1
        elif key in seen:
            c["duplicates"] += 1
        else:
            seen.add(key)
            kept.append(q)
            c["kept"] += 1
    return kept


def prompt_messages(
    query: str, tools: list[dict[str, Any]], instruction: str = "", native: bool = False
) -> list[dict[str, str]]:
    """System turn (only when tools are offered) plus the user turn, as the training negatives show tools.
    ``native``: the user turn alone; the tools go to the chat template (``tools=``, :func:`prompt_tools`)."""
    messages = []
    if tools and not native:
        system = TOOLS_SYSTEM_PROMPT.format(tools=json.dumps(tools, ensure_ascii=False))
        messages.append({"role": "system", "content": system + (f"\n{instruction}" if instruction else "")})
    messages.append({"role": "user", "content": query})
    return messages


def prompt_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The tools of a native prompt in OpenAI's wrapper (what tool-calling templates take), or None."""
    from agentflan.data.tool_schema import normalize_tools

    return normalize_tools(tools) or None


@dataclass(frozen=True)
class EvalSample:
    """One prompt of an eval set and what its right answer is."""

    id: str
    case: str  # Agent-H case "a".."d"; tool-use samples are case "d" queries
    expected: Expected
    source: str
    query: str
    messages: list[dict[str, str]]
    tools: list[dict[str, Any]]
    reference: ReferenceCall | None

    def to_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "case": self.case,
            "expected": self.expected,
            "source": self.source,
            "query": self.query,
            "messages": self.messages,
            "tools": json.dumps(self.tools, ensure_ascii=False),
            "reference": json.dumps(self.reference.to_dict(), ensure_ascii=False) if self.reference else None,
        }


EVAL_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("case", pa.string()),
        ("expected", pa.string()),
        ("source", pa.string()),
        ("query", pa.string()),
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("tools", pa.string()),  # JSON list of OpenAI function schemas; "[]" when none are offered
        ("reference", pa.string()),  # JSON {"name", "arguments"} of the first call; null when unknown
    ]
)


def fingerprint(rows: Iterable[dict[str, Any]]) -> str:
    """A hash of the rows in order: equal inputs and seed give an equal fingerprint."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class EvalSet:
    name: str  # "agent_h" or "tool_use"
    samples: list[EvalSample]
    manifest: dict[str, Any]  # counts per source and case; includes the fingerprint

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    def write(self, out_dir: Path | str) -> Path:
        """Write ``<name>.parquet`` and ``<name>.manifest.json`` into ``out_dir``; returns the parquet path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{self.name}.parquet"
        pq.write_table(pa.Table.from_pylist([s.to_row() for s in self.samples], schema=EVAL_SCHEMA), path)
        (out / f"{self.name}.manifest.json").write_text(json.dumps(self.manifest, indent=2, sort_keys=True))
        return path


def make_set(name: str, samples: list[EvalSample], manifest: dict[str, Any]) -> EvalSet:
    """An eval set whose manifest carries the fingerprint of its rows."""
    return EvalSet(name, samples, {**manifest, "fingerprint": fingerprint(s.to_row() for s in samples)})
