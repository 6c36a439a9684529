"""The ``train`` section: the model, sequence packing, DeepSpeed and Ray Train scaling."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from agentflan.config.base import _Strict


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
