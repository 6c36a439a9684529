"""How many AgentBench DB gold answers the SQLite emulation reproduces.

Replays each task's gold SQL on a fresh copy of its table (``replay_gold``) and prints one row per task and
the totals per category. Usage: ``python benchmarks/agentbench_db_gold.py [dbbench.jsonl]``.
"""

from __future__ import annotations

import sys
from collections import Counter

from agentflan.rollout.envs.agentbench_db import DEFAULT_DATA, load_dbbench
from agentflan.rollout.envs.agentbench_db.policies import replay_gold


def main(path: str = str(DEFAULT_DATA)) -> None:
    rows = [replay_gold(task) for task in load_dbbench(path)]
    print("| id | category | type | reproduced | gold SQL result (first 60 chars) |")
    print("|---|---|---|---|---|")
    for r in rows:
        result = str(r["result"])[:60].replace("|", "\\|").replace("\n", " ")
        print(
            f"| {r['id']} | {r['category']} | {r['type']} | {'yes' if r['reproduced'] else 'no'} | {result} |"
        )
    total, good = (
        Counter(r["category"] for r in rows),
        Counter(r["category"] for r in rows if r["reproduced"]),
    )
    print()
    for category in total:
        print(f"{category}: {good[category]}/{total[category]}")
    print(f"all: {sum(good.values())}/{len(rows)}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
