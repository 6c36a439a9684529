"""The ``rollout`` section: which environments to run, against which backend, and what to keep.

Environments are named, not imported, here: ``agentflan.rollout.envs`` loads one only when a run asks for
it (BFCL needs ``bfcl-eval``, which a corpus-only install lacks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from agentflan.config.backend import BackendConfig
from agentflan.config.base import _Strict

ENV_NAMES = ("bfcl_multi_turn", "agentbench_db")


class BfclMultiTurnConfig(_Strict):
    """BFCL v3/v4 multi-turn entries, run on BFCL's own executable backends and scored by its checker."""

    categories: list[Literal["multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param",
                             "multi_turn_long_context"]] | None = Field(
        None, description="Categories to run (default: all four)."
    )  # fmt: skip
    limit: int | None = Field(None, gt=0, description="Entries per category, evenly spread over it (a deterministic sample; null: all).")
    max_steps: int | None = Field(None, gt=0, description="Replies per user turn (default BFCL's, 20).")


class AgentBenchDbConfig(_Strict):
    """AgentBench DB tasks on SQLite (a held-in Agent-FLAN task)."""

    data: str | None = Field(
        None, description="Tasks in AgentBench's dbbench JSONL format (default: the 60 dev tasks shipped)."
    )
    protocol: Literal["auto", "native", "text"] = Field(
        "auto",
        description="native = execute_sql / commit_final_answer tools; text = AgentBench v0.2's "
        "`Action: Operation` / `Action: Answer` replies; auto = native when rollout.call_format is native.",
    )
    limit: int | None = Field(None, gt=0, description="Tasks to run, taken in turn from each category (null: all).")
    max_rounds: int = Field(15, gt=0, description="Replies per task (AgentBench: 15).")

    @field_validator("data")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        return v if v is None or "://" in v else str(Path(v).expanduser().resolve())


class RolloutConfig(_Strict):
    """Multi-turn rollouts (``agentflan rollout``, and ``agentflan eval`` when ``envs`` is set): the model acts,
    the environment executes its calls, the benchmark's checker scores the final state."""

    envs: list[Literal["bfcl_multi_turn", "agentbench_db"]] = Field(
        default_factory=list, description="Environments to run (none: no rollouts)."
    )
    backend: BackendConfig = Field(
        default_factory=BackendConfig,
        description="The model that acts (hf default: eval.model, else <output_dir>/model).",
    )
    call_format: Literal["auto", "native", "react"] = Field(
        "auto",
        description="How tools are offered and calls read: native = tools= to the chat template or server, "
        "calls from tool_calls or the template's syntax; react = tools in the system prompt, calls as ReAct "
        "text (models trained with data.call_format chat or react, on a plain template); auto = native for "
        "an openai backend (a server takes tools=), else data.call_format (chat is prompted in ReAct).",
    )
    max_live: int = Field(
        16,
        gt=0,
        description="Episodes live at once: every one waiting for the model goes to it together (one batch "
        "for hf, concurrent requests for openai).",
    )
    keep: Literal["none", "passed", "all"] = Field(
        "none",
        description="passed = also write rollout/kept.jsonl: the passing trajectories as OpenAI-messages "
        "JSONL (messages + tools) that data.inputs reads as it is (rejection-sampled synthesis).",
    )
    bfcl_multi_turn: BfclMultiTurnConfig = BfclMultiTurnConfig()
    agentbench_db: AgentBenchDbConfig = AgentBenchDbConfig()
