"""Stage 4, negative samples: queries whose right answer is a plain reply.

Existing agent data covers (a) no tools + chat and (d) tools + a query that needs them. A model tuned only
on those learns "tools in the prompt, or a tool-looking query, means call a tool" and hallucinates calls.
Agent-FLAN adds:

(c) no tools offered, and a query that looks like it needs one: made from the user query of an agent
    trajectory, with its tools taken away;
(b) tools offered in the system prompt, and a query that does not need them: made from a general chat,
    with a tool list from the corpus added.

A :class:`~agentflan.data.responders.Responder` writes the plain replies; a reply that still contains ReAct
words or announces a tool call is rejected (counted as ``reply_uses_tool_words``), never trained on. A
request the responder could not answer (an endpoint that kept failing) quarantines its seed's candidate
alone, as ``responder_failed``: it is a fault to look at, not a choice of the data.
"""

from __future__ import annotations

import json
import re

from agentflan.config import NegativesConfig
from agentflan.data.align import ELICIT_FINAL, FORMAT_INSTRUCTIONS, TOOLS_SYSTEM_PROMPT
from agentflan.data.react import parse_step
from agentflan.data.record import Message, Record
from agentflan.data.responders import NegativeRequest, Responder, ResponderFailure
from agentflan.data.stage import Drop, Quarantine, rng, unit
from agentflan.markers import has_react_words, has_tool_phrases

_STEP_CAPABILITIES = ("reasoning", "retrieval", "understanding", "instruction_following", "tool_call")


def _query_and_answer(record: Record) -> tuple[str | None, str | None]:
    """The user query right before the trajectory's first step, and its final answer if it has one.

    Works on decomposed records in both formats: chat-aligned (the first step is the first assistant turn
    with an agent capability; the final answer is the reply to an ELICIT_FINAL turn) and ReAct.
    """
    query: str | None = None
    answer: str | None = None
    started = False
    previous: Message | None = None
    for m in record.messages:
        if m.role == "user" and not started:
            query = m.content
        elif m.role == "assistant":
            started = started or m.capability in _STEP_CAPABILITIES
            step = parse_step(m.content) if record.meta.get("format") == "react" else None
            if step is not None and step.final_answer:
                answer = step.final_answer
            elif previous is not None and previous.role == "user" and previous.content in ELICIT_FINAL:
                answer = m.content
            elif (
                record.meta.get("format") == "native"
                and not m.tool_calls
                and previous
                and previous.role == "tool"
            ):
                answer = m.content  # native: the reply after the last tool result
        previous = m
    return (query if started else None), answer


def _plain_answer(answer: str | None) -> str | None:
    """A final answer short and plain enough to say back as a sentence (HotpotQA style)."""
    if not answer or len(answer) > 200 or answer.lstrip()[:1] in "[{#" or "\n" in answer.strip():
        return None
    return answer.strip()


def toolbench_function(api: dict) -> dict:
    """A ToolBench ``api_list`` entry as an OpenAI function schema, named the way ToolLLaMA names it."""
    snake = re.sub(r"[^0-9a-zA-Z]+", "_", str(api.get("api_name", ""))).strip("_").lower()
    tool = re.sub(r"[^0-9a-zA-Z]+", "_", str(api.get("tool_name", ""))).strip("_").lower()
    params = [*api.get("required_parameters", []), *api.get("optional_parameters", [])]
    return {
        "name": f"{snake}_for_{tool}",
        "description": str(api.get("api_description", "")).strip(),
        "parameters": {
            "type": "object",
            "properties": {
                p["name"]: {
                    "type": str(p.get("type", "string")).lower(),
                    "description": p.get("description", ""),
                }
                for p in params
                if isinstance(p, dict) and "name" in p
            },
            "required": [
                p["name"] for p in api.get("required_parameters", []) if isinstance(p, dict) and "name" in p
            ],
        },
    }


def load_tool_pool_file(path: str) -> list[str]:
    """Tool lists for case (b): a ToolBench query file (items with ``api_list``) or a JSON list of tool lists."""
    from agentflan.data.readers import read_bytes

    try:
        items = json.loads(read_bytes(path))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"data.negatives.tool_pool_files: cannot read {path}: {e}") from None
    if not isinstance(items, list):
        raise ValueError(f"data.negatives.tool_pool_files: {path} must hold a JSON list")
    pool = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("api_list"), list):
            tools = [toolbench_function(a) for a in item["api_list"] if isinstance(a, dict)]
        elif isinstance(item, list):
            tools = [t for t in item if isinstance(t, dict) and "name" in t]
        else:
            continue
        if tools:
            pool.append(json.dumps(tools, ensure_ascii=False))
    return pool


