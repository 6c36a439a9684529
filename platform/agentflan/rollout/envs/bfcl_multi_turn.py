"""BFCL multi-turn (v4 ``multi_turn_base``, ``miss_func``, ``miss_param``, ``long_context``: 800 entries) as a
rollout environment, executed by BFCL's own backends and judged by BFCL's own checker.

The rules are those of BFCL's function-calling inference loop (``BaseHandler.inference_multi_turn_FC``) and of
its scorer (``eval_runner._evaluate_single_multi_turn_entry`` -> ``multi_turn_checker``):

- no system prompt; the functions are offered as tools; a ``miss_func`` entry's held-out functions are added
  at the turn BFCL names, whose (empty) user turn becomes BFCL's "I have updated some more functions" message;
- a turn ends when a reply has no call, or does not decode into calls (nothing of it is executed);
- every reply whose calls are executed is one step; when a turn's steps pass ``MAXIMUM_STEP_LIMIT`` the model is
  force-quit: the episode ends there, and unless that was the last turn the entry fails (force-terminated);
- the entry passes only if BFCL's checker finds every turn's state and execution results right.

BFCL runs model calls with ``eval()``, so nothing of a reply is pasted into code: a call must name a tool offered
in this turn, its argument keys must be identifiers, and its values are ``repr()``s of JSON values; anything else
is an error observation and is never executed.

BFCL keeps the backend instances in its module's globals under ``<model name>_<entry id>_<class>_instance``.
Each episode takes a model name of its own, so parallel or repeated episodes never share an instance, and drops
its instances (the checker's too) once judged, or when the episode is garbage-collected.
"""

from __future__ import annotations

import copy
import functools
import json
import keyword
import math
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agentflan.calls import ToolCall
from agentflan.eval.bfcl_data import openai_tools
from agentflan.rollout.types import Observation, Reply, Task, Verdict

INSTALL = "pip install --no-deps bfcl-eval==2026.3.23 mpmath"
try:
    import bfcl_eval
    from bfcl_eval.constants.category_mapping import VERSION_PREFIX
    from bfcl_eval.constants.default_prompts import (
        DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC,
        MAXIMUM_STEP_LIMIT,
    )
    from bfcl_eval.constants.executable_backend_config import MULTI_TURN_FUNC_DOC_FILE_MAPPING
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils import execute_multi_turn_func_call
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(f"bfcl_multi_turn needs BFCL's executors ({e}); install them with: {INSTALL}") from None

CATEGORIES: tuple[str, ...] = (
    "multi_turn_base",
    "multi_turn_miss_func",
    "multi_turn_miss_param",
    "multi_turn_long_context",
)
DATA_DIR = Path(bfcl_eval.__file__).parent / "data"


class UnsafeCall(ValueError):
    """A call that is not executed: its name is not offered, a key is not an identifier, a value is not JSON."""


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """BFCL's data files are JSON lines despite their ``.json`` suffix."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing from the bfcl-eval wheel (install: {INSTALL})")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e})") from None
    return rows


@functools.cache
def _class_docs(class_name: str) -> tuple[dict[str, Any], ...]:
    """The function docs of one backend class, as BFCL ships them in ``multi_turn_func_doc/``."""
    return tuple(_read_lines(DATA_DIR / "multi_turn_func_doc" / MULTI_TURN_FUNC_DOC_FILE_MAPPING[class_name]))


def entry_functions(data: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """The functions offered from the first turn, and the held-out ones by turn index (as a string), exactly as
    BFCL's ``populate_test_cases_with_predefined_functions`` splits them."""
    functions = [copy.deepcopy(doc) for name in data["involved_classes"] for doc in _class_docs(name)]
    held_out: dict[str, list[dict[str, Any]]] = {}
    for turn, names in data.get("missed_function", {}).items():
        held_out[turn] = []
        for name in names:
            for i, doc in enumerate(functions):
                if doc["name"] == name:
                    held_out[turn].append(functions.pop(i))
                    break
    return functions, held_out


