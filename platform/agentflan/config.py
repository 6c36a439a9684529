"""The one typed config: a YAML spec plus ``key=value`` overrides, validated before any work starts.

Every spec in ``pipelines/`` validates against :class:`Config`; an unknown key or a bad value fails with
the dotted key path (``data.capability_weights.retrieval: Input should be greater than or equal to 0``),
never later from deep inside a stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agentflan.yaml_io import load_mapping


class ConfigError(ValueError):
    """A spec or override that does not validate. The message names the file and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


class ResponderConfig(_Strict):
    """Who writes the plain replies of negative samples."""

    kind: Literal["template", "hf", "openai", "vllm"] = Field(
        "template",
        description="template = offline rules over the corpus; hf = local transformers model; "
        "openai = an OpenAI-compatible chat endpoint; vllm = a vLLM batch job through ray.data.llm "
        "before pass B (needs vllm on the workers; untested here).",
    )
    model: str | None = Field(None, description="HF model path/id, or the endpoint's model name.")
    base_url: str | None = Field(None, description="OpenAI-compatible base URL, e.g. http://host:8000/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key.")
    max_new_tokens: int = Field(256, gt=0)
    batch_size: int = Field(8, gt=0, description="hf, vllm: prompts generated together.")
    timeout_s: float = Field(60.0, gt=0, description="openai: seconds one request may take.")
    concurrency: int = Field(
        8, gt=0, description="openai: requests in flight at once per worker (a server batches them)."
    )
    max_retries: int = Field(
        3,
        ge=0,
        description="openai: retries of a request after a connection error, timeout, 408, 429 or 5xx; "
        "a request still failing is quarantined (responder_failed), the rest of its batch kept.",
    )
    retry_backoff_s: float = Field(
        1.0,
        gt=0,
        description="openai: the first retry waits about this long, doubling each time, with jitter; "
        "a Retry-After header from the server takes precedence.",
    )

    num_actors: int = Field(
        1,
        gt=0,
        description="hf, vllm: Ray Data actors (vllm: engine replicas) generating at once, each loading "
        "the model once.",
    )
    num_gpus: float = Field(
        0,
        ge=0,
        description="hf: GPUs per actor (1 puts each on a GPU, in bf16); vllm: the tensor-parallel size "
        "of each replica.",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="vllm: extra vLLM engine arguments (e.g. max_model_len, gpu_memory_utilization).",
    )

    @model_validator(mode="after")
    def _needs(self) -> ResponderConfig:
        if self.kind in ("hf", "openai", "vllm") and not self.model:
            raise ValueError(f"responder kind {self.kind!r} needs `model`")
        if self.kind == "openai" and not self.base_url:
            raise ValueError("responder kind 'openai' needs `base_url`")
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
    inputs: list[InputSpec] = Field(min_length=1)
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


class LoraConfig(_Strict):
    """LoRA through peft (``pip install agentflan[lora]``); the paper did a full fine-tune."""

    enabled: bool = False
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


class ModelConfig(_Strict):
    """The model to fine-tune. Without ``name_or_path``, a tiny Llama is initialised from its config and a
    byte-level BPE tokenizer is trained on the corpus: the embedded default, which needs no download."""

    name_or_path: str | None = Field(None, description="HF hub id or local path of the model to fine-tune.")
    tokenizer: str | None = Field(None, description="Tokenizer path/id; defaults to name_or_path.")
    template: Literal["chatml", "llama2", "agentflan", "hermes", "llama31", "model"] = Field(
        "chatml",
        description="Chat template: a named text one (chatml, llama2, agentflan), a named tool-calling one "
        "(hermes, llama31: render tools= and native tool_calls), or `model` for the tokenizer's own "
        "chat_template.",
    )
    vocab_size: int = Field(2048, ge=300, description="Vocabulary of a tokenizer trained on the corpus.")
    hidden_size: int = Field(64, gt=0, description="Tiny model width (no name_or_path).")
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(4, gt=0)
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto = bf16 on GPU, fp32 on CPU."
    )
    attn_implementation: Literal[
        "auto", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3", "eager"
    ] = Field(
        "auto",
        description="Attention kernel. auto = the fastest available on the worker's device (see "
        "agentflan.train.model.resolve_attn_implementation); flash_attention_* need their package installed.",
    )
    compile: bool = Field(
        False,
        description="torch.compile each decoder layer (regional compilation: one graph reused by every layer). "
        "ZeRO stage <= 2.",
    )
    gradient_checkpointing: Literal["none", "full", "alternate"] = Field(
        "none",
        description="Recompute activations in the backward pass: none; full = every decoder layer; "
        "alternate = every other layer (half the memory saving for half the recompute).",
    )
    lora: LoraConfig = LoraConfig()

    @field_validator("gradient_checkpointing", mode="before")
    @classmethod
    def _checkpointing_from_bool(cls, v: Any) -> Any:
        # Older specs said `gradient_checkpointing: true`.
        return {True: "full", False: "none"}.get(v, v) if isinstance(v, bool) else v


