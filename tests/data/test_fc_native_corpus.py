"""Native function calling, a whole native data run: every row accounted for, loaded as lists of dicts and
rendered by the Hermes/Qwen and Llama-3.1 chat templates, and the config check that a native corpus needs a
tool-calling template."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fc_helpers import (
    CHAT_TEMPLATES,
    FC,
    NATIVE_SPEC,
    REPO,
    SAMPLE,
    assert_stages_add_up,
    native_cfg,
)

from agentflan.cli import main
from agentflan.config import ConfigError, load_config
from agentflan.data.pipeline import corpus_files, run_data
from agentflan.data.record import CALL_PARTS

# ------------------------------------------------------------------------------ 7. the native corpus, rendered


@pytest.fixture(scope="module")
def native_run(shared_data, tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    """The three real function-calling files, FireAct, and plain chats (the seeds of case (b) negatives)."""
    out = tmp_path_factory.mktemp("native")
    fc = shared_data / FC
    cfg = native_cfg(
        [
            (fc / "glaive_toolcall_sharegpt.json", "glaive", "agent"),
            (fc / "glaive_v2_raw.jsonl", "glaive_raw", "agent"),
            (fc / "openai_tools_typed_parts.jsonl", "typed_parts", "agent"),
            (SAMPLE / "react/fireact_hotpotqa.jsonl", "react", "agent"),
            (SAMPLE / "general/fastchat_dummy_conversation.json", "sharegpt", "general"),
        ],
        out,
    )
    assert cfg.data.call_format == "native"
    return out, run_data(cfg)


@pytest.fixture(scope="module")
def native_corpus(native_run):
    import datasets

    out, _ = native_run
    return datasets.load_dataset("parquet", data_files=corpus_files(out), split="train")


def test_native_run_accounts_for_every_row(native_run):
    _, m = native_run
    assert_stages_add_up(m)
    read = m["stages"][0]
    assert (read["in"], read["quarantined"]) == (100 + 5 + 25 + 500 + 500, 0)
    formats = {Path(p).name: f for p, f in m["formats"].items()}
    assert formats["glaive_toolcall_sharegpt.json"] == {"sharegpt_fc": 100}
    assert formats["glaive_v2_raw.jsonl"] == {"glaive_raw": 5}
    assert formats["openai_tools_typed_parts.jsonl"] == {"typed_parts": 25}
    assert m["capabilities"]  # stats were gathered
    assert {"glaive", "glaive_raw", "typed_parts", "react", "general", "negatives"} <= set(m["buckets"])


def test_native_corpus_loads_as_lists_of_dicts(native_run, native_corpus):
    ds = native_corpus
    _, m = native_run
    assert len(ds) == m["rows"]["corpus"]
    assert {"messages", "tools"} <= set(ds.column_names)
    formats = Counter(json.loads(r["meta"]).get("format") for r in ds)
    assert formats["native"] > 500 and formats["react"] > 0  # react_share keeps a tenth in ReAct
    n_calls = 0
    for row in ds:
        assert isinstance(row["messages"], list) and all(isinstance(msg, dict) for msg in row["messages"])
        assert isinstance(row["tools"], list) and all(isinstance(t, dict) for t in row["tools"])
        # plain JSON values, as TRL's apply_chat_template takes them
        assert json.loads(json.dumps(row["messages"])) == row["messages"]
        assert json.loads(json.dumps(row["tools"])) == row["tools"]
        for t in row["tools"]:
            assert t["type"] == "function" and isinstance(t["function"]["name"], str)
        for msg in row["messages"]:
            assert msg["role"] in ("system", "user", "assistant", "tool") and isinstance(msg["content"], str)
            for c in msg["tool_calls"] or []:
                assert c["type"] == "function" and isinstance(c["function"]["arguments"], dict)  # decoded
                n_calls += 1
            if msg["tool_calls"]:
                assert msg["capability"] == "tool_call"
                assert set(msg["part_weights"]) == set(CALL_PARTS)
                kept = {v for v in msg["part_weights"].values() if v is not None}
                assert kept <= {0.0, 1.0}  # the spec's mask strategy: each part on or off
    assert n_calls > 500
    b = [r for r in ds if json.loads(r["meta"]).get("case") == "b"]
    assert b and all(r["tools"] for r in b)
    assert all(msg["tool_calls"] is None for r in b for msg in r["messages"])


def _tokenizer_with(template: str):
    from agentflan.train.tokenizer import train_bpe_tokenizer
    from agentflan.train.tool_templates import JINJA_TEMPLATES

    source = (CHAT_TEMPLATES / f"{template}.jinja").read_text()
    assert JINJA_TEMPLATES[template].source == source
    tok = train_bpe_tokenizer(["a small corpus to train a tokenizer on"] * 20, 300, "chatml")
    tok.chat_template = source
    return tok


@pytest.mark.parametrize("template", ["hermes", "llama31"])
def test_every_corpus_row_renders_with_a_tool_calling_template(native_corpus, template):
    tok = _tokenizer_with(template)
    failures = []
    for row in native_corpus:
        try:
            tok.apply_chat_template(row["messages"], tools=row["tools"], tokenize=False)
        except Exception as e:  # noqa: BLE001 - collected, so the failure names every row that failed
            failures.append((row["id"], f"{type(e).__name__}: {e}"))
    assert failures == []
    row = next(
        r for r in native_corpus
        if json.loads(r["meta"]).get("format") == "native" and any(len(m["tool_calls"] or []) == 2 for m in r["messages"])
    )  # fmt: skip
    step = next(m for m in row["messages"] if len(m["tool_calls"] or []) == 2)
    text = tok.apply_chat_template(row["messages"], tools=row["tools"], tokenize=False)
    key = "arguments" if template == "hermes" else "parameters"
    for c in step["tool_calls"]:
        rendered = json.dumps(
            {"name": c["function"]["name"], key: c["function"]["arguments"]}, ensure_ascii=False
        )
        assert rendered in text
    assert json.dumps(row["tools"][0]["function"]["name"]) in text  # the tools are offered
    if template == "hermes":
        assert text.count("<tool_call>") >= 2 and "<tools>" in text and "<tool_response>" in text


# ------------------------------------------------------------------------------------------------ 8. config


@pytest.mark.parametrize("template", ["agentflan", "chatml", "llama2"])
def test_native_calls_need_a_tool_calling_template(tmp_path, capsys, template):
    with pytest.raises(ConfigError) as err:
        load_config(NATIVE_SPEC, [f"train.model.template={template}", f"output_dir={tmp_path}"])
    assert f"train.model.template: {template}" in str(err.value) and "call_format" in str(err.value)
    out = tmp_path / "o"
    args = ["data", NATIVE_SPEC, f"train.model.template={template}", f"output_dir={out}"]
    assert main(args) == 2
    err_text = capsys.readouterr().err
    assert "train.model.template" in err_text and "Traceback" not in err_text
    assert not out.exists()


@pytest.mark.parametrize("template", ["hermes", "llama31", "model"])
def test_tool_calling_templates_are_accepted(tmp_path, template):
    cfg = load_config(NATIVE_SPEC, [f"train.model.template={template}", f"output_dir={tmp_path}"])
    assert (cfg.data.call_format, cfg.train.model.template) == ("native", template)
    text = load_config(
        str(REPO / "pipelines/local.yaml"), ["train.model.template=agentflan", f"output_dir={tmp_path}"]
    )
    assert text.data.call_format == "chat"  # a text template is fine for the chat form