class NegativeSampler:
    """Builds case (b) and (c) requests from seed records, has them answered, checks the replies."""

    def __init__(
        self,
        cfg: NegativesConfig,
        responder: Responder,
        tool_pool: list[str],
        seed: int,
        call_format: str = "chat",
    ) -> None:
        self.cfg = cfg
        self.responder = responder
        self.tool_pool = tool_pool
        self.seed = seed
        self.call_format = call_format

    def _request(self, record: Record) -> NegativeRequest | Drop | None:
        kind = record.meta.get("kind")
        if record.meta.get("generated") or kind not in ("agent", "general"):
            return None
        if kind == "agent":
            if unit(self.seed, "negative_c", record.id) >= self.cfg.case_c_rate:
                return None
            query, answer = _query_and_answer(record)
            if query is None:
                return Drop("no_query")
            if len(query) > self.cfg.max_query_chars:
                return Drop("query_too_long")
            reference = None if record.tools else _plain_answer(answer)
            return NegativeRequest(record.id, "c", [Message(role="user", content=query)], reference)
        if unit(self.seed, "negative_b", record.id) >= self.cfg.case_b_rate:
            return None
        if not self.tool_pool:
            return Drop("no_tool_pool")
        first_user = next((i for i, m in enumerate(record.messages) if m.role == "user"), None)
        if first_user is None or first_user + 1 >= len(record.messages):
            return Drop("no_query")
        query, reply = record.messages[first_user], record.messages[first_user + 1]
        if reply.role != "assistant" or len(query.content) > self.cfg.max_query_chars:
            return Drop("no_query")
        r = rng(self.seed, "negative_b_tools", record.id)
        tools = self.tool_pool[r.randrange(len(self.tool_pool))]
        # As deployed agents are prompted: tools, and (mostly) an output format the query must not trigger.
        fmt = r.choice(["", *sorted(FORMAT_INSTRUCTIONS)])
        instruction = f"\n{FORMAT_INSTRUCTIONS[fmt]}" if fmt else ""
        system = Message(role="system", content=TOOLS_SYSTEM_PROMPT.format(tools=tools) + instruction)
        return NegativeRequest(
            record.id, "b", [system, Message(role="user", content=query.content)], reply.content
        )

    def __call__(self, records: list[Record]) -> list[Record | Drop | Quarantine | None]:
        """Per seed: the negative made from it, a :class:`Drop` (a candidate rejected, with the reason), a
        :class:`Quarantine` (returned, not raised: :func:`~agentflan.data.stage.generate` quarantines that
        candidate alone) or None (not a candidate)."""
        planned = [self._request(r) for r in records]
        requests = [p for p in planned if isinstance(p, NegativeRequest)]
        replies = iter(self.responder.respond(requests) if requests else [])
        results: list[Record | Drop | Quarantine | None] = []
        for record, plan in zip(records, planned, strict=True):
            if not isinstance(plan, NegativeRequest):
                results.append(plan)
                continue
            answer = next(replies)
            if isinstance(answer, ResponderFailure):
                results.append(Quarantine("responder_failed", answer.reason))
                continue
            reply = answer.strip()
            if not reply:
                results.append(Drop("empty_reply"))
            elif has_react_words(reply) or has_tool_phrases(reply):
                results.append(Drop("reply_uses_tool_words"))
            else:
                results.append(self._record(record, plan, reply))
        return results

    def _record(self, seed_record: Record, req: NegativeRequest, reply: str) -> Record:
        tools = json.loads(req.messages[0].content.split("\n")[1]) if req.case == "b" else []
        reply_msg = Message(role="assistant", content=reply, loss=True, capability="general")
        messages = [*req.messages, reply_msg]
        if self.call_format == "native":
            # Natively the tools go to the template (tools=...), not into a system text; the reply makes no call.
            from agentflan.data.tool_schema import normalize_tools

            tools = normalize_tools(tools)
            messages = [m for m in messages if m.role != "system"]
        return Record(
            id=f"{seed_record.id}#negative_{req.case}",
            source=seed_record.source,
            bucket="negatives",
            messages=messages,
            tools=tools,
            meta={"kind": "negative", "case": req.case, "generated": "negatives", "seed_id": seed_record.id},
        )
