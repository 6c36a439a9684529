"""A corpus under output_dir is reused only while its inputs are the files it was built from: an input that
changes under the same config (edited, grown, gone) is noticed, and ``agentflan train`` says why it rebuilds."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import agentflan.train.recipe
from agentflan.cli import main
from agentflan.config import load_config
from agentflan.data.pipeline import NO_CORPUS, corpus_staleness, run_data
from agentflan.data.staleness import changed_input, input_stamps

REPO = Path(__file__).resolve().parents[2]


def args(inputs: Path, out: Path) -> list[str]:
    return [
        f"output_dir={out}",
        "data.engine=local",
        f"data.inputs=[{{path: {inputs}, source: react, kind: agent}}]",
        f"data.negatives.tool_pool_files=[{inputs.parent / 'G1_query.json'}]",
    ]


@pytest.fixture
def built(shared_data, tmp_path):
    """A corpus built from a copy of FireAct's first 60 trajectories (a copy: the test edits it)."""
    data = tmp_path / "inputs"
    data.mkdir()
    lines = (shared_data / "react/fireact_hotpotqa.jsonl").read_text().splitlines(keepends=True)
    (data / "fireact.jsonl").write_text("".join(lines[:60]))
    shutil.copy(shared_data / "toolbench/G1_query.json", data)
    cfg = load_config(REPO / "pipelines/local.yaml", args(data / "fireact.jsonl", tmp_path / "out"))
    assert corpus_staleness(cfg) == NO_CORPUS
    manifest = run_data(cfg)
    assert corpus_staleness(cfg) is None
    return cfg, data / "fireact.jsonl", lines, manifest


def test_the_manifest_stamps_every_input_file(built):
    cfg, fireact, _, manifest = built
    stamps = manifest["input_files"]
    assert set(stamps) == {str(fireact.resolve()), str((fireact.parent / "G1_query.json").resolve())}
    assert stamps[str(fireact.resolve())]["size"] == fireact.stat().st_size


def test_an_input_that_grows_makes_the_corpus_stale(built):
    cfg, fireact, lines, _ = built
    with fireact.open("a") as f:
        f.write(lines[60])
    before, after = fireact.stat().st_size - len(lines[60].encode()), fireact.stat().st_size
    assert corpus_staleness(cfg) == (
        f"{fireact.resolve()} changed since the corpus was built (size {before} -> {after} bytes)"
    )


def test_an_input_rewritten_to_the_same_size_is_noticed_by_its_mtime(built):
    cfg, fireact, _, _ = built
    text = fireact.read_text()
    fireact.write_text(text.replace('"user"', '"USER"', 1).replace('"USER"', '"user"', 1))  # same bytes
    st = fireact.stat()
    os.utime(fireact, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert corpus_staleness(cfg).endswith("changed since the corpus was built (modified)")


def test_a_tool_pool_file_that_is_gone_makes_the_corpus_stale(built):
    cfg, fireact, _, _ = built
    (fireact.parent / "G1_query.json").unlink()
    assert corpus_staleness(cfg).endswith("G1_query.json changed since the corpus was built (gone)")


def test_a_corpus_without_stamps_is_rebuilt(built):
    cfg, _, _, _ = built
    manifest_path = Path(cfg.output_dir) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["input_files"]
    manifest_path.write_text(json.dumps(manifest))
    assert "records no input files" in corpus_staleness(cfg)


def test_changed_input_is_none_for_the_same_stamps(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text("{}\n")
    assert changed_input(input_stamps([str(f)]), input_stamps([str(f)])) is None
    assert input_stamps(["hf://owner/name"]) == {}  # not a local file: not stamped, trusted


def test_train_says_why_it_rebuilds_the_corpus(built, monkeypatch, capsys):
    """The one console line, then the data stage runs again and stamps the new file (training is stubbed:
    this is about the corpus)."""
    cfg, fireact, lines, first = built
    monkeypatch.setattr(
        agentflan.train.recipe,
        "run_train",
        lambda cfg, progress: {"steps": 0, "final": {}, "model_dir": "-", "run_id": "-"},
    )
    with fireact.open("a") as f:
        f.writelines(lines[60:80])
    overrides = args(fireact, Path(cfg.output_dir))
    assert main(["train", "pipelines/local.yaml", *overrides]) == 0
    err = capsys.readouterr().err  # the console's messages go to stderr, tables to stdout
    assert f"rebuilding the corpus under {cfg.output_dir}: {fireact.resolve()} changed since the corpus" in err
    rebuilt = json.loads((Path(cfg.output_dir) / "manifest.json").read_text())
    assert rebuilt["input_files"][str(fireact.resolve())]["size"] == fireact.stat().st_size
    assert rebuilt["rows"]["corpus"] > first["rows"]["corpus"]
    assert main(["train", "pipelines/local.yaml", *overrides]) == 0  # nothing changed since: reused
    assert "is current: skipping the data stage" in capsys.readouterr().err
