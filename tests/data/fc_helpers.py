"""Helpers shared by the native function-calling tests (``test_fc_*.py``): raw items as the reader splits
them, records as the read stage leaves them, the OpenAI shape every native record must have, and a
native data run's config and stage accounting."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from agentflan.config import load_config
from agentflan.data.readers import iter_raw_items, parse_item
from agentflan.data.record import Record

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "platform/agentflan/sample_data"
CHAT_TEMPLATES = REPO / "platform/agentflan/train/chat_templates"
NATIVE_SPEC = str(REPO / "pipelines/local_native.yaml")
FC = "function_calling"


def raw_items(path: Path) -> list[dict[str, Any]]:
    return list(iter_raw_items(str(path), path.read_bytes(), 10**7))


def item(obj: dict[str, Any], line: int = 1) -> dict[str, Any]:
    """A raw item as the reader splits it from a file."""
    return {"path": "/data/written.jsonl", "line": line, "raw": json.dumps(obj), "error": ""}


def parse(obj: dict[str, Any]) -> Record:
    return parse_item(item(obj), "written")[0]


def load(path: Path, kind: str = "agent") -> list[Record]:
    """Records as the read stage leaves them (kind and bucket set)."""
    out = []
    for it in raw_items(path):
        rec, _ = parse_item(it, path.stem)
        out.append(
            replace(
                rec, meta={**rec.meta, "kind": kind}, bucket="general" if kind == "general" else rec.source
            )
        )
    return out


def calls(record: Record) -> list[dict[str, Any]]:
    return [c for m in record.messages for c in m.tool_calls or []]


def args(call: dict[str, Any]) -> Any:
    return json.loads(call["function"]["arguments"])


def assert_openai_shaped(record: Record) -> None:
    """Calls as OpenAI writes them, every tool message linked to a call of the assistant message it answers,
    tools in OpenAI's function wrapper, and every call naming an offered tool."""
    offered = {t["function"]["name"] for t in record.tools}
    for t in record.tools:
        assert set(t) == {"type", "function"} and t["type"] == "function", t
        assert isinstance(t["function"]["name"], str) and t["function"]["name"], t
        assert isinstance(t["function"].get("parameters", {}), dict), t
    last_calls: dict[str, str] = {}
    for m in record.messages:
        if m.role == "assistant" and m.tool_calls:
            last_calls = {}
            for c in m.tool_calls:
                assert set(c) == {"id", "type", "function"} and c["type"] == "function", c
                assert set(c["function"]) == {"name", "arguments"}, c
                assert isinstance(c["function"]["arguments"], str)
                assert isinstance(args(c), dict), c  # a JSON object as text
                assert isinstance(c["id"], str) and c["id"], c
                if offered:
                    assert c["function"]["name"] in offered, (c, offered)
                last_calls[c["id"]] = c["function"]["name"]
        elif m.role == "tool" and last_calls:
            assert m.tool_call_id in last_calls, (m, last_calls)
            assert m.name == last_calls[m.tool_call_id], (m, last_calls)
        elif m.role != "assistant":
            assert m.tool_calls is None and m.role in ("system", "user", "tool")


def native_cfg(inputs: list[tuple[Path, str, str]], out: Path, *extra: str):
    spec = ",".join(f"{{path: {p}, source: {s}, kind: {k}}}" for p, s, k in inputs)
    return load_config(
        NATIVE_SPEC,
        [
            f"data.inputs=[{spec}]",
            f"output_dir={out}",
            "data.engine=local",
            f"data.negatives.tool_pool_files=[{SAMPLE / 'tools/G1_query.json'}]",
            *extra,
        ],
    )


def assert_stages_add_up(manifest: dict[str, Any]) -> None:
    for s in manifest["stages"]:
        assert s["in"] == s["out"] + s["filtered"] + s["quarantined"], s
        assert s["quarantined"] == sum(s["quarantined_reasons"].values()), s
        assert s["filtered"] == sum(s["filtered_reasons"].values()), s
