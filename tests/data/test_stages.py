"""The pure stage functions, without Ray, on real trajectories."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import pytest

from agentflan.config import CapabilityWeights, NegativesConfig
from agentflan.data.align import (
    ELICIT_ARGS,
    ELICIT_FINAL,
    ELICIT_TOOL,
    align_record,
    choose_format,
    make_format_following,
)
from agentflan.data.decompose import decompose_record, weigh_record
from agentflan.data.filtering import filter_record, strip_dfsdt_preface, strip_fewshot
from agentflan.data.mixture import mix_record
from agentflan.data.negatives import NegativeSampler, load_tool_pool_file
from agentflan.data.readers import iter_raw_items, parse_item
from agentflan.data.record import Message, Record
from agentflan.data.responders import TemplateResponder
from agentflan.data.stage import Drop, Quarantine


def load(path, kind="agent", source=None):
    out = []
    for item in iter_raw_items(str(path), path.read_bytes(), 10**7):
        rec, _ = parse_item(item, source or path.stem)
        out.append(
            replace(
                rec, meta={**rec.meta, "kind": kind}, bucket="general" if kind == "general" else rec.source
            )
        )
    return out


def aligned(record: Record, react_share: float = 0.0, seed: int = 0) -> Record:
    """The variant of an aligned trajectory the mixture keeps for this ReAct share."""
    variants = align_record(record, seed)
    variants = variants if isinstance(variants, list) else [variants]
    kept = [k for k in (choose_format(v, seed, react_share) for v in variants) if isinstance(k, Record)]
    assert len(kept) == 1
    return decompose_record(kept[0])


@pytest.fixture(scope="module")
def fireact(shared_data):
    return load(shared_data / "react/fireact_hotpotqa.jsonl", source="react")


@pytest.fixture(scope="module")
def general(shared_data):
    return load(shared_data / "general/fastchat_dummy_conversation.json", kind="general")


# ------------------------------------------------------------------ filter


def test_fewshot_preamble_is_removed(shared_data, fireact):
    prompts = json.loads((shared_data / "react/react_prompts_naive.json").read_text())
    rec = fireact[0]
    question = rec.messages[0].content
    with_shots = replace(
        rec,
        messages=[
            replace(rec.messages[0], content=prompts["webthink_simple6"] + "\nQuestion: " + question),
            *rec.messages[1:],
        ],
    )
    kept = filter_record(with_shots)
    assert kept.messages[0].content == "Question: " + question
    assert kept.meta["fewshot_removed"] is True
    assert strip_fewshot(question) == (question, False)


def test_dfsdt_preface_is_removed(shared_data):
    (rec,) = load(shared_data / "toolbench/answer_G1_10_DFS.json")
    text, hit = strip_dfsdt_preface(rec.messages[0].content)
    assert hit and "give up and restart" not in text.lower() and "give_up_and_restart" not in text
    assert "You have access of the following tools" in text
    assert filter_record(rec).meta["dfsdt_preface_removed"] is True


def test_toolbench_needs_a_final_answer(shared_data):
    recs = load(shared_data / "toolbench/toolllama_G1_demo.json")
    results = [filter_record(r) for r in recs]
    assert [r.reason if isinstance(r, Drop) else "kept" for r in results] == ["no_final_answer"] * 3 + [
        "kept"
    ]
    give_up = replace(
        recs[3],
        messages=[
            *recs[3].messages[:-1],
            Message(
                "assistant",
                'Thought: no\nAction: Finish\nAction Input: {"return_type": "give_up_and_restart"}',
                True,
            ),
        ],
    )
    assert filter_record(give_up) == Drop("gave_up")


def test_action_without_input_is_quarantined(shared_data):
    rec = load(shared_data / "toolbench/toolllama_G1_demo.json")[3]
    msgs = list(rec.messages)
    msgs[2] = replace(msgs[2], content="Thought: quotes\nAction: love_quote_for_olato_quotes")
    with pytest.raises(Quarantine) as e:
        filter_record(replace(rec, messages=msgs))
    assert e.value.code == "action_without_input"


def test_non_react_agent_record_is_dropped():
    rec = Record(
        "x:1", "x", [Message("user", "hi"), Message("assistant", "hello", True)], meta={"kind": "agent"}
    )
    assert filter_record(rec) == Drop("not_react")


# ------------------------------------------------------------------ align


def test_react_step_becomes_chat_turns(fireact):
    rec = fireact[0]  # Thought/search, Observation, Thought/finish, Observation
    chat, react = align_record(rec, seed=0)
    assert (chat.meta["format"], react.meta["format"]) == ("chat", "react") and chat.id == react.id
    # the few-shot preamble that described the tools is gone: a system turn names the tools used again
    assert chat.messages[0].role == "system" and react.messages[0] == chat.messages[0]
    assert json.loads(chat.messages[0].content.split("\n", 1)[1]) == [{"name": "search"}]
    roles_caps = [(m.role, m.capability) for m in chat.messages[1:]]
    assert roles_caps == [
        ("user", "none"),
        ("assistant", "reasoning"),
        ("user", "none"),
        ("assistant", "retrieval"),
        ("user", "none"),
        ("assistant", "understanding"),
        ("tool", "none"),
        ("assistant", "reasoning"),
        ("user", "none"),
        ("assistant", "reasoning"),
    ]
    m = chat.messages[1:]
    assert m[2].content in ELICIT_TOOL and m[4].content in ELICIT_ARGS and m[8].content in ELICIT_FINAL
    assert m[3].content == "search" and m[9].content == "Badr Hari"
    assert m[6].name == "search" and not m[6].content.startswith("Observation")
    assert all(not x.loss for x in m if x.role != "assistant") and all(
        x.loss for x in m if x.role == "assistant"
    )
    assert not any("Action:" in x.content for x in m)


def test_react_share_keeps_about_a_tenth(fireact):
    kept = [aligned(r, react_share=0.1).meta["format"] for r in fireact]
    share = kept.count("react") / len(kept)
    assert 0.06 < share < 0.14
    assert all(aligned(r, react_share=1.0).meta["format"] == "react" for r in fireact[:20])
    react = next(a for r in fireact if (a := aligned(r, 0.1)).meta["format"] == "react")
    assert react.messages == [
        replace(m, capability="instruction_following") if m.role == "assistant" else m for m in react.messages
    ]
    assert {m.capability for m in react.messages if m.role == "assistant"} == {"instruction_following"}
    assert react.messages[0].role == "system" and react.messages[2].content.startswith("Thought:")


def test_format_following_samples(fireact):
    made = [make_format_following(r, seed=0, per_25k=2000) for r in fireact]
    samples = [m for m in made if isinstance(m, Record)]
    assert 20 < len(samples) < 65  # 8% of 500
    formats = Counter(s.meta["output_format"] for s in samples)
    assert set(formats) == {"react", "json"}
    for s in samples:
        reply = s.messages[-1]
        assert reply.capability == "instruction_following" and reply.loss
        if s.meta["output_format"] == "json":
            assert set(json.loads(reply.content)) == {"thought", "name", "arguments"}
        else:
            assert reply.content.startswith("Thought:") and "\nAction: " in reply.content


# ------------------------------------------------------------------ decompose


def test_mask_strategy_follows_the_weights(fireact):
    weights = CapabilityWeights()
    caps: Counter = Counter()
    trained: Counter = Counter()
    for r in fireact:
        out = weigh_record(aligned(r), weights, "mask", seed=0)
        for m in out.messages:
            if m.role == "assistant":
                caps[m.capability] += 1
                trained[m.capability] += m.loss
    assert trained["reasoning"] == caps["reasoning"]
    assert 0.18 < trained["retrieval"] / caps["retrieval"] < 0.32
    assert 0.68 < trained["understanding"] / caps["understanding"] < 0.82


def test_loss_weight_strategy(fireact):
    out = weigh_record(aligned(fireact[0]), CapabilityWeights(), "loss_weight", seed=0)
    w = {m.capability: m.weight for m in out.messages if m.role == "assistant"}
    assert w == {"reasoning": 1.0, "retrieval": 0.25, "understanding": 0.75}
    assert all(m.loss for m in out.messages if m.role == "assistant")


def test_no_trained_turn_is_dropped(fireact):
    zero = CapabilityWeights(reasoning=0, retrieval=0, understanding=0)
    assert weigh_record(aligned(fireact[0]), zero, "mask", 0) == Drop("no_trained_turn")


def test_validation_records_are_not_weighed(fireact):
    """Held-out records keep every trained turn whatever the weights; training records are weighed."""
    zero = CapabilityWeights(reasoning=0, retrieval=0, understanding=0)
    weigh = lambda r: weigh_record(r, zero, "mask", 0)  # noqa: E731
    out = [mix_record(aligned(r), {}, seed=0, validation_fraction=0.5, weigh=weigh) for r in fireact[:40]]
    val = [o[0] for o in out if not isinstance(o, Drop)]
    assert val and all(r.meta["split"] == "validation" for r in val)
    assert all(m.loss for r in val for m in r.messages if m.role == "assistant")
    assert sum(isinstance(o, Drop) for o in out) == 40 - len(val)
    # the split follows split_seed, not seed: a study pins it so no trial trains on held-out records
    pinned = [mix_record(aligned(r), {}, seed=7, validation_fraction=0.5, split_seed=0) for r in fireact[:40]]
    assert [o[0].meta["split"] for o in pinned] == [
        mix_record(aligned(r), {}, seed=0, validation_fraction=0.5)[0].meta["split"] for r in fireact[:40]
    ]


# ------------------------------------------------------------------ negatives


def test_negative_cases(shared_data, fireact, general):
    pool = load_tool_pool_file(str(shared_data / "toolbench/G1_query.json"))
    assert len(pool) == 5 and json.loads(pool[0])[0]["name"].endswith("_for_squake")
    cfg = NegativesConfig(case_c_rate=1.0, case_b_rate=1.0)
    sampler = NegativeSampler(cfg, TemplateResponder(seed=0), pool, seed=0)
    seeds = [aligned(r, 0.1) for r in fireact[:20]] + general[:20]
    out = sampler(seeds)
    made = [r for r in out if isinstance(r, Record)]
    cases = Counter(r.meta["case"] for r in made)
    assert cases == {"c": 20, "b": 20}
    for r in made:
        reply = r.messages[-1]
        assert reply.role == "assistant" and reply.loss and reply.capability == "general"
        assert "Thought:" not in reply.content and "Action:" not in reply.content
        if r.meta["case"] == "b":
            assert r.messages[0].role == "system" and r.tools
        else:
            assert [m.role for m in r.messages] == ["user", "assistant"] and not r.tools
    c = next(r for r in made if r.meta["case"] == "c" and r.meta["seed_id"] == fireact[0].id)
    assert c.messages[0].content == fireact[0].messages[0].content  # the trajectory's own question
    # HotpotQA answers are said back as plain sentences
    assert any("Badr Hari" in r.messages[-1].content for r in made if r.meta["seed_id"] == fireact[0].id)


def test_replies_with_tool_words_are_rejected(general):
    class Hallucinating:
        def respond(self, requests):
            return ["I will use the search tool to find that.", "Thought: search\nAction: search[x]"] * len(
                requests
            )

    sampler = NegativeSampler(NegativesConfig(case_b_rate=1.0), Hallucinating(), ['[{"name": "t"}]'], seed=0)
    out = sampler(general[:2])
    assert out == [Drop("reply_uses_tool_words"), Drop("reply_uses_tool_words")]


# ------------------------------------------------------------------ mixture


def test_mixture_ratios_and_split(general):
    recs = general * 1  # 500 records
    kept = [mix_record(r, {"general": 0.5}, seed=0, validation_fraction=0.1) for r in recs]
    n_train = sum(len(k) for k in kept if not isinstance(k, Drop) and k[0].meta["split"] == "train")
    n_val = sum(1 for k in kept if not isinstance(k, Drop) and k[0].meta["split"] == "validation")
    assert 30 < n_val < 70
    assert 0.4 * (500 - n_val) < n_train < 0.6 * (500 - n_val)
    up = [mix_record(r, {"general": 2.5}, seed=0, validation_fraction=0.0) for r in recs]
    assert 2.3 * 500 < sum(len(k) for k in up) < 2.7 * 500
    first = up[0]
    assert all(c.meta["copy_of"] == first[0].id for c in first[1:])
    # same seed, same draw
    again = [mix_record(r, {"general": 0.5}, seed=0, validation_fraction=0.1) for r in recs]
    assert [isinstance(k, Drop) for k in kept] == [isinstance(k, Drop) for k in again]


def test_mixture_ratio_zero_drops_every_training_record_but_keeps_validation(general):
    out = [mix_record(r, {"general": 0}, seed=0, validation_fraction=0.1) for r in general]
    kept = [k for k in out if not isinstance(k, Drop)]
    assert kept and all(len(k) == 1 and k[0].meta["split"] == "validation" for k in kept)
    assert sum(isinstance(k, Drop) and k.reason == "sampled_out" for k in out) == len(general) - len(kept)


def test_integer_ratios_repeat_exactly(general):
    """An integer ratio is a count, not a probability: every training record appears exactly that often."""
    for ratio in (1, 2, 3):
        out = [mix_record(r, {"general": ratio}, seed=0, validation_fraction=0.0) for r in general[:50]]
        assert all(len(k) == ratio for k in out)
        ids = [c.id for k in out for c in k]
        assert len(set(ids)) == len(ids)  # copies get their own ids


def test_a_general_source_can_be_weighed_among_the_general_chats(general, fireact):
    """`{sharegpt: 2}` doubles that general source; agent buckets and negatives ignore source keys."""
    ratios = {"general": 1, "fastchat_dummy_conversation": 2, "negatives": 1}
    out = [mix_record(r, ratios, seed=0, validation_fraction=0.0) for r in general[:20]]
    assert all(len(k) == 2 for k in out)
    negative = replace(aligned(fireact[0]), bucket="negatives")
    assert len(mix_record(negative, {"react": 3, "negatives": 1}, seed=0, validation_fraction=0.0)) == 1


def test_unknown_ratio_keys_are_refused_before_work(shared_data, tmp_path, capsys):
    from agentflan.cli import main

    code = main(
        [
            "data",
            "pipelines/local.yaml",
            f"output_dir={tmp_path / 'o'}",
            "data.mixture.ratios={sharegtp: 2.0}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "data.mixture.ratios: 'sharegtp' is not a bucket or source name" in err
    assert "buckets: general, negatives, format_following" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
