"""The ``data`` section: inputs, the Agent-FLAN decomposition knobs, negatives and the mixture."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from agentflan.config.backend import BackendConfig
from agentflan.config.base import _Strict


class InputSpec(_Strict):
    """One input: a file, a directory, a glob, or (where a network exists) a hub dataset id."""

    path: str
    source: str | None = Field(None, description="Source name; defaults to the file's stem.")
    kind: Literal["auto", "agent", "general"] = Field(
        "auto", description="agent = tool-use trajectories, general = plain chat; auto decides per record."
    )
    split: str = Field("train", description="Split to read when `path` is a hub dataset id.")


class CapabilityWeights(_Strict):
    """Per-capability weights (paper's final choice: reasoning 1, retrieval 0.25, understanding 0.75)."""

    reasoning: float = Field(1.0, ge=0)
    retrieval: float = Field(0.25, ge=0)
    understanding: float = Field(0.75, ge=0)
    instruction_following: float = Field(1.0, ge=0)
    general: float = Field(1.0, ge=0)

    def for_capability(self, capability: str) -> float:
        return float(getattr(self, capability, 1.0))


class ResponderConfig(BackendConfig):
    """Who writes the plain replies of negative samples: the offline templates, or a model backend."""

    kind: Literal["template", "hf", "openai", "vllm"] = Field(  # type: ignore[assignment]
        "template",
        description="template = offline rules over the corpus; hf = local transformers model; "
        "openai = an OpenAI-compatible chat endpoint; vllm = a vLLM batch job through ray.data.llm "
        "before pass B (needs vllm on the workers; untested here).",
    )

    @model_validator(mode="after")
    def _needs_model(self) -> ResponderConfig:
        if self.kind in ("hf", "vllm") and not self.model:
            raise ValueError(f"responder kind {self.kind!r} needs `model`")
        return self


class NegativesConfig(_Strict):
    """Agent-FLAN's negative samples; the right answer to both cases is a plain reply."""

    enabled: bool = True
    case_c_rate: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Share of agent trajectories whose query becomes a case (c) negative: "
        "no tools offered, a query that looks like it needs one.",
    )
    case_b_rate: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of general chats that become a case (b) negative: tools offered "
        "that the query does not need.",
    )
    max_query_chars: int = Field(2000, gt=0)
    tool_pool_size: int = Field(
        256, gt=0, description="Distinct tool lists kept from the corpus for case (b)."
    )
    tool_pool_files: list[str] = Field(
        default_factory=list,
        description="Extra tool lists for case (b): ToolBench query files (items with api_list) or JSON lists of tool lists.",
    )
    responder: ResponderConfig = ResponderConfig()


class MixtureConfig(_Strict):
    """Sampling ratio per bucket: 1 keeps every record, 0.5 half of them, 2.5 each record 2 or 3 times, 0 none.

    Keys are buckets: an agent source's name, ``general``, ``negatives`` and ``format_following``; or the
    source name of a general input, to weigh it among the general chats. Any other key is refused before
    the job starts (agentflan.preflight). Capability balance is set by ``data.capability_weights``.
    """

    ratios: dict[str, float] = Field(default_factory=dict)

    @field_validator("ratios")
    @classmethod
    def _non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        for k, r in v.items():
            if r < 0:
                raise ValueError(f"ratio for bucket {k!r} is {r}, must be >= 0")
        return v


class DataConfig(_Strict):
    inputs: list[InputSpec] = Field(
        default_factory=list,
        description="Raw trajectories and chats; needed by `data`, `train`, `run` and `tune` (a spec that "
        "only evaluates or runs rollouts has none).",
    )
    engine: Literal["ray", "local"] = Field(
        "ray", description="ray = Ray Data (parallel, streaming); local = the same stages in one process."
    )
    num_cpus: int | None = Field(None, gt=0, description="CPUs for a Ray instance started here.")
    batch_size: int = Field(256, gt=0)
    split_bytes: int = Field(
        8 << 20,
        gt=0,
        description="Input files larger than this are read by several tasks (JSONL line ranges, JSON array "
        "elements, parquet row groups), one per this many bytes.",
    )
    max_record_bytes: int = Field(1_000_000, gt=0, description="Larger raw records are quarantined.")
    call_format: Literal["chat", "react", "native"] = Field(
        "chat",
        description="How tool calls are written: chat = the paper's natural multi-turn chat (thought, tool and "
        "arguments as elicited turns); react = ReAct text; native = OpenAI tool_calls on assistant messages and "
        "tool messages, rendered by the model's own tool-calling template.",
    )
    native_thought: Literal["content", "reasoning"] = Field(
        "content",
        description="Under call_format native: a step's thought becomes the message's content or its "
        "reasoning field.",
    )
    react_share: float = Field(0.1, ge=0, le=1, description="Trajectories kept in the original ReAct format.")
    format_following_per_25k: float = Field(
        2000, ge=0, description="Format-following samples per 25,000 trajectories (paper: ~2,000)."
    )
    capability_weights: CapabilityWeights = CapabilityWeights()
    weight_strategy: Literal["mask", "loss_weight"] = Field(
        "mask",
        description="mask = switch a turn's loss off with probability 1-w; loss_weight = scale its loss by w.",
    )
    negatives: NegativesConfig = NegativesConfig()
    mixture: MixtureConfig = MixtureConfig()
    validation_fraction: float = Field(0.02, ge=0, lt=1)
    split_seed: int | None = Field(
        None,
        description="Seed of the train/validation split (default: `seed`). A Tune study pins it, so that "
        "trials with other seeds never train on the held-out records.",
    )
    heldout_from: str | None = Field(
        None,
        description="Output dir of a corpus whose validation split this run is scored on (validation loss "
        "in training and eval) instead of its own; a Tune study points every trial at its base corpus.",
    )

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs_as_specs(cls, v: Any) -> Any:
        if isinstance(v, (str, dict)):
            v = [v]
        return [{"path": x} if isinstance(x, str) else x for x in v] if isinstance(v, list) else v
