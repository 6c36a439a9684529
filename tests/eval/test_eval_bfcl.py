"""BFCL scoring on the real BFCL rows in tests/data/real/eval/bfcl, with replies written by hand: the ground
truth in every format we read, and one reply of each failure kind with the reason it fails.

(Agreement with BFCL's own checker was measured outside the suite, on every single-turn Python category of the
bfcl-eval release: docs/evaluation.md.)"""

from __future__ import annotations

import json

import pytest

from agentflan.cli import main
from agentflan.eval import bfcl, bfcl_data


@pytest.fixture(scope="module")
def data(shared_data):
    return shared_data / "eval" / "bfcl"


@pytest.fixture(scope="module")
def rows(data):
    out = {}
    for category in bfcl_data.categories(data):
        questions, answers = bfcl_data.load_category(data, category)
        for q in questions:
            out[q["id"]] = (category, q, answers.get(q["id"]))
    return out


def judge(rows, qid, reply):
    category, question, answers = rows[qid]
    return bfcl.judge(category, question, answers, reply)


def native(*calls):
    return [
        {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
        for i, (name, args) in enumerate(calls)
    ]


@pytest.mark.parametrize(
    ("qid", "reply"),
    [
        ("simple_python_0", "[calculate_triangle_area(base=10, height=5)]"),  # optional unit left out
        ("simple_python_0", "calculate_triangle_area(base=10, height=5, unit='units')"),  # no brackets
        ("simple_python_0", "```\n[calculate_triangle_area(base=10, height=5)]\n```"),
        ("simple_python_0", native(("calculate_triangle_area", {"base": 10, "height": 5}))),
        ("simple_python_0", '{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}'),
        ("simple_python_0", '<tool_call>\n{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}\n</tool_call>'),
        ("simple_python_0", 'Thought: use it.\nAction: calculate_triangle_area\nAction Input: {"base": 10, "height": 5}'),
        ("simple_python_1", "[math.factorial(number=5)]"),
        ("simple_python_1", native(("math_factorial", {"number": 5}))),  # native names carry no dots
        ("parallel_0", "[spotify.play(artist='Taylor Swift', duration=20), spotify.play(artist='Maroon 5', duration=15)]"),
        ("parallel_0", "[spotify.play(artist='Maroon 5', duration=15), spotify.play(artist='Taylor Swift', duration=20)]"),
        ("parallel_0", "[spotify.play(artist='taylor swift', duration=20), spotify.play(artist='Maroon-5', duration=15)]"),
        ("multiple_8", "[realestate.find_properties(location='San Diego', propertyType='villa', bedrooms=3, "
                       "budget={'min': 300000, 'max': 400000})]"),
        ("irrelevance_0", "I can't compute a triangle's area with a body-mass-index tool."),
        ("irrelevance_0", "[]"),
        ("irrelevance_0", []),
    ],
)  # fmt: skip
def test_right_calls_pass(rows, qid, reply):
    verdict = judge(rows, qid, reply)
    assert verdict.valid, verdict.error


@pytest.mark.parametrize(
    ("qid", "reply", "error_type", "message"),
    [
        ("simple_python_0", "[calculate_area(base=10, height=5)]", "wrong_func_name", "not found"),
        ("simple_python_0", "[calculate_triangle_area(base=10)]", "missing_required", "'height'"),
        ("simple_python_0", "[calculate_triangle_area(base=10, height=5, color='red')]", "unexpected_param",
         "'color'"),
        ("simple_python_0", "[calculate_triangle_area(base='10', height=5)]", "type_error", "expected integer"),
        ("simple_python_0", "[calculate_triangle_area(base=10.0, height=5)]", "type_error", "got float"),
        ("simple_python_0", "[calculate_triangle_area(base=12, height=5)]", "value_error", "'base': 12"),
        ("simple_python_0", "[calculate_triangle_area(base=10, height=5, unit='cm')]", "value_error:string",
         "'unit'"),
        ("simple_python_1", native(("math.factorial", {"number": 5})), "wrong_func_name", "not found"),
        ("parallel_0", "[spotify.play(artist='Taylor Swift', duration=20)]", "wrong_count", "1, expected 2"),
        ("parallel_0", "[spotify.play(artist='Taylor Swift', duration=20), spotify.play(artist='Taylor Swift', "
                       "duration=20)]", "parallel_no_match", "expected call 1"),
        ("simple_python_0", "The area is 25 square units.", "decoder_failed", "Failed to decode"),
        ("simple_python_0", "[calculate_triangle_area(base=10, height=5), calculate_triangle_area(base=1, "
                            "height=1)]", "wrong_count", "2, expected 1"),
        ("irrelevance_0", "[determine_body_mass_index(weight=70.0, height=1.75)]", "irrelevance:made_a_call",
         "none is wanted"),
        ("irrelevance_0", native(("determine_body_mass_index", {"weight": 70.0, "height": 1.75})),
         "irrelevance:made_a_call", "none is wanted"),
    ],
)  # fmt: skip
def test_each_failure_kind_fails_with_its_reason(rows, qid, reply, error_type, message):
    verdict = judge(rows, qid, reply)
    assert not verdict.valid and verdict.error_type == error_type and message in verdict.error, verdict


def test_types_follow_bfcl(rows):
    """An int is a float, a float is not an int; a tuple is a list only where the parameter says tuple; array
    items are checked one level deep."""
    _, question, answers = rows["parallel_multiple_0"]
    fn, answer = question["function"][0], answers[0]  # sum_of_multiples(lower, upper: int, multiples: [int])
    ok = {"lower_limit": 1, "upper_limit": 1000, "multiples": [3, 5]}
    assert bfcl.check_call(fn, {fn["name"]: ok}, answer, False)["valid"]
    floats = bfcl.check_call(fn, {fn["name"]: {**ok, "multiples": [3.0, 5.0]}}, answer, False)
    assert not floats["valid"] and floats["error_type"] == "type_error:nested"
    as_tuple = bfcl.check_call(fn, {fn["name"]: {**ok, "multiples": (3, 5)}}, answer, False)
    assert not as_tuple["valid"] and as_tuple["error_type"] == "type_error"  # an array is not a tuple
    tuple_fn = {
        "name": "g",
        "parameters": {"properties": {"p": {"type": "tuple", "items": {"type": "integer"}}}},
    }
    assert bfcl.check_call(tuple_fn, {"g": {"p": (1, 2)}}, {"g": {"p": [[1, 2]]}}, False)["valid"]
    float_fn = {"name": "f", "parameters": {"properties": {"x": {"type": "float"}}, "required": ["x"]}}
    assert bfcl.check_call(float_fn, {"f": {"x": 2}}, {"f": {"x": [2.0]}}, False)["valid"]


def test_a_native_prompt_offers_openai_tools_and_expects_their_names(rows):
    """Under ``eval.output_format: native`` the functions go to the chat template as OpenAI tools (JSON Schema
    types, dots as underscores); the model's ``<tool_call>`` text is then judged against those names."""
    _, question, _ = rows["simple_python_1"]  # math.factorial(number: integer)
    (tool,) = bfcl_data.openai_tools(question["function"])
    assert tool["type"] == "function" and tool["function"]["name"] == "math_factorial"
    assert tool["function"]["parameters"]["type"] == "object"  # BFCL's "dict"
    floats = bfcl_data.openai_tools([{"name": "f", "parameters": {"type": "dict", "properties": {
        "x": {"type": "float"}, "t": {"type": "tuple", "items": {"type": "float"}}}}}])  # fmt: skip
    props = floats[0]["function"]["parameters"]["properties"]
    assert props == {"x": {"type": "number"}, "t": {"type": "array", "items": {"type": "number"}}}

    category, question, answers = rows["simple_python_1"]
    tagged = '<tool_call>\n{"name": "math_factorial", "arguments": {"number": 5}}\n</tool_call>'
    assert bfcl.judge(category, question, answers, tagged, native_prompt=True).valid
    assert not bfcl.judge(category, question, answers, tagged).valid  # a text prompt showed math.factorial
    dotted = '<tool_call>\n{"name": "math.factorial", "arguments": {"number": 5}}\n</tool_call>'
    assert bfcl.judge(category, question, answers, dotted).valid


def test_summary_has_n_and_intervals(rows):
    verdicts = [judge(rows, "simple_python_0", "[calculate_triangle_area(base=10, height=5)]"),
                judge(rows, "simple_python_1", "[math.factorial(number=6)]")]  # fmt: skip
    summary = bfcl.summarize(verdicts)
    assert summary["simple_python"]["n"] == 2 and summary["simple_python"]["value"] == 0.5
    assert summary["simple_python"]["low"] < 0.5 < summary["simple_python"]["high"]


def test_cli_scores_a_replies_file(data, tmp_path, capsys):
    replies = tmp_path / "model.jsonl"
    lines = [
        {"id": "simple_python_0", "reply": "[calculate_triangle_area(base=10, height=5)]"},
        {"id": "simple_python_1", "reply": native(("math_factorial", {"number": 5}))},
        {"id": "simple_python_2", "reply": "I don't know."},
        {"id": "irrelevance_0", "reply": "No tool fits."},
        {"id": "not_a_question", "reply": "x"},
    ]
    replies.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert main(["bfcl", str(data), str(replies)]) == 0
    out, err = capsys.readouterr()
    assert "simple_python" in out and "0.667" in out and "irrelevance" in out
    assert "1 replies matched no question" in err
    verdicts = [json.loads(x) for x in (tmp_path / "model.verdicts.jsonl").read_text().splitlines()]
    assert {v["id"]: v["valid"] for v in verdicts} == {
        "simple_python_0": True, "simple_python_1": True, "simple_python_2": False, "irrelevance_0": True,
    }  # fmt: skip
    assert all(set(v) == {"id", "category", "valid", "error"} for v in verdicts)


def test_cli_names_a_bad_line(data, tmp_path, capsys):
    replies = tmp_path / "bad.jsonl"
    replies.write_text('{"id": "simple_python_0", "reply": "[f()]"}\n{"id": 3\n')
    assert main(["bfcl", str(data), str(replies)]) == 2
    assert f"{replies}:2: not JSON" in capsys.readouterr().err


def test_cli_refuses_two_replies_for_one_id(data, tmp_path, capsys):
    """Scoring one of them silently would report an accuracy no one asked for: the file is refused, in one line
    naming both lines, and no verdicts are written."""
    replies = tmp_path / "twice.jsonl"
    replies.write_text(
        '{"id": "simple_python_0", "reply": "[f()]"}\n{"id": "simple_python_1", "reply": "x"}\n'
        '{"id": "simple_python_0", "reply": "[calculate_triangle_area(base=10, height=5)]"}\n'
    )
    assert main(["bfcl", str(data), str(replies)]) == 2
    out, err = capsys.readouterr()
    assert err == f"agentflan: {replies}:3: a second reply for id 'simple_python_0' (the first is on line 1)\n"
    assert out == "" and not (tmp_path / "twice.verdicts.jsonl").exists()


def test_a_tune_study_may_optimise_a_bfcl_category(tmp_path):
    from agentflan.config import load_config
    from agentflan.tune.space import load_space

    space = tmp_path / "bfcl.yaml"
    space.write_text(
        "name: bfcl_objective\nobjective: {metric: bfcl.irrelevance, mode: max}\nsearch: {kind: grid}\n"
        "params:\n  retrieval: {grid: [0.25, 0.5]}\n"
    )
    assert load_space(space, load_config("pipelines/local.yaml")).objective.metric == "bfcl.irrelevance"
