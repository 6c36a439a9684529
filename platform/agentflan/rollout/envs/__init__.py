"""Executable environments: BFCL multi-turn (``bfcl_multi_turn``) and AgentBench DB on SQLite (``agentbench_db``)."""
