"""Contamination: the 13-gram rule (normalisation, n-grams, the index), and the report of a real small corpus into
which real eval items were planted: found, dropped with ``eval.decontaminate``, while clean items stay. No Ray."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from agentflan.config import load_config
from agentflan.data.pipeline import read_corpus, run_data
from agentflan.eval import contamination, decontaminate, eval_sets
from agentflan.eval.contamination import Item, build_index, gram_hashes, scan_set, score_item, words
from agentflan.eval.report import flat_metrics
from agentflan.eval.sources import training_queries
from agentflan.rollout.envs.agentbench_db import DEFAULT_DATA, load_dbbench

WORDS20 = "the quick brown fox jumps over the lazy dog while seven wizards quietly hex jolly zebras near a river today"


def test_words_normalise_as_the_janitor_does_and_unicode_too():
    assert words("Hello,  World!\n It's get_weather(city='Paris').") == [
        "hello",
        "world",
        "its",
        "getweathercityparis",
    ]
    assert words("ﬁne STRASSE Straße") == ["fine", "strasse", "strasse"]  # NFKC, case-folded
    assert words(" ... !!! ") == []


def test_ngram_hashes_count_order_and_equality():
    w = WORDS20.split()
    assert len(gram_hashes(w[:12])) == 0 and len(gram_hashes(w[:13])) == 1 and len(gram_hashes(w)) == 8
    assert gram_hashes(w)[3] == gram_hashes(w[3:16])[0]  # the same 13 words hash alike wherever they are
    swapped = w[:13]
    swapped[0], swapped[1] = swapped[1], swapped[0]
    assert gram_hashes(swapped)[0] != gram_hashes(w[:13])[0]  # order matters
    assert len(set(gram_hashes(w).tolist())) == 8


@pytest.mark.parametrize("batch_words", [5, 500_000])  # 5: a batch per text, and the pending parts merged
def test_index_finds_13grams_within_texts_never_across_them(batch_words):
    w = WORDS20.split()
    texts = [" ".join(w[:7]), " ".join(w[7:14]), "Intro: " + WORDS20.upper() + "!"] * 3
    index = build_index(texts, batch_words=batch_words)
    assert index.texts == 9 and index.words == 3 * (7 + 7 + 21)
    assert len(index.grams) == 9 and np.all(np.diff(index.grams.astype(np.float64)) != 0)  # sorted, unique
    assert score_item(Item("in", "... " + " ".join(w[2:15]) + " and more words"), index).hits == 1
    # the same 14 words split over two training texts: no 13-gram crosses the boundary
    two = build_index([" ".join(w[:7]), " ".join(w[7:14])], batch_words=batch_words)
    assert score_item(Item("across", " ".join(w[:14])), two).hits == 0


def test_short_items_match_only_whole_and_contiguous():
    probes = [
        words("jumps over the lazy dog"),
        words("fox lazy"),
        words("seven wizards"),
        words("never seen"),
    ]
    index = build_index([WORDS20, "seven", "wizards"], probes=probes)
    found = {i: score_item(Item(i, i), index) for i in ("Jumps over the LAZY dog!", "fox lazy", "never seen")}
    assert found["Jumps over the LAZY dog!"].contaminated and found["Jumps over the LAZY dog!"].short
    assert found["Jumps over the LAZY dog!"].snippet == "jumps over the lazy dog"
    assert not found["fox lazy"].contaminated  # both words are there, not next to each other
    assert not found["never seen"].contaminated
    assert not score_item(Item("x", "seven wizards"), build_index(["seven", "wizards"], probes=probes)).hits


def test_score_share_snippet_and_set_counts():
    w = WORDS20.split()
    index = build_index([" ".join(w[:15])])
    item = Item("half", " ".join(w[:15] + ["unrelated"] * 15))  # 30 words: 18 13-grams, 3 in the corpus
    s = score_item(item, index)
    assert (s.grams, s.hits, s.share) == (18, 3, 3 / 18)
    assert s.snippet == " ".join(w[:15])
    items = [item, Item("clean", " ".join(["other"] * 20), "g2"), Item("empty", "?!", "g2")]
    for decon, dropped in ((False, 0), (True, 1)):
        r = scan_set(items, index, decontaminate=decon)
        assert (r["n"], r["contaminated"], r["dropped"], r["kept"]) == (3, 1, dropped, 3 - dropped)
        assert r["n"] == r["kept"] + r["dropped"] and r["empty_items"] == 1
    assert r["contaminated_ids"] == ["half"] and r["worst"][0]["id"] == "half"
    assert r["share"]["value"] == pytest.approx(1 / 3) and 0 < r["share"]["low"] < 1 / 3 < r["share"]["high"]
    assert r["groups"] == {"": {"n": 1, "contaminated": 1}, "g2": {"n": 2, "contaminated": 0}}


PLANT = "I need a hand with something. {} Please answer briefly."


@pytest.fixture(scope="module")
def planted(tmp_path_factory, shared_data):
    """A real small corpus (the FastChat chats) into which a real DB task question, a real tool-use query and a
    real BFCL question were copied (each inside a longer user turn, so exact-match exclusion misses them),
    built by ``agentflan data`` on the local engine. Returns (config overrides, planted ids, clean ids)."""
    tmp = tmp_path_factory.mktemp("contam")
    out = tmp / "out"
    overrides = [
        f"output_dir={out}",
        "data.engine=local",
        f"data.inputs=[{{path: {tmp}/chats.json, source: sharegpt, kind: general}}]",
        f"data.negatives.tool_pool_files=[{shared_data}/toolbench/G1_query.json]",
        f"eval.data_dir={shared_data}",
        f"eval.bfcl.data_dir={shared_data}/eval/bfcl",
        "eval.bfcl.max_per_category=3",
        "eval.max_tool_use_per_source=3",
        "rollout.agentbench_db.limit=8",
    ]
    cfg = load_config("pipelines/local.yaml", overrides)
    db = load_dbbench(DEFAULT_DATA, 8)
    tool_use = eval_sets.build_tool_use(cfg, set()).samples
    bfcl = list(eval_sets.build_bfcl(cfg).items())
    chats = json.loads((shared_data / "general/fastchat_dummy_conversation.json").read_text())
    for i, text in enumerate((db[0].data["description"], tool_use[0].query, bfcl[0][1][3][-1]["content"])):
        chats.append({"id": f"planted_{i}", "conversations": [
            {"from": "human", "value": PLANT.format(text)}, {"from": "gpt", "value": "Sure, here it is."}
        ]})  # fmt: skip
    (tmp / "chats.json").write_text(json.dumps(chats))
    manifest = run_data(cfg)
    bad = {"agentbench_db": db[0].id, "tool_use": tool_use[0].id, "bfcl": f"bfcl/{bfcl[0][0]}"}
    good = {"agentbench_db": db[1].id, "tool_use": tool_use[1].id, "bfcl": f"bfcl/{bfcl[1][0]}"}
    return overrides, manifest, bad, good


def test_data_stage_reports_planted_items_and_not_clean_ones(planted):
    overrides, manifest, bad, good = planted
    out = Path(overrides[0].split("=", 1)[1])
    report = json.loads((out / "eval/contamination.json").read_text())
    assert json.loads((out / "manifest.json").read_text())["contamination"] == manifest["contamination"]
    for name in bad:
        s = report["sets"][name]
        assert bad[name] in s["contaminated_ids"] and good[name] not in s["contaminated_ids"]
        assert s["dropped"] == 0 and s["kept"] == s["n"]  # report only by default
        assert manifest["contamination"]["sets"][name]["contaminated"] == s["contaminated"] >= 1
    worst = {w["id"]: w for w in report["sets"]["agentbench_db"]["worst"]}
    assert worst[bad["agentbench_db"]]["share"] == 1.0  # every 13-gram of the question is in the corpus
    assert {"agent_h", "tool_use", "bfcl", "agentbench_db"} <= set(report["sets"])
    # the default plays its DB tasks (rollout.envs), so they count as run by eval
    assert report["sets"]["agentbench_db"]["runs"] is True and report["sets"]["tool_use"]["runs"] is True
    md = (out / "eval/contamination.md").read_text()
    assert f"`{bad['tool_use']}`" in md and "| agentbench_db | yes | 8 |" in md
    assert report["corpus"]["words"] > 10_000 and report["rule"]["splits"] == ["train"]


def test_decontaminate_drops_planted_items_before_generation(planted):
    overrides, _, bad, good = planted
    cfg = load_config(
        "pipelines/local.yaml", [*overrides, "eval.decontaminate=true", "rollout.envs=[agentbench_db]"]
    )
    corpus = read_corpus(cfg.output_dir)
    built = eval_sets.build(cfg, training_queries(corpus))
    report, kept = decontaminate.for_eval(cfg, corpus, built)
    s = report["sets"]
    kept_ids = {
        "tool_use": {x.id for x in kept.tool_use.samples},
        "bfcl": {f"bfcl/{q}" for q in kept.bfcl},
        "agentbench_db": {
            t.id for t in decontaminate.rollout_factories(cfg, report)["agentbench_db"].load_tasks()
        },
    }
    for name, ids in kept_ids.items():
        assert bad[name] not in ids and good[name] in ids
        assert (
            s[name]["n"] == len(ids) + s[name]["dropped"]
            and s[name]["dropped"] == s[name]["contaminated"] >= 1
        )
    assert (
        len(kept.agent_h.samples)
        == s["agent_h"]["kept"]
        == len(built.agent_h.samples) - s["agent_h"]["dropped"]
    )
    assert kept.tool_use.manifest["decontaminated"]["dropped"] == s["tool_use"]["dropped"]
    assert kept.tool_use.fingerprint != built.tool_use.fingerprint
    metrics = flat_metrics({"agent_h": {}, "tool_use": {"overall": {}}, "validation_loss": {},
                            "quality": {"degenerate_reply_rate": {"value": 0.0}, "too_weak": False},
                            "contamination": contamination.summary(report)})  # fmt: skip
    assert metrics["contamination.tool_use.share"] == s["tool_use"]["share"]["value"] > 0
    assert metrics["contamination.tool_use.dropped"] == s["tool_use"]["dropped"]
    assert "| tool_use | yes |" in (Path(cfg.output_dir) / "eval/contamination.md").read_text()


def test_general_sets_are_scanned_and_their_contaminated_items_excluded(planted, monkeypatch):
    overrides = planted[0]
    cfg = load_config("pipelines/local.yaml", [*overrides, "eval.decontaminate=true"])
    sets, skipped = eval_sets.general_items(cfg)  # the default's lm-eval tasks, on the shipped samples
    assert not skipped and {s.name: len(s.items) for s in sets} == {
        "general.agentflan_gsm8k": 40,
        "general.agentflan_mmlu_abstract_algebra": 100,
    }
    # a general task whose item is planted in the corpus: found, and excluded for the lm-eval runner
    question = load_dbbench(DEFAULT_DATA, 8)[0].data["description"]  # planted in the corpus
    fake = types.ModuleType("agentflan.eval.general")
    fake.eval_items = lambda c: {"gsm8k": [("7", question), ("8", "Natalia sold clips to 48 of her friends")]}
    monkeypatch.setitem(sys.modules, "agentflan.eval.general", fake)
    corpus = read_corpus(cfg.output_dir)
    report, _ = decontaminate.for_eval(cfg, corpus, eval_sets.build(cfg, training_queries(corpus)))
    assert report["sets"]["general.gsm8k"]["contaminated_ids"] == ["7"]
    assert decontaminate.general_exclude(cfg, report) == {"gsm8k": {"7"}}


def test_bfcl_multi_turn_skipped_without_bfcl_eval(planted, monkeypatch):
    overrides = planted[0]
    cfg = load_config("pipelines/local.yaml", overrides)
    real = eval_sets.importlib.util.find_spec
    monkeypatch.setattr(
        eval_sets.importlib.util, "find_spec", lambda n: None if n == "bfcl_eval" else real(n)
    )
    sets, skipped = eval_sets.rollout_items(cfg)
    assert [s.name for s in sets] == ["agentbench_db"]
    assert skipped == {"bfcl_multi_turn": "skipped: bfcl-eval not installed"}
