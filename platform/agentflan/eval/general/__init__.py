"""General capability (GSM8K, MMLU) through lm-evaluation-harness, offline: ``tasks`` writes our task YAMLs
over local files, ``run`` scores them on an HF model. :func:`eval_items` gives the contamination scan each
test item; :func:`run_general` takes its exclusions. lm-eval (a base dependency) is imported
only when a run scores (the package imports fast without it)."""

from agentflan.eval.general.run import general_model, run_general
from agentflan.eval.general.tasks import GeneralTaskError, eval_items, resolve, write_tasks

__all__ = ["GeneralTaskError", "eval_items", "general_model", "resolve", "run_general", "write_tasks"]