def _spread(n: int, limit: int | None) -> list[int]:
    """``limit`` indices evenly spread over ``range(n)`` (all of them without a limit): a deterministic sample
    that covers the whole file rather than its first entries."""
    if limit is None or limit >= n:
        return list(range(n))
    return [i * n // limit for i in range(max(limit, 0))]


def _json_value(value: Any, depth: int = 0) -> bool:
    """Exactly the types ``json.loads`` makes (no subclass, whose ``repr`` could be anything), finite floats."""
    if depth > 64:
        return False
    kind = type(value)
    if value is None or kind in (str, bool, int):
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is list:
        return all(_json_value(v, depth + 1) for v in value)
    if kind is dict:
        return all(type(k) is str and _json_value(v, depth + 1) for k, v in value.items())
    return False


def render_call(call: ToolCall, offered: Mapping[str, str]) -> str:
    """The Python call string BFCL executes for one parsed call (as BFCL's ``convert_to_function_call`` writes
    it: ``name(k=repr(v),...)``), or :class:`UnsafeCall`. ``offered`` maps this turn's tool names (underscored)
    back to BFCL's function names; nothing of the reply is pasted in except identifiers checked here."""
    if call.name not in offered:
        raise UnsafeCall(f"{call.name!r} is not one of the tools offered in this turn")
    arguments = call.arguments or {}
    if type(arguments) is not dict:
        raise UnsafeCall("the arguments are not a JSON object")
    for key in arguments:
        if type(key) is not str or not key.isidentifier() or keyword.iskeyword(key):
            raise UnsafeCall(f"argument name {key!r} is not an identifier")
    if not _json_value(arguments):
        raise UnsafeCall("an argument value is not a JSON value")
    return f"{offered[call.name]}({','.join(f'{k}={v!r}' for k, v in arguments.items())})"


def _forget(model_name: str) -> None:
    """Drop every backend instance BFCL made under this episode's model name (its own and the checker's)."""
    names = multi_turn_utils.__dict__
    prefix = f"{model_name}_"
    for name in [n for n in list(names) if n.startswith(prefix)]:
        names.pop(name, None)


def live_instances() -> int:
    """How many of this module's episodes' backend instances BFCL holds now (0 once every episode is judged)."""
    return sum(1 for n in list(multi_turn_utils.__dict__) if n.startswith("agentflan_"))


class BfclEpisode:
    """One BFCL multi-turn entry being played: see the module docstring for the rules."""

    def __init__(self, task: Task, step_limit: int = MAXIMUM_STEP_LIMIT) -> None:
        self.task = task
        self.step_limit = step_limit
        # BFCL's loop asks for one more reply after step_limit call steps; a call there force-quits the model.
        self.max_steps = step_limit + 1
        self._data = task.data
        self._functions, self._held_out = entry_functions(task.data)
        self._tools: list[dict[str, Any]] | None = None
        self._model_name = f"agentflan_{uuid.uuid4().hex}"
        self._cleanup = weakref.finalize(self, _forget, self._model_name)
        self._turn = -1
        self._steps = 0  # call steps in this turn
        # the executed call strings, per turn and step: what BFCL's checker replays
        self._calls: list[list[list[str]]] = []
        self._force_quit = False
        self._judged = False
        category = task.id.rsplit("_", 1)[0]
        self._long_context = "long_context" in category or "composite" in category

    # -- the Environment protocol --------------------------------------------------------------------------

    def reset(self) -> list[dict[str, Any]]:
        """No system prompt: BFCL's function-calling mode offers the functions as tools only."""
        return []

    def tools(self) -> list[dict[str, Any]]:
        return copy.deepcopy(self._current_tools())

    def next_turn(self) -> list[dict[str, Any]] | None:
        if self._force_quit or self._turn + 1 >= len(self._data["question"]):
            return None
        self._turn += 1
        self._steps = 0
        self._calls.append([])
        messages = copy.deepcopy(self._data["question"][self._turn])
        if (added := self._held_out.get(str(self._turn))) is not None:
            self._functions.extend(copy.deepcopy(added))
            self._tools = None
            messages = [{"role": "user", "content": DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC}]
        return messages

    def step(self, reply: Reply) -> Observation:
        if self._turn < 0 or self._judged or self._force_quit:
            raise RuntimeError(f"{self.task.id}: step() outside a turn")
        if not reply.calls:  # BFCL: an empty response ends the turn
            return Observation(turn_over=True)
        unreadable = [c for c in reply.calls if c.error is not None or c.arguments is None]
        if unreadable:  # BFCL: a reply that does not decode ends the turn, and none of its calls runs
            why = "; ".join(c.error or "arguments are not a JSON object" for c in unreadable)
            note = f"Error: not executed, the reply has a call that cannot be read ({why})"
            answered = [c for c in reply.calls if c.error is None and c.arguments is not None]
            return Observation(messages=[_tool_message(c, note) for c in answered], turn_over=True)

        offered = self._offered()
        results: list[str | None] = []
        code: list[str] = []
        for call in reply.calls:
            try:
                code.append(render_call(call, offered))
                results.append(None)
            except UnsafeCall as e:
                results.append(f"Error during execution: {e}")
        executed = iter(self._execute(code) if code else [])
        outputs = [r if r is not None else next(executed) for r in results]
        if code:
            self._calls[-1].append(code)
        self._steps += 1
        messages = [_tool_message(c, out) for c, out in zip(reply.calls, outputs, strict=True)]
        if self._steps > self.step_limit:  # BFCL: "Model has been forced to quit after 20 steps."
            self._force_quit = True
            return Observation(messages=messages, turn_over=True, episode_over=True, reason="step_limit")
        return Observation(messages=messages)

    def step_limit_hit(self) -> None:
        """The loop cut this turn short of finishing it: BFCL force-quits the model there."""
        self._force_quit = True

    def verdict(self) -> Verdict:
        if self._judged:
            raise RuntimeError(f"{self.task.id}: verdict() called twice")
        self._judged = True
        truth = self._data["ground_truth"]
        try:
            if len(self._calls) != len(truth):  # BFCL fails such an entry without checking it
                played = f"{len(self._calls)} of {len(truth)} turns played"
                result = {
                    "valid": False,
                    "error_type": "multi_turn:force_terminated",
                    "error_message": f"Model was force-terminated during inference phase ({played})."
                    if self._force_quit
                    else f"The episode ended early ({played}).",
                }
            else:
                entry = {k: self._data[k] for k in ("id", "initial_config", "involved_classes")}
                result = multi_turn_checker(self._calls, truth, entry, self.task.category, self._model_name)
        finally:
            self._cleanup()
        return Verdict(
            passed=bool(result["valid"]),
            category=self.task.category,
            reason=str(result.get("error_message", "")),
            detail={
                "error_type": result.get("error_type"),
                "turns": len(self._calls),
                "force_quit": self._force_quit,
                "calls": copy.deepcopy(self._calls),
            },
        )

    # -- helpers ----------------------------------------------------------------------------------------------

    def _current_tools(self) -> list[dict[str, Any]]:
        if self._tools is None:
            self._tools = openai_tools(self._functions)
        return self._tools

    def _offered(self) -> dict[str, str]:
        """This turn's tool names (underscored, as offered) -> BFCL's function names."""
        return {
            t["function"]["name"]: d["name"]
            for t, d in zip(self._current_tools(), self._functions, strict=True)
        }

    def _execute(self, code: list[str]) -> list[str]:
        results, _ = execute_multi_turn_func_call(
            code,
            self._data.get("initial_config", {}),
            self._data["involved_classes"],
            self._model_name,
            self.task.id,
            long_context=self._long_context,
            is_evaL_run=False,
        )
        return results


def _tool_message(call: ToolCall, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call.id, "content": content}


class BfclMultiTurn:
    """The environment factory: BFCL v4's multi-turn entries from the installed wheel, one fresh
    :class:`BfclEpisode` per episode. ``limit`` entries per category, evenly spread over each file."""

    name = "bfcl_multi_turn"

    def __init__(
        self,
        categories: Sequence[str] = CATEGORIES,
        limit: int | None = None,
        max_steps: int = MAXIMUM_STEP_LIMIT,
    ) -> None:
        unknown = sorted(set(categories) - set(CATEGORIES))
        if unknown:
            raise ValueError(f"bfcl_multi_turn: unknown categories {unknown}; choose from {list(CATEGORIES)}")
        if limit is not None and limit < 0:
            raise ValueError(f"bfcl_multi_turn: limit must be >= 0, got {limit}")
        if max_steps < 1:
            raise ValueError(f"bfcl_multi_turn: max_steps must be >= 1, got {max_steps}")
        self.categories = tuple(categories)
        self.limit = limit
        self.max_steps = max_steps

    def load_tasks(self) -> list[Task]:
        tasks = []
        for category in self.categories:
            name = f"{VERSION_PREFIX}_{category}.json"
            questions = _read_lines(DATA_DIR / name)
            answers = {
                row["id"]: row["ground_truth"] for row in _read_lines(DATA_DIR / "possible_answer" / name)
            }
            for i in _spread(len(questions), self.limit):
                entry = questions[i]
                if entry["id"] not in answers:
                    raise ValueError(
                        f"{DATA_DIR / 'possible_answer' / name}: no ground truth for {entry['id']}"
                    )
                data = {**entry, "ground_truth": answers[entry["id"]]}
                tasks.append(Task(env=self.name, id=entry["id"], category=category, data=data))
        return tasks

    def make(self, task: Task) -> BfclEpisode:
        return BfclEpisode(task, step_limit=self.max_steps)


def category_scores(verdicts: Iterable[Verdict]) -> dict[str, float]:
    """Accuracy per category and ``overall``, the unweighted mean of the categories (BFCL's multi-turn overall).
    BFCL counts a category it did not run as 0 and shows the overall as N/A; here the mean is over the
    categories present."""
    passed: dict[str, list[bool]] = {}
    for v in verdicts:
        passed.setdefault(v.category, []).append(v.passed)
    scores = {c: sum(p) / len(p) for c, p in sorted(passed.items())}
    if scores:
        scores["overall"] = sum(scores.values()) / len(scores)
    return scores
