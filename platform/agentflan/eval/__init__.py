"""Evaluation: the Agent-H hallucination set and the tool-use set, their parsers and their scores.

Pure functions over public eval data and model replies: no model, no Ray. A harness (later) sends the
prompts of an :class:`~agentflan.eval.sources.EvalSet` to a model and hands the replies to
:func:`~agentflan.eval.hallucination.score_agent_h` and :func:`~agentflan.eval.tool_calls.score_tool_use`.
"""
