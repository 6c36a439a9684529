"""The whole corpus pipeline through the CLI: real corpora, a hostile corpus, determinism, accounting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentflan.cli import main
from agentflan.config import load_config
from agentflan.data.pipeline import corpus_files, read_corpus, remix, run_data

REAL_INPUTS = [
    "{path: %s/agentinstruct/db.jsonl, source: agentinstruct}",
    "{path: %s/react/fireact_hotpotqa.jsonl, source: react}",
    "{path: %s/toolbench/toolllama_G1_demo.json, source: toolbench}",
    "{path: %s/toolbench/answer_G1_10_DFS.json, source: toolbench}",
    "{path: %s/general/fastchat_dummy_conversation.json, source: sharegpt, kind: general}",
]


def real_args(shared: Path, out: Path, *extra: str) -> list[str]:
    inputs = "[" + ",".join(i % shared for i in REAL_INPUTS) + "]"
    return [
        "data",
        "pipelines/local.yaml",
        f"data.inputs={inputs}",
        f"data.negatives.tool_pool_files=[{shared}/toolbench/G1_query.json]",
        f"output_dir={out}",
        *extra,
    ]


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def assert_adds_up(m: dict) -> None:
    for s in m["stages"]:
        assert s["in"] == s["out"] + s["filtered"] + s["quarantined"], s
        assert s["filtered"] == sum(s["filtered_reasons"].values())
        assert s["quarantined"] == sum(s["quarantined_reasons"].values())
    by = {s["name"]: s for s in m["stages"]}
    assert by["filter"]["in"] == by["read"]["out"]
    assert by["align"]["in"] == by["filter"]["out"] + by["format_following"]["out"]
    # align emits a chat and a ReAct variant of each trajectory (the variant counts as "repeated")
    assert by["decompose"]["in"] == by["align"]["out"] + by["align"]["repeated"]
    assert by["choose_format"]["in"] == by["decompose"]["out"]
    assert by["choose_format"]["filtered_reasons"]["other_format_variant"] == by["align"]["repeated"]
    assert by["mixture"]["in"] == by["choose_format"]["out"] + by["negatives"]["out"]
    assert m["rows"]["corpus"] == by["mixture"]["out"] + by["mixture"].get("repeated", 0)


@pytest.fixture(scope="module")
def local_run(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    assert main(real_args(shared_data, out, "data.engine=local")) == 0
    return out


def test_real_corpus_local_engine(local_run):
    m = manifest(local_run)
    assert_adds_up(m)
    assert m["stages"][0]["in"] == 430 + 500 + 4 + 1 + 500
    assert m["stages"][0]["quarantined"] == 0
    assert set(m["buckets"]) == {
        "agentinstruct",
        "react",
        "toolbench",
        "general",
        "negatives",
        "format_following",
    }
    assert m["formats"][next(p for p in m["formats"] if p.endswith("db.jsonl"))] == {"conversations": 430}
    assert m["splits"]["validation"] > 0 and m["capabilities"]["retrieval"]["trained_turns"] > 0


def test_corpus_loads_with_datasets(local_run):
    import datasets

    ds = datasets.load_dataset("parquet", data_files=corpus_files(local_run), split="train")
    assert len(ds) == manifest(local_run)["rows"]["corpus"]
    row = ds[0]
    assert set(row) == {"id", "source", "bucket", "split", "messages", "tools", "meta"}
    assert {"role", "content", "loss", "capability", "weight", "name"} < set(row["messages"][0])
    assert {"tool_calls", "reasoning", "tool_call_id", "part_weights"} < set(
        row["messages"][0]
    )  # native fields
    with_tools = next(r for r in ds if r["tools"])
    assert all(isinstance(t, dict) for t in with_tools["tools"])  # JSON schemas come back as objects


def test_ray_engine_matches_local(ray_session, shared_data, local_run, tmp_path):
    assert main(real_args(shared_data, tmp_path, "data.engine=ray")) == 0
    a, b = manifest(local_run), manifest(tmp_path)
    assert a["fingerprint"] == b["fingerprint"]
    assert a["stages"] == b["stages"]


def test_same_seed_same_fingerprint_other_seed_differs(shared_data, local_run, tmp_path):
    assert main(real_args(shared_data, tmp_path / "same", "data.engine=local")) == 0
    assert main(real_args(shared_data, tmp_path / "other", "data.engine=local", "seed=1")) == 0
    assert manifest(tmp_path / "same")["fingerprint"] == manifest(local_run)["fingerprint"]
    assert manifest(tmp_path / "other")["fingerprint"] != manifest(local_run)["fingerprint"]


def hostile_corpus(directory: Path, shared: Path) -> dict[str, int]:
    """Every kind of bad input, next to good records; returns the expected quarantine reasons."""
    good = (shared / "react/fireact_hotpotqa.jsonl").read_text().splitlines()[:5]
    big = json.dumps(
        {"messages": [{"role": "user", "content": "x" * 5_000_000}, {"role": "assistant", "content": "y"}]}
    )
    no_input = json.dumps(
        {
            "conversations": [
                {"from": "system", "value": "tools"},
                {"from": "user", "value": "quotes please"},
                {"from": "assistant", "value": "Thought: a\nAction: love_quote\nAction Input: {}"},
                {"from": "function", "value": "{}"},
                {"from": "assistant", "value": "Thought: b\nAction: success_quote"},
                {"from": "function", "value": "{}"},
                {
                    "from": "assistant",
                    "value": 'Thought: c\nAction: Finish\nAction Input: {"return_type": "give_answer", "final_answer": "ok"}',
                },
            ]
        }
    )
    lines = [
        good[0].encode(),
        b'{"messages": [{"role": "user", "content": "broken"',  # invalid JSON
        b'{"conversations": [{"from": "wizard", "value": "abracadabra"}]}',  # wrong role
        b'{"messages": [{"content": "who am I"}, {"role": "assistant", "content": "x"}]}',  # missing role
        b'{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]}',  # empty content
        b'{"id": "no-messages"}',  # missing fields
        b'{"messages": [{"role": "user", "content": "caf\xe9 \xff"}, {"role": "assistant", "content": "x"}]}',  # not UTF-8
        no_input.encode(),  # an Action without Action Input
        big.encode(),  # a 5 MB record
        *(g.encode() for g in good[1:]),
    ]
    (directory / "hostile.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (directory / "broken_array.json").write_text(
        '[\n {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},\n {"messages": [}\n]'
    )
    return {
        "invalid_json": 2,
        "bad_message": 2,
        "empty_content": 1,
        "unrecognised_schema": 1,
        "not_utf8": 1,
        "too_large": 1,
        "action_without_input": 1,
    }


def test_hostile_corpus_through_the_cli(ray_session, shared_data, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    expected = hostile_corpus(corpus, shared_data)
    out = tmp_path / "out"
    args = [
        "data",
        "pipelines/local.yaml",
        f"data.inputs=[{corpus}]",
        f"output_dir={out}",
        "data.negatives.tool_pool_files=[]",
    ]
    assert main(args) == 0
    m = manifest(out)
    assert_adds_up(m)
    by = {s["name"]: s for s in m["stages"]}
    assert by["read"]["in"] == 13 + 2  # every non-blank line and array element
    reasons = {**by["read"]["quarantined_reasons"], **by["filter"]["quarantined_reasons"]}
    assert reasons == expected
    import pyarrow.parquet as pq

    q = pq.read_table(out / "quarantine").to_pylist()
    assert len(q) == sum(expected.values())
    by_origin = {r["origin"].rsplit("/", 1)[1]: r for r in q}
    assert by_origin["hostile.jsonl:2"]["reason"].startswith("invalid_json")
    assert by_origin["hostile.jsonl:3"]["reason"] == "bad_message: message 0: unknown role 'wizard'"
    assert (
        "offset" in by_origin["hostile.jsonl:7"]["reason"] and "\\xff" in by_origin["hostile.jsonl:7"]["raw"]
    )
    assert (
        by_origin["hostile.jsonl:8"]["reason"]
        == "action_without_input: message 4: Action 'success_quote' has no Action Input"
    )
    assert by_origin["hostile.jsonl:9"]["reason"].startswith("too_large: record is 5.0 MB")
    assert len(by_origin["hostile.jsonl:9"]["raw"]) > 5_000_000  # nothing lost
    assert by_origin["broken_array.json:3"]["reason"].startswith("invalid_json")
    assert "quarantined" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.capability_weights.retrieval=-1", "data.capability_weights.retrieval"),
        ("data.bogus=1", "data.bogus: unknown key"),
        ("data.weight_strategy=sometimes", "data.weight_strategy"),
        ("data.negatives.responder.kind=openai", "data.negatives.responder"),
        ("seed=abc", "seed"),
        ("novalue", "not key=value"),
    ],
)
def test_bad_config_fails_before_work_naming_the_key(tmp_path, capsys, override, message):
    assert main(["data", "pipelines/local.yaml", f"output_dir={tmp_path / 'o'}", override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    assert (
        main(
            [
                "data",
                "pipelines/local.yaml",
                f"data.inputs=[{tmp_path}/nope.jsonl]",
                f"output_dir={tmp_path}/o",
            ]
        )
        == 2
    )
    assert "no input files found" in capsys.readouterr().err


def test_run_data_returns_the_manifest(shared_data, tmp_path):
    cfg = load_config(
        "pipelines/local.yaml",
        [
            f"data.inputs=[{shared_data}/react/fireact_hotpotqa.jsonl]",
            f"output_dir={tmp_path}",
            "data.engine=local",
        ],
    )
    m = run_data(cfg)
    assert m == manifest(tmp_path)
    assert m["config"]["data"]["inputs"][0]["path"].endswith("fireact_hotpotqa.jsonl")


def test_fingerprint_does_not_depend_on_where_the_inputs_lie(shared_data, tmp_path):
    import shutil

    prints = []
    for where in ("a", "deeper/b"):
        d = tmp_path / where
        d.mkdir(parents=True)
        shutil.copy(shared_data / "react/fireact_hotpotqa.jsonl", d)
        out = tmp_path / f"out_{where.replace('/', '_')}"
        assert (
            main(
                [
                    "data",
                    "pipelines/local.yaml",
                    f"data.inputs=[{d}/fireact_hotpotqa.jsonl]",
                    f"output_dir={out}",
                    "data.engine=local",
                    "data.negatives.tool_pool_files=[]",
                ]
            )
            == 0
        )
        prints.append(manifest(out)["fingerprint"])
    assert prints[0] == prints[1]


def test_hub_dataset_id_goes_through_datasets(monkeypatch, shared_data, tmp_path):
    """No hub is reachable here: a local `datasets.Dataset` stands in for `load_dataset("owner/name")`."""
    import datasets

    rows = [
        json.loads(x) for x in (shared_data / "react/fireact_hotpotqa.jsonl").read_text().splitlines()[:20]
    ]
    calls = []

    def fake_load(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    args = [
        "data",
        "pipelines/local.yaml",
        "data.inputs=[{path: someone/agent-traj, split: train}]",
        f"output_dir={tmp_path}",
        "data.engine=local",
        "data.negatives.tool_pool_files=[]",
    ]
    assert main(args) == 0
    assert calls == [("someone/agent-traj", "train")]
    assert manifest(tmp_path)["stages"][0]["in"] == 20


def test_remix_reruns_pass_b_on_the_decomposed_corpus(shared_data, local_run, tmp_path):
    """What a Tune trial does: the same config re-mixed gives the same corpus as the full pipeline; ReAct
    share, negatives and weights change it without re-running pass A; the held-out split stays put."""
    args = real_args(shared_data, tmp_path)[2:4]  # the inputs and the tool pool
    same = remix(load_config("pipelines/local.yaml", args + [f"output_dir={tmp_path / 'same'}"]), local_run)
    assert same["fingerprint"] == manifest(local_run)["fingerprint"]
    assert same["decomposed_from"] == str(local_run)
    assert_adds_up(same)

    changed = load_config(
        "pipelines/local.yaml",
        args
        + [
            f"output_dir={tmp_path / 'changed'}",
            "seed=3",
            "data.split_seed=0",
            "data.react_share=1.0",
            "data.negatives.enabled=false",
        ],
    )
    m = remix(changed, local_run)
    assert "negatives" not in m["buckets"] and m["fingerprint"] != same["fingerprint"]
    records = read_corpus(changed.output_dir)
    agent = [r for r in records if r.meta.get("kind") == "agent" and not r.meta.get("generated")]
    assert agent and all(r.meta["format"] == "react" for r in agent)
    base_val = {r.id for r in read_corpus(local_run, "validation") if r.bucket != "negatives"}
    new_val = {r.id for r in records if r.meta["split"] == "validation"}
    assert new_val == base_val  # split pinned by data.split_seed
