"""A search space file (``tune_spaces/*.yaml``): what a study varies, how it searches, what it optimises.

Everything is checked before a trial starts (:func:`load_space`): an unknown parameter, an empty grid or
range, or a value the pipeline config would refuse fails with the space's key path, e.g.
``params.retrieval.uniform: empty range [0.5, 0.5]``.

Parameters are config keys that a trial can change by re-mixing the decomposed corpus (pass B) or in
training: short names for the Agent-FLAN knobs (:data:`ALIASES`) or dotted keys matching
:data:`TUNABLE`. A domain is one of ``grid``, ``choice`` (lists), ``uniform``, ``loguniform`` (``[lo,
hi]`` floats) or ``randint`` (``[lo, hi]`` ints, both inclusive). A value may be relative to the spec,
``x0.5`` meaning half the spec's value. A list item that is a mapping is an *arm*: a bundle of parameter
values with a ``label`` (how the ablation specs compare named settings)::

    params:
      arm:
        grid:
          - {label: "w/o negatives", negative_share: 0}
          - {label: "w/ negatives", negative_share: 1}
      seed: {grid: [0, 1, 2]}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentflan.config import Config, ConfigError, format_errors, set_dotted
from agentflan.yaml_io import load_mapping


class SpaceError(ValueError):
    """A search space that does not validate; the message names the key."""


ALIASES = {
    "reasoning": "data.capability_weights.reasoning",
    "retrieval": "data.capability_weights.retrieval",
    "understanding": "data.capability_weights.understanding",
    "instruction_following": "data.capability_weights.instruction_following",
    "general_weight": "data.capability_weights.general",
    "negative_share": "data.mixture.ratios.negatives",
    "react_share": "data.react_share",
    "general_share": "data.mixture.ratios.general",
    "lr": "train.lr",
    "seed": "seed",
}
# Keys a trial can change without re-running pass A (see agentflan.data.pipeline.remix) or in training.
TUNABLE = re.compile(
    r"^(seed|data\.capability_weights\.\w+|data\.weight_strategy|data\.react_share"
    r"|data\.negatives\.(enabled|case_b_rate|case_c_rate)|data\.mixture\.ratios\.[\w.-]+"
    r"|train\.(lr|warmup_ratio|weight_decay|epochs|max_steps|max_grad_norm))$"
)
_RELATIVE = re.compile(r"^x(\d+(?:\.\d*)?|\.\d+)$")
# Metrics a trial reports: training's, then the evaluation report's.
METRIC = re.compile(
    r"^(val_loss|loss|step|trial_seconds|val_loss\.\w+|quality\.degenerate_reply_rate"
    r"|(agent_h\.(h_react|h_general|h_score|missed_call_rate|combined|plain_call_rate|irrelevance_rate)"
    r"|bfcl\.\w+|rollout\.\w+\.\w+|general\.agentflan_\w+"
    r"|tool_use\.(retrieval|understanding_exact|understanding_f1|instruction_following))(\.ci_(low|high))?"
    r"|tool_use\.n)$"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Domain(_Strict):
    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @property
    def kind(self) -> str:
        kinds = [k for k in type(self).model_fields if getattr(self, k) is not None]
        return kinds[0] if len(kinds) == 1 else ""

    @property
    def values(self) -> list[Any]:
        """The values to check against the config: the list, or the range's ends."""
        return list(getattr(self, self.kind))


class Objective(_Strict):
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"


class SearchSpec(_Strict):
    kind: Literal["grid", "random", "optuna"] = "grid"
    num_samples: int = Field(1, gt=0, description="grid: repeats of the grid; random/optuna: trials.")
    seed: int | None = None


class SchedulerSpec(_Strict):
    """ASHA early stopping on the validation loss, measured every ``eval_every`` optimizer steps."""

    kind: Literal["none", "asha"] = "none"
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    eval_every: int = Field(5, gt=0)
    grace_period: int = Field(10, gt=0, description="Steps before a trial may be stopped.")
    reduction_factor: float = Field(2.0, gt=1)
    max_t: int | None = Field(None, gt=0, description="Steps (default: the trials' step count).")


class ReportSpec(_Strict):
    """The study's table in the paper's form: one row per arm (all params but seed), mean and spread."""

    title: str = ""
    columns: dict[str, str] = Field(default_factory=dict, description="metric -> column heading")


class SearchSpace(_Strict):
    name: str = Field(pattern=r"^[\w.-]+$")
    description: str = ""
    objective: Objective = Objective()
    search: SearchSpec = SearchSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    params: dict[str, Domain] = Field(min_length=1)
    report: ReportSpec = ReportSpec()


def config_key(param: str) -> str | None:
    key = ALIASES.get(param, param)
    return key if TUNABLE.match(key) else None


def resolve(values: dict[str, Any], spec: Config) -> dict[str, Any]:
    """A trial's parameter values as config overrides (dotted key -> value); arms are expanded, ``xF``
    values multiplied by the spec's value."""
    flat: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, dict):  # an arm
            flat.update(resolve({k: v for k, v in value.items() if k != "label"}, spec))
            continue
        key = config_key(name)
        assert key is not None, name  # validated by load_space
        flat[key] = _relative(value, key, spec)
    return flat


def _relative(value: Any, key: str, spec: Config) -> Any:
    if isinstance(value, str) and (m := _RELATIVE.match(value)):
        node: Any = spec.model_dump()
        for part in key.split("."):
            node = node.get(part, 1.0) if isinstance(node, dict) else 1.0
        return float(node) * float(m.group(1))
    return value


