"""Evaluation: the Agent-H hallucination set and the tool-use set, their parsers and scores (pure functions
over public eval data and replies: ``agent_h``, ``sources``, ``tool_calls``, ``hallucination``), reply quality
and intervals (``quality``, ``stats``), and the harness that generates with a model on Ray Data and writes the
report (``run``).
"""
