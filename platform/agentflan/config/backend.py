"""One way to name a model to talk to: the negatives responder, eval and rollouts all use :class:`BackendConfig`.

Before, the responder and eval each defined their own model settings and disagreed (eval had no
``base_url``); a model reachable for one was unreachable for the other. Older flat keys
(``max_new_tokens``, ``concurrency``) are still read, into their new places, so older specs keep working.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from agentflan.config.base import _Strict


class SamplingConfig(_Strict):
    """How replies are drawn. The defaults are greedy: the same prompt gets the same reply."""

    temperature: float = Field(0.0, ge=0, description="0 = greedy.")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(256, gt=0)
    seed: int | None = Field(None, description="Sampling seed (openai: sent as `seed`; hf: torch seed).")


# Older flat keys and where they live now.
_MOVED = {"max_new_tokens": ("sampling", "max_new_tokens"), "concurrency": ("max_in_flight",)}


class BackendConfig(_Strict):
    """A model that writes replies: a local HF model on Ray actors, or any OpenAI-compatible server."""

    kind: Literal["hf", "openai", "vllm"] = Field(
        "hf",
        description="hf = a transformers model on long-lived Ray actors (the exported model by default); "
        "openai = an OpenAI-compatible chat-completions server (vLLM, SGLang, TGI, `transformers serve`, a "
        "hosted API); vllm = a vLLM engine (optional, needs vllm installed; untested here).",
    )
    model: str | None = Field(
        None, description="hf/vllm: model path or hub id (default <output_dir>/model where a run has one); "
        "openai: the served model's name."
    )
    base_url: str | None = Field(None, description="openai: base URL, e.g. http://host:8000/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: environment variable holding the API key.")
    num_actors: int = Field(
        1,
        ge=0,
        description="hf/vllm: model actors (each loads the model once and lives for the whole run); "
        "hf 0 = generate in this process, without Ray.",
    )
    use_gpu: bool = Field(False, description="hf/vllm: each actor on `num_gpus` GPUs, in bf16.")
    num_gpus: float = Field(
        1, gt=0, description="GPUs per actor when use_gpu (vllm: the tensor-parallel size)."
    )
    batch_size: int = Field(8, gt=0, description="hf/vllm: prompts generated together on one actor.")
    max_in_flight: int = Field(
        8, gt=0, description="openai: requests in flight at once (a server batches them itself)."
    )
    timeout_s: float = Field(60.0, gt=0, description="openai: seconds one request may take.")
    max_retries: int = Field(
        3,
        ge=0,
        description="openai: retries after a connection error, timeout, 408, 429 or 5xx; a request still "
        "failing is reported as failed (negatives: quarantined; rollouts: backend_error), the rest kept.",
    )
    retry_backoff_s: float = Field(
        1.0,
        gt=0,
        description="openai: the first retry waits about this long, doubling each time, with jitter; a "
        "Retry-After header from the server takes precedence.",
    )
    context_length: int | None = Field(
        None,
        gt=0,
        description="Prompt + reply tokens the model holds (hf default: the model's max_position_embeddings); "
        "a longer conversation ends as context_overflow.",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="vllm: extra vLLM engine arguments (e.g. max_model_len, gpu_memory_utilization).",
    )
    sampling: SamplingConfig = SamplingConfig()

    @model_validator(mode="before")
    @classmethod
    def _older_keys(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        v = dict(v)
        if "num_gpus" in v and "use_gpu" not in v:  # older responder specs: GPUs per actor, 0 = none
            v["use_gpu"] = bool(v["num_gpus"])
            if not v["num_gpus"]:
                del v["num_gpus"]
        for old, path in _MOVED.items():
            if old in v:
                value = v.pop(old)
                if len(path) == 1:
                    v[path[0]] = value
                else:
                    section = dict(v.get(path[0]) or {})
                    section[path[1]] = value
                    v[path[0]] = section
        return v

    @model_validator(mode="after")
    def _needs(self) -> BackendConfig:
        if self.kind == "openai" and not (self.base_url and self.model):
            raise ValueError("kind 'openai' needs `base_url` and `model`")
        return self

    def revalidated(self) -> BackendConfig:
        """This config validated again: a ``model_copy(update=...)`` skips validation, so an older flat key
        given that way (``max_new_tokens``) would otherwise be ignored."""
        extra = {k: v for k, v in vars(self).items() if k not in type(self).model_fields}
        return type(self).model_validate({**self.model_dump(), **extra}) if extra else self

    def backend_fields(self) -> dict[str, Any]:
        """Only the :class:`BackendConfig` fields (a subclass such as the eval section has more)."""
        return {k: getattr(self, k) for k in BackendConfig.model_fields}
