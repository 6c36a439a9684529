"""The one typed config: a YAML spec plus ``key=value`` overrides, validated before any work starts.

Every spec in ``pipelines/`` validates against :class:`Config`; an unknown key or a bad value fails with
the dotted key path (``data.capability_weights.retrieval: Input should be greater than or equal to 0``),
never later from deep inside a stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from agentflan.config.backend import BackendConfig, SamplingConfig
from agentflan.config.base import ConfigError, _Strict
from agentflan.config.data import (
    CapabilityWeights,
    DataConfig,
    InputSpec,
    MixtureConfig,
    NegativesConfig,
    ResponderConfig,
)
from agentflan.config.eval import BfclConfig, EvalConfig
from agentflan.config.rollout import AgentBenchDbConfig, BfclMultiTurnConfig, RolloutConfig
from agentflan.config.train import DeepSpeedSpec, LoraConfig, ModelConfig, ScalingSpec, TrainConfig
from agentflan.yaml_io import load_mapping

__all__ = [
    "AgentBenchDbConfig",
    "BackendConfig",
    "BfclConfig",
    "BfclMultiTurnConfig",
    "CapabilityWeights",
    "Config",
    "ConfigError",
    "DataConfig",
    "DeepSpeedSpec",
    "EvalConfig",
    "InputSpec",
    "LoraConfig",
    "MixtureConfig",
    "MlflowConfig",
    "ModelConfig",
    "NegativesConfig",
    "ResponderConfig",
    "RolloutConfig",
    "SamplingConfig",
    "ScalingSpec",
    "TrainConfig",
    "TuneConfig",
    "format_errors",
    "load_config",
    "parse_overrides",
    "set_dotted",
]


class TuneConfig(_Strict):
    """How ``agentflan tune`` runs trials; the search space itself is a file in ``tune_spaces/``."""

    max_concurrent_trials: int = Field(1, gt=0)
    trial_resources: dict[str, float] = Field(
        default_factory=lambda: {"CPU": 1.0},
        description="Resources of a trial's driver, which re-mixes, packs, starts the trainer and evaluates. "
        "A trial of one CPU worker trains in the driver, which then also holds that worker's resources.",
    )
    num_workers: int | None = Field(
        None,
        gt=0,
        description="Training workers per trial (default train.scaling). One CPU worker: the trial trains in its "
        "own process, without a Ray Train worker group.",
    )
    resources_per_worker: dict[str, float] | None = Field(
        None, description="Per training worker in a trial (default train.scaling.resources_per_worker)."
    )
    evaluate: bool = Field(True, description="Run Agent-H, tool use and held-out loss after each trial.")
    storage_path: str | None = Field(
        None, description="Ray Tune storage; default <output_dir>/tune/<study>/ray."
    )


class MlflowConfig(_Strict):
    tracking_uri: str | None = Field(None, description="Default: sqlite:///<output_dir>/mlflow.db")
    experiment: str = "agentflan"


class Config(_Strict):
    name: str = "agentflan"
    seed: int = 0
    output_dir: str = Field(
        "outputs/run", description="Where every stage writes; a relative path is made absolute at load time."
    )
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    rollout: RolloutConfig = RolloutConfig()
    tune: TuneConfig = TuneConfig()
    mlflow: MlflowConfig = MlflowConfig()

    @model_validator(mode="after")
    def _native_needs_tool_template(self) -> Config:
        if self.data.call_format == "native" and self.train.model.template in (
            "chatml",
            "llama2",
            "agentflan",
        ):
            raise ValueError(
                f"train.model.template: {self.train.model.template} does not write native tool calls "
                "(data.call_format native); use hermes, llama31 or model"
            )
        return self

    @field_validator("output_dir")
    @classmethod
    def _absolute(cls, v: str) -> str:
        # Ray workers do not share the driver's working directory (Ray Train runs them elsewhere).
        return v if "://" in v else str(Path(v).expanduser().resolve())


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key}: {p!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """Parse ``key=value`` strings; values are YAML (``[a,b]``, ``0.5``, ``true``, ``{x: 1}``)."""
    parsed = []
    for o in overrides:
        key, sep, raw = o.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {o!r} is not key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({e})") from None
        parsed.append((key.strip(), value))
    return parsed


def format_errors(err: ValidationError, where: str, what: str = "config") -> str:
    """A pydantic error as one line per dotted key (shared with search spaces)."""
    lines = [f"invalid {what} ({where}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def load_config(spec: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML spec, apply overrides, validate. Raises :class:`ConfigError` with the key path."""
    tree: dict[str, Any] = {}
    where = "overrides"
    if spec is not None:
        where = str(spec)
        tree = load_mapping(spec, "spec file", ConfigError)
    for key, value in parse_overrides(overrides or []):
        set_dotted(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_errors(e, where)) from None
