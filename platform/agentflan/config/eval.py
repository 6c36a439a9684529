"""The ``eval`` section: Agent-H, tool use and BFCL single-turn scoring, and the model backend they use."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from agentflan.config.backend import BackendConfig, SamplingConfig
from agentflan.config.base import _Strict


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
    """Agent-H, tool-use and BFCL evaluation (``agentflan eval``), and the model it talks to (the backend keys:
    by default the exported model, <output_dir>/model, on `num_actors` long-lived Ray actors)."""

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

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: str) -> str:
        # Read by Tune trials and Ray workers, which do not run in the driver's working directory.
        return v if "://" in v else str(Path(v).expanduser().resolve())
