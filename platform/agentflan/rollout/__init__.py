"""Rollouts: the model acts over several steps, an environment executes its calls, a checker scores the end.

The episode loop (``engine``) knows nothing of any benchmark; each environment (``envs/``) knows nothing of
models. ``types`` is the contract between them.
"""