def apply(spec: Config, overrides: dict[str, Any]) -> Config:
    """The spec with dotted overrides, validated (a ConfigError names the key)."""
    tree = spec.model_dump(mode="json")
    for key, value in overrides.items():
        set_dotted(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_errors(e, "overrides")) from None


def arm_label(value: Any) -> str:
    return str(value.get("label", value)) if isinstance(value, dict) else str(value)


def _check_general(space: SearchSpace, spec: Config) -> None:
    """A ``general.<task>`` metric names a task the spec scores (``eval.general.tasks``; ``agentflan_mmlu``
    also brings each subject found under its data_dir): otherwise no trial would ever report it."""
    from agentflan.config.eval import MMLU_GROUP

    tasks = spec.eval.general.tasks
    metrics = [("objective.metric", space.objective.metric), *(("report.columns", c) for c in space.report.columns)]
    for where, metric in metrics:
        if not metric.startswith("general."):
            continue
        task = metric.split(".")[1]
        if task not in tasks and not (MMLU_GROUP in tasks and task.startswith(MMLU_GROUP + "_")):
            scored = ", ".join(tasks) or "none"
            raise SpaceError(f"{where}: {metric} needs {task} in eval.general.tasks (the spec scores: {scored})")


def _check(space: SearchSpace, spec: Config) -> None:
    for name, domain in space.params.items():
        where = f"params.{name}"
        if not domain.kind:
            raise SpaceError(f"{where}: give exactly one of grid, choice, uniform, loguniform, randint")
        where = f"{where}.{domain.kind}"
        if domain.kind in ("grid", "choice"):
            if not domain.values:
                raise SpaceError(f"{where}: empty list")
            labels = [arm_label(v) for v in domain.values]
            if len(set(labels)) != len(labels):
                raise SpaceError(f"{where}: values repeat ({labels})")
        else:
            lo, hi = domain.values
            if not lo < hi:
                raise SpaceError(f"{where}: empty range [{lo}, {hi}]")
            if domain.kind == "loguniform" and lo <= 0:
                raise SpaceError(f"{where}: loguniform needs lo > 0, got {lo}")
            if space.search.kind == "grid":
                raise SpaceError(f"{where}: search.kind grid takes grid or choice params, not {domain.kind}")
        for i, value in enumerate(domain.values):
            items = (
                {k: v for k, v in value.items() if k != "label"} if isinstance(value, dict) else {name: value}
            )
            for inner, v in items.items():
                key = f"{where}[{i}].{inner}" if isinstance(value, dict) else where
                if isinstance(v, dict) or config_key(inner) is None:
                    raise SpaceError(
                        f"{key}: unknown parameter {inner!r}; tunable: {', '.join(ALIASES)} or dotted keys "
                        f"matching {TUNABLE.pattern}"
                    )
                try:
                    apply(spec, resolve({inner: v}, spec))
                except ConfigError as e:
                    raise SpaceError(f"{key}: value {v!r} is refused by the config: {e}") from None
    for where, metric in (
        ("objective.metric", space.objective.metric),
        ("scheduler.metric", space.scheduler.metric),
    ):
        if not METRIC.match(metric):
            raise SpaceError(f"{where}: unknown metric {metric!r}")
    for metric in space.report.columns:
        if not METRIC.match(metric):
            raise SpaceError(f"report.columns.{metric}: unknown metric")
    needs_eval = [
        m
        for m in [space.objective.metric, *space.report.columns]
        if m.split(".")[0] in ("agent_h", "tool_use", "rollout", "general")
    ]
    if needs_eval and not spec.tune.evaluate:
        raise SpaceError(f"objective/report use {needs_eval[0]}, but tune.evaluate is false")
    _check_general(space, spec)
    if space.scheduler.kind == "asha" and not space.scheduler.metric.startswith(("val_loss", "loss")):
        raise SpaceError("scheduler.metric: ASHA acts on training-time metrics (loss, val_loss)")


def load_space(path: str | Path, spec: Config) -> SearchSpace:
    """Read and validate a search space against the pipeline spec it will run on."""
    tree = load_mapping(path, "search space", SpaceError)
    try:
        space = SearchSpace.model_validate(tree)
    except ValidationError as e:
        raise SpaceError(format_errors(e, str(path), "search space")) from None
    try:
        _check(space, spec)
    except SpaceError as e:
        raise SpaceError(f"invalid search space ({path}): {e}") from None
    return space


def tune_domains(space: SearchSpace) -> dict[str, Any]:
    """The Ray Tune ``param_space``. Arms travel as their labels (searchers such as Optuna need plain
    values); :func:`trial_values` maps them back."""
    from ray import tune

    out: dict[str, Any] = {}
    for name, d in space.params.items():
        values = [
            arm_label(v) if isinstance(v, dict) else v
            for v in (d.values if d.kind in ("grid", "choice") else [])
        ]
        if d.kind == "grid" and space.search.kind == "grid":
            out[name] = tune.grid_search(values)
        elif d.kind in ("grid", "choice"):
            out[name] = tune.choice(values)
        elif d.kind == "uniform":
            out[name] = tune.uniform(*d.values)
        elif d.kind == "loguniform":
            out[name] = tune.loguniform(*d.values)
        else:
            lo, hi = d.values
            out[name] = tune.randint(lo, hi + 1)  # inclusive, as the space says
    return out


def trial_values(space: SearchSpace, config: dict[str, Any]) -> dict[str, Any]:
    """A trial's Tune config with arm labels replaced by their bundles."""
    out = {}
    for name, value in config.items():
        d = space.params.get(name)
        arms = {
            arm_label(v): v
            for v in (d.values if d and d.kind in ("grid", "choice") else [])
            if isinstance(v, dict)
        }
        out[name] = arms.get(value, value) if isinstance(value, str) else value
    return out
