"""AgentBench DB (dbbench) on SQLite: ``AgentBenchDb`` is the environment factory (``agentbench_db``).

``env`` plays the two protocols, ``sqlite_guard`` holds one episode's guarded in-memory database,
``mysql_compat`` closes the cheapest MySQL-vs-SQLite gaps, ``scoring`` is AgentBench's checker,
``tasks`` reads dbbench files and ``policies`` are scripted replies for tests.
"""

from agentflan.rollout.envs.agentbench_db.env import DEFAULT_DATA, AgentBenchDb, DbEpisode
from agentflan.rollout.envs.agentbench_db.policies import gold_policy, never_call_policy
from agentflan.rollout.envs.agentbench_db.scoring import category_scores, compare_results
from agentflan.rollout.envs.agentbench_db.tasks import TaskFileError, load_dbbench

__all__ = [
    "DEFAULT_DATA",
    "AgentBenchDb",
    "DbEpisode",
    "TaskFileError",
    "category_scores",
    "compare_results",
    "gold_policy",
    "load_dbbench",
    "never_call_policy",
]
