"""AgentBench DB (dbbench) as a rollout environment: the model answers a question about one table with SQL.

Two protocols, each AgentBench's own:

``native``  AgentBench's function-calling release (main @578c5e9, ``src/server/tasks/dbbench/task.py``): a
            system prompt, the tools ``execute_sql`` and ``commit_final_answer``, results as ``tool`` messages.
            A reply without a call gets AgentBench's "Internal error: No tool calls found ..." user turn and
            uses up a round; committing ends the episode; 15 rounds without a commit end it and fail it.
``text``    AgentBench v0.2 (``src/server/tasks/dbbench/__init__.py`` @v0.2), the protocol of the AgentInstruct
            ``db`` trajectories in our corpus: the prompt as a user turn answered "Ok.", then
            ``Action: Operation`` + a ```sql block, or ``Action: Answer`` + ``Final Answer: [...]``; results
            come back as user turns. A reply that matches neither ends the episode (v0.2's
            AGENT_VALIDATION_FAILED); after 15 operations one more reply may still answer.

INSERT / UPDATE tasks are scored on the table's hash after the episode (v0.2 hashes whatever the episode
ended with; the function-calling release only once an answer is committed); SELECT tasks on the answer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from agentflan.rollout.envs.agentbench_db.scoring import MODIFYING, compare_results, expected_hash, v02_match
from agentflan.rollout.envs.agentbench_db.sqlite_guard import GuardedDatabase
from agentflan.rollout.envs.agentbench_db.tasks import ENV_NAME, load_dbbench, tables_of
from agentflan.rollout.types import Observation, Reply, Task, Verdict

Protocol = Literal["native", "text"]
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "sample_data" / "eval" / "agentbench_db_dev.jsonl"

FC_SYSTEM_PROMPT = """I will ask you a question, then you should help me operate a MySQL database with SQL to answer the question.
You have to explain the problem and your solution to me and write down your thoughts.
After thinking and explaining thoroughly, every round you can choose to operate or to answer with the two specific tools provided.
If you should execute a SQL query, use the `execute_sql` function, Your SQL should be in one line.
Every time you can only execute one SQL statement. I will only execute the statement in the first SQL code block. Every time you write a SQL, I will execute it for you and give you the output.
If you are done operating, and you want to commit your final answer, then use the `commit_final_answer` function.
DO NOT use this tool unless you are sure about your answer. I expect an accurate and correct answer.
Your answer should be accurate. Your answer must be exactly the same as the correct answer.
If the question is about modifying the database, then after done operation, your answer field can be anything.
If your response cannot match any pattern I mentioned earlier, you will be judged as FAIL immediately.
You should always use the tools provided to submit your answer. Be careful not to write it in the content field.
Your input will be raw MySQL response, you have to deal with it by yourself."""  # noqa: E501

# v0.2's big_prompt, without its leading and trailing newline (as the AgentInstruct db rows carry it).
V02_PROMPT = """I will ask you a question, then you should help me operate a MySQL database with SQL to answer the question.
You have to explain the problem and your solution to me and write down your thoughts.
After thinking and explaining thoroughly, every round you can choose to operate or to answer.
your operation should be like this:
Action: Operation
```sql
SELECT * FROM table WHERE condition;
```
You MUST put SQL in markdown format without any other comments. Your SQL should be in one line.
Every time you can only execute one SQL statement. I will only execute the statement in the first SQL code block. Every time you write a SQL, I will execute it for you and give you the output.
If you are done operating, and you want to commit your final answer, then write down:
Action: Answer
Final Answer: ["ANSWER1", "ANSWER2", ...]
DO NOT write this pattern unless you are sure about your answer. I expect an accurate and correct answer.
Your answer should be accurate. Your answer must be exactly the same as the correct answer.
If the question is about modifying the database, then after done operation, your answer field can be anything.
If your response cannot match any pattern I mentioned earlier, you will be judged as FAIL immediately.
Your input will be raw MySQL response, you have to deal with it by yourself."""  # noqa: E501

# configs/tasks/dbbench.yaml of the function-calling release.
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "execute_sql",
            "description": "Executes a given SQL statement on the database and returns the result.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string", "description": "The SQL query to be executed."}},
                "required": ["query"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "commit_final_answer",
            "description": "Commits the final answer after all operations are completed.",
            "parameters": {
                "type": "object",
                "properties": {
                    "answers": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "The list of final answers to commit.",
                    }
                },
                "required": ["answers"],
                "additionalProperties": False,
            },
        },
    },
]
NO_CALL = "Internal error: No tool calls found despite finish reason."
BAD_CALL = "Error: Failed to parse tool call. Tool call format is incorrect."
UNKNOWN_TOOL = "Invalid function call. Please call a tool instead."
COMMITTED = "Final answer committed."  # ours: every tool call gets its tool message (AgentBench sends none)
AFTER_COMMIT = "Not executed: the final answer was already committed."
_ACTION = re.compile(r"Action: (.*?)\n")  # v0.2's regexes, verbatim
_SQL = re.compile(r"```sql\n([\s\S]*?)\n```")
_FINAL = re.compile(r"\nFinal Answer:(.*)")
_NOTHING = object()


def user_prompt(entry: dict[str, Any], protocol: Protocol) -> str:
    if protocol == "text":
        return entry["description"] + "\n" + entry.get("add_description", "")
    text = ""
    if entry.get("evidence"):
        text += "Evidence about the question: " + entry["evidence"] + "\n"
    if entry.get("add_description"):
        text += "Additional table information about the question: " + entry["add_description"] + "\n"
    return text + "Question: " + entry["description"] + "\n"


class DbEpisode:
    """One episode of one dbbench task: its own in-memory database, its own counters."""

    def __init__(self, task: Task, protocol: Protocol, max_rounds: int, timeout_s: float) -> None:
        self.task, self.protocol, self.max_rounds = task, protocol, max_rounds
        self.entry = task.data
        # native: AgentBench's range(max_round) replies; text: max_round operations and one more reply
        self.max_steps = max_rounds if protocol == "native" else max_rounds + 1
        self.db = GuardedDatabase(tables_of(self.entry), timeout_s=timeout_s)
        self.timeout_s = timeout_s
        self.replies = 0
        self.operations = 0
        self.answer: Any = _NOTHING
        self.ending = ""
        self._turn_given = False

    def reset(self) -> list[dict[str, Any]]:
        if self.protocol == "native":
            return [{"role": "system", "content": FC_SYSTEM_PROMPT}]
        return [{"role": "user", "content": V02_PROMPT}, {"role": "assistant", "content": "Ok."}]

    def tools(self) -> list[dict[str, Any]]:
        return TOOLS if self.protocol == "native" else []

    def next_turn(self) -> list[dict[str, Any]] | None:
        if self._turn_given:
            return None
        self._turn_given = True
        return [{"role": "user", "content": user_prompt(self.entry, self.protocol)}]

    def step(self, reply: Reply) -> Observation:
        self.replies += 1
        obs = self._step_native(reply) if self.protocol == "native" else self._step_text(reply)
        if not obs.episode_over and self.replies >= self.max_steps:
            obs.turn_over = obs.episode_over = True
            obs.reason = self.ending = "step_limit"
        return obs

    def step_limit_hit(self) -> None:
        self.ending = self.ending or "step_limit"

    def _end(self, messages: list[dict[str, Any]], ending: str) -> Observation:
        self.ending = ending
        reason = None if ending == "answered" else ending
        return Observation(messages, turn_over=True, episode_over=True, reason=reason)

    def _step_native(self, reply: Reply) -> Observation:
        if not reply.calls:
            return Observation([{"role": "user", "content": NO_CALL}])
        out: list[dict[str, Any]] = []
        for k, call in enumerate(reply.calls):
            if call.error is not None or not isinstance(call.arguments, dict):
                out.append(_tool(call.id, BAD_CALL))
            elif call.name == "execute_sql":
                out.append(_tool(call.id, self._execute_call(call.arguments)))
            elif call.name == "commit_final_answer":
                values = list(call.arguments.values())
                out.append(_tool(call.id, COMMITTED))
                out += [_tool(later.id, AFTER_COMMIT) for later in reply.calls[k + 1 :]]
                if not values:  # AgentBench: IndexError outside its try, the sample ends as TASK_ERROR
                    return self._end(out, "unparseable")
                self.answer = values[0]
                return self._end(out, "answered")
            else:
                out.append(_tool(call.id, UNKNOWN_TOOL))
        return Observation(out)

    def _execute_call(self, arguments: dict[str, Any]) -> str:
        values = list(arguments.values())  # AgentBench takes the first argument, whatever its name
        if not values:
            return "Error executing query: list index out of range"
        if not isinstance(values[0], str):
            return f"Error executing query: the SQL must be a string, not {type(values[0]).__name__}"
        self.operations += 1
        return self.db.execute(values[0]) or "No response from database."

    def _step_text(self, reply: Reply) -> Observation:
        text = reply.content or ""
        action = _ACTION.search(text)
        if self.operations < self.max_rounds and action and action.group(1) == "Operation":
            block = _SQL.search(text)
            if block is None:
                return self._end([], "unparseable")
            self.operations += 1
            result = self.db.execute(block.group(1).strip().replace("\n", " "))
            return Observation([{"role": "user", "content": result}])
        final = _FINAL.search(text)
        if final is not None:
            self.answer = final.group(1)
            return self._end([], "answered")
        return self._end([], "step_limit" if self.operations >= self.max_rounds else "unparseable")

    def verdict(self) -> Verdict:
        try:
            return self._verdict()
        finally:
            self.db.close()

    def _verdict(self) -> Verdict:
        kind = self.entry["type"][0]
        answered = self.answer is not _NOTHING
        detail: dict[str, Any] = {
            "type": kind,
            "protocol": self.protocol,
            "answer": self.answer if answered else None,
            "rounds": self.replies,
            "operations": self.operations,
            "ending": self.ending or "unfinished",
        }
        if kind in MODIFYING:
            want = self._expected_hash()
            got = self.db.tables_hash()
            detail.update(table_hash=got, ground_truth=want)
            if self.protocol == "native" and not answered:
                return self._fail(detail, "no final answer committed; AgentBench hashes the table only then")
            if got is None:
                return self._fail(detail, "the task's table (or one of its columns) is gone")
            passed = compare_results(got, want, kind)
            return Verdict(passed, self.task.category, "" if passed else "table hash differs", detail)
        label = self.entry["label"]
        detail["ground_truth"] = label
        if not answered:
            return self._fail(detail, "no final answer")
        if self.protocol == "text":
            detail["v0.2_match"] = v02_match(self.answer, label)
        passed = compare_results(self.answer, label, kind)
        return Verdict(passed, self.task.category, "" if passed else "answer differs from the label", detail)

    def _fail(self, detail: dict[str, Any], reason: str) -> Verdict:
        return Verdict(False, self.task.category, reason, detail)

    def _expected_hash(self) -> str | None:
        """``answer_md5``, or (AgentBench's function-calling release) the hash after replaying ``sql.query``
        on a fresh copy of the table."""
        if self.entry.get("answer_md5"):
            return expected_hash(self.entry["answer_md5"])
        gold = GuardedDatabase(tables_of(self.entry), timeout_s=self.timeout_s)
        try:
            gold.execute(self.entry["sql"]["query"])
            return gold.tables_hash()
        finally:
            gold.close()


def _tool(call_id: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


class AgentBenchDb:
    """AgentBench DB tasks on SQLite: an EnvironmentFactory (``name = "agentbench_db"``).

    ``data`` is any file in AgentBench's dbbench format (JSONL or a JSON list); by default the 60 dev tasks
    shipped in ``sample_data/eval``. ``limit`` keeps that many, taken in turn from each category.
    ``timeout_s`` caps one statement's run time."""

    name = ENV_NAME

    def __init__(
        self,
        data: str | Path = DEFAULT_DATA,
        protocol: Protocol = "native",
        limit: int | None = None,
        max_rounds: int = 15,
        timeout_s: float = 10.0,
    ) -> None:
        if protocol not in ("native", "text"):
            raise ValueError(f"agentbench_db.protocol must be 'native' or 'text', not {protocol!r}")
        if max_rounds < 1:
            raise ValueError(f"agentbench_db.max_rounds must be at least 1, not {max_rounds}")
        self.data, self.protocol, self.limit = Path(data), protocol, limit
        self.max_rounds, self.timeout_s = max_rounds, timeout_s

    def load_tasks(self) -> list[Task]:
        return load_dbbench(self.data, self.limit)

    def make(self, task: Task) -> DbEpisode:
        return DbEpisode(task, self.protocol, self.max_rounds, self.timeout_s)