class ScalingSpec(_Strict):
    """Ray Train's ScalingConfig: one GPU per worker when use_gpu."""

    num_workers: int = Field(2, gt=0)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = Field(default_factory=lambda: {"CPU": 1.0})


class DeepSpeedSpec(_Strict):
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Merged last into the generated DeepSpeed config (nested keys)."
    )


class TrainConfig(_Strict):
    model: ModelConfig = ModelConfig()
    seq_len: int = Field(1024, gt=8)
    packing: bool = True
    pack_block_samples: int = Field(
        4096,
        gt=0,
        description="Samples packed together: a split is cut, in a seeded order, into blocks of this many; each "
        "block is packed (best-fit-decreasing) and written as one shard by one worker. "
        "train/data_stats.json compares the blocks' real-token share with one packing of the whole split.",
    )
    tokenize_actors: int = Field(
        2,
        gt=0,
        description="Ray Data actors that tokenize the corpus under data.engine=ray (each loads the tokenizer "
        "once; fewer start where CPUs are short).",
    )
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    lr: float = Field(2e-5, gt=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    loss: Literal["auto", "full", "chunked", "liger"] = Field(
        "auto",
        description="How the weighted token loss meets the LM head. full = logits of the whole micro-batch "
        "at once; chunked = chunks of `loss_chunk_tokens` tokens, recomputed in backward, so full fp32 logits "
        "never exist; liger = Liger's fused linear cross-entropy (GPU, `pip install liger-kernel`, ZeRO <= 2). "
        "auto = liger where installed on a GPU, else chunked on GPU and full on CPU.",
    )
    loss_chunk_tokens: int = Field(2048, gt=0, description="Tokens per chunk of the chunked loss.")
    global_batch_size: int = Field(32, gt=0, description="Rows (packed sequences) per optimizer step.")
    micro_batch_size: int = Field(1, gt=0, description="Rows per worker per forward pass.")
    scaling: ScalingSpec = ScalingSpec()
    deepspeed: DeepSpeedSpec = DeepSpeedSpec()
    eval_every: int | None = Field(
        None,
        gt=0,
        description="Optimizer steps between validation-loss measurements (always measured at the end); "
        "ASHA early stopping in a Tune study acts on them.",
    )
    checkpoint_every: int = Field(50, gt=0, description="Optimizer steps between checkpoints.")
    save_final: bool = Field(
        True,
        description="Checkpoint the last step and export the model to <output_dir>/model; off for a "
        "throughput probe (benchmarks/gpu_train.py).",
    )
    keep_checkpoints: int = Field(2, gt=0)
    max_failures: int = Field(
        0, ge=-1, description="Worker-group restarts from the last checkpoint (-1: unlimited)."
    )
    storage_path: str | None = Field(
        None, description="Ray Train storage (checkpoints); default output_dir/ray."
    )

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainConfig:
        per_step = self.micro_batch_size * self.scaling.num_workers
        if self.global_batch_size % per_step:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not a multiple of micro_batch_size x "
                f"num_workers = {per_step}"
            )
        return self

    @model_validator(mode="after")
    def _zero3_limits(self) -> TrainConfig:
        if self.deepspeed.zero_stage == 3:
            if self.model.compile:
                raise ValueError("train.model.compile: torch.compile is supported with ZeRO stage <= 2")
            if self.loss == "liger":
                raise ValueError(
                    "train.loss: liger reads the LM head weight directly, which ZeRO-3 partitions; "
                    "use chunked"
                )
        return self

    @property
    def grad_accum_steps(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.scaling.num_workers)


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


class EvalConfig(_Strict):
    """Agent-H, tool-use and BFCL evaluation (``agentflan eval``)."""

    model: str | None = Field(None, description="Model to evaluate; default <output_dir>/model.")
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
    max_new_tokens: int = Field(128, gt=0)
    batch_size: int = Field(8, gt=0)
    num_actors: int = Field(1, gt=0, description="Ray Data generation actors (one GPU each when use_gpu).")
    use_gpu: bool = False
    bfcl: BfclConfig = BfclConfig()

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: str) -> str:
        # Read by Tune trials and Ray workers, which do not run in the driver's working directory.
        return v if "://" in v else str(Path(v).expanduser().resolve())


class TuneConfig(_Strict):
    """How ``agentflan tune`` runs trials; the search space itself is a file in ``tune_spaces/``."""

    max_concurrent_trials: int = Field(1, gt=0)
    trial_resources: dict[str, float] = Field(
        default_factory=lambda: {"CPU": 1.0},
        description="Resources of a trial's driver, which re-mixes, packs, starts the trainer and evaluates.",
    )
    num_workers: int | None = Field(
        None, gt=0, description="Training workers per trial (default train.scaling)."
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
    data: DataConfig
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
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
