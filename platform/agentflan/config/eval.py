"""The ``eval`` section: Agent-H, tool use, BFCL single-turn scoring and general capability (GSM8K, MMLU), and
the model backend they use."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from agentflan.config.backend import BackendConfig, SamplingConfig
from agentflan.config.base import _Strict

# The 57 MMLU subjects (hendrycks/test, the cais/mmlu configs): agentflan_mmlu_<subject> names one.
MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine",
    "college_physics", "computer_security", "conceptual_physics", "econometrics", "electrical_engineering",
    "elementary_mathematics", "formal_logic", "global_facts", "high_school_biology",
    "high_school_chemistry", "high_school_computer_science", "high_school_european_history",
    "high_school_geography", "high_school_government_and_politics", "high_school_macroeconomics",
    "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law", "jurisprudence",
    "logical_fallacies", "machine_learning", "management", "marketing", "medical_genetics",
    "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition", "philosophy", "prehistory",
    "professional_accounting", "professional_law", "professional_medicine", "professional_psychology",
    "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)
GSM8K_TASK = "agentflan_gsm8k"
MMLU_GROUP = "agentflan_mmlu"  # every subject with a test file under data_dir


def general_task_error(name: str) -> str | None:
    """Why ``name`` is not a general task, or None: the names are ours (agentflan_*), never lm-eval's stock
    ones, which would download their data."""
    if name in (GSM8K_TASK, MMLU_GROUP):
        return None
    if name.startswith(MMLU_GROUP + "_") and name[len(MMLU_GROUP) + 1 :] in MMLU_SUBJECTS:
        return None
    return (
        f"unknown task {name!r} (known: {GSM8K_TASK}, {MMLU_GROUP} = every subject under data_dir, "
        f"{MMLU_GROUP}_<subject> for the 57 MMLU subjects, e.g. {MMLU_GROUP}_abstract_algebra)"
    )


class GeneralConfig(_Strict):
    """General capability through lm-evaluation-harness (agentflan.eval.general): GSM8K and MMLU from local
    files, on the exported model in the driver, after the agent evals. Off while ``tasks`` is empty."""

    tasks: list[str] = Field(
        default_factory=list,
        description="Our lm-eval tasks: agentflan_gsm8k (5-shot from train, exact match on the #### answer), "
        "agentflan_mmlu_<subject> (5-shot from dev, log-likelihood of A-D), agentflan_mmlu (every subject "
        "with a test file under data_dir, plus their size-weighted mean). Empty: no general eval.",
    )
    data_dir: str = Field(
        "platform/agentflan/sample_data/general_eval",
        validate_default=True,
        description="Folder with gsm8k/{test,train}.jsonl and mmlu/jsonl/<subject>/{dev,test}.jsonl (the "
        "shared general_eval layout; the default is the shipped sample: 40 GSM8K test rows, "
        "abstract_algebra).",
    )
    limit: int | None = Field(
        None, gt=0, description="Test items per task: the first N rows of its test file (null: all)."
    )
    num_fewshot: dict[str, int] = Field(
        default_factory=dict,
        description="Few-shot examples per task instead of 5, keyed by task name (agentflan_mmlu: every "
        "subject).",
    )
    max_gen_toks: int | None = Field(
        None, gt=0, description="GSM8K: most tokens generated per answer (null: lm-eval's 256)."
    )
    batch_size: int = Field(8, gt=0, description="lm-eval's batch size (requests scored together).")

    @field_validator("tasks")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for name in v:
            if why := general_task_error(name):
                raise ValueError(why)
        return list(dict.fromkeys(v))

    @field_validator("num_fewshot")
    @classmethod
    def _shots(cls, v: dict[str, int]) -> dict[str, int]:
        for name, k in v.items():
            if why := general_task_error(name):
                raise ValueError(why)
            if k < 0:
                raise ValueError(f"{name}: few-shot count {k} is negative")
        return v

    @model_validator(mode="after")
    def _shots_for_tasks(self) -> GeneralConfig:
        mmlu = any(t.startswith(MMLU_GROUP) for t in self.tasks)
        for name in self.num_fewshot:
            if name not in self.tasks and not (name == MMLU_GROUP and mmlu):
                tasks = ", ".join(self.tasks) or "none"
                raise ValueError(f"num_fewshot: {name!r} is not one of tasks ({tasks})")
        return self

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: str) -> str:
        # Read by Tune trials, which do not run in the driver's working directory.
        return str(Path(v).expanduser().resolve())


class BfclConfig(_Strict):
    """BFCL categories scored in ``agentflan eval`` (agentflan.eval.bfcl): the model answers each question with
    its functions offered, and its calls are checked by BFCL's AST rules."""

    data_dir: str | None = Field(
        None, description="Folder with BFCL_v4_<category>.json and possible_answer/ (null: no BFCL scoring)."
    )
    categories: list[str] | None = Field(
        None, description="Categories to score (default: every scorable one)."
    )
    max_per_category: int | None = Field(None, gt=0, description="Questions per category (the first N).")

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        return v if v is None or "://" in v else str(Path(v).expanduser().resolve())


class EvalConfig(BackendConfig):
    """Agent-H, tool-use, BFCL and general-capability evaluation (``agentflan eval``), and the model it talks
    to (the backend keys: by default the exported model, <output_dir>/model, on `num_actors` long-lived Ray
    actors)."""

    data_dir: str = Field(
        "platform/agentflan/sample_data",
        description="Folder with general/ and eval/ files (the shared-data layout) the eval sets are built from.",
    )
    output_format: Literal["react", "json", "native"] = Field(
        "react",
        description="How prompts that offer tools ask for a call: react/json = tools and that format's "
        "instruction in the system prompt; native = the tools go to the chat template (tools=) and calls are "
        "read from its syntax (<tool_call> tags, Llama-3.1 JSON): for a model trained with call_format native.",
    )
    max_per_case: dict[str, int] = Field(
        default_factory=dict, description="Cap per Agent-H case (a, b, c, d)."
    )
    max_hotpot: int = Field(200, ge=0, description="HotpotQA questions added to case (c).")
    max_tool_use_per_source: int | None = Field(None, gt=0)
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=128)
    bfcl: BfclConfig = BfclConfig()
    decontaminate: bool = Field(
        False,
        description="Drop every eval item that shares a 13-gram with the training corpus (or, under 13 words, "
        "occurs in it whole) before generating: Agent-H, tool use, BFCL, rollout tasks, general tasks. false: "
        "only report the overlap (<output_dir>/eval/contamination.md, written by agentflan data and eval).",
    )
    general: GeneralConfig = Field(
        default_factory=GeneralConfig,
        description="GSM8K / MMLU through lm-evaluation-harness, after the agent evals (off while tasks is "
        "empty).",
    )

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: str) -> str:
        # Read by Tune trials and Ray workers, which do not run in the driver's working directory.
        return v if "://" in v else str(Path(v).expanduser().resolve())
