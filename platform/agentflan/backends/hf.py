"""``kind: hf``: a transformers model on long-lived Ray actors (or in this process with ``num_actors: 0``).

Each actor loads the model once, on ``num_gpus`` GPUs with ``use_gpu``, and lives until :meth:`close`: an
eval or a rollout run makes one backend and sends it every prompt, so the model is never reloaded per call
or per turn. A submitted batch is split over the actors, contiguously, and each actor generates its share
in batches of ``batch_size`` with the KV cache on (:class:`agentflan.generation.ChatGenerator`). Greedy
replies do not depend on how prompts were batched.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from agentflan.backends import BackendFailure, Request, Result
from agentflan.backends.replies import reply_from_text
from agentflan.config import BackendConfig
from agentflan.rollout import dialect


class ModelWorker:
    """The model and its generator; a Ray actor (``ray.remote`` applied at run time) or an object here."""

    def __init__(self, model_path: str, cfg: dict[str, Any]) -> None:
        from agentflan.generation import ChatGenerator

        s = cfg["sampling"]
        if s.get("seed") is not None:
            import torch

            torch.manual_seed(s["seed"])
        self.gen = ChatGenerator(
            model_path,
            s["max_new_tokens"],
            cfg["batch_size"],
            "cuda" if cfg["use_gpu"] else "cpu",
            temperature=s["temperature"],
            top_p=s["top_p"],
            context_length=cfg["context_length"],
        )

    def context_length(self) -> int | None:
        return self.gen.context_length

    def generate(self, requests: Sequence[Request]) -> list[tuple[str, int, int, str]]:
        out = self.gen.generate_full([m for m, _ in requests], [t for _, t in requests])
        return [(g.text, g.prompt_tokens, g.completion_tokens, g.finish_reason) for g in out]


def _check_gpus(cfg: BackendConfig, cluster: dict[str, float]) -> None:
    """A local Ray instance without the GPUs the actors ask for would leave them pending forever: say so now.
    An instance we joined (``RAY_ADDRESS``) may be an autoscaling cluster that adds GPU nodes, so it is left."""
    import os

    need = cfg.num_gpus * cfg.num_actors if cfg.use_gpu else 0.0
    if need and not os.environ.get("RAY_ADDRESS") and cluster.get("GPU", 0.0) + 1e-9 < need:
        raise RuntimeError(
            f"use_gpu=true: {cfg.num_actors} model actor(s) need {need:g} GPU(s), this Ray instance has "
            f"{cluster.get('GPU', 0.0):g}; set use_gpu=false (eval.use_gpu, rollout.backend.use_gpu) or run "
            "where the GPUs are"
        )


class HFBackend:
    max_batches = 1  # requests that arrive while a batch generates wait and go together in the next

    def __init__(self, cfg: BackendConfig, model_path: str, syntax: str | None) -> None:
        self.syntax = syntax
        self.max_new_tokens = cfg.sampling.max_new_tokens
        args = (model_path, cfg.model_dump(mode="json"))
        self._local: ModelWorker | None = None
        self._actors: list[Any] = []
        if cfg.num_actors == 0:
            self._local = ModelWorker(*args)
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="hf-generate")
            self.context_length = self._local.context_length()
            return
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from agentflan.ray_utils import ensure_ray

        ensure_ray()
        _check_gpus(cfg, ray.cluster_resources())
        # Outside any placement group the caller runs in: a Tune trial captures its children into its own
        # one-CPU bundle, which its training workers have just given back but which cannot hold this actor.
        remote = ray.remote(
            num_cpus=1,
            num_gpus=cfg.num_gpus if cfg.use_gpu else 0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None),
        )(ModelWorker)
        self._actors = [remote.remote(*args) for _ in range(cfg.num_actors)]
        self.context_length = ray.get(self._actors[0].context_length.remote())  # waits for the load

    @staticmethod
    def _results(raw: list[tuple[str, int, int, str]], syntaxes: list[str | None]) -> list[Result]:
        out: list[Result] = []
        for (text, n_prompt, n_reply, finish), syntax in zip(raw, syntaxes, strict=True):
            if finish == "context_overflow":
                out.append(
                    BackendFailure("context_overflow", f"prompt of {n_prompt} tokens fills the context")
                )
            else:
                out.append(reply_from_text(text, syntax, finish, n_prompt, n_reply))
        return out

    def submit(self, requests: Sequence[Request]) -> list[Future[Result]]:
        prepared = [dialect.request(self.syntax, m, t) for m, t in requests]  # text-call models: ReAct
        sent = [(m, t) for m, t, _ in prepared]
        syntaxes = [s for _, _, s in prepared]
        futures: list[Future[Result]] = [Future() for _ in sent]
        if not sent:
            return futures
        if self._local is not None:
            chunk = self._thread.submit(self._local.generate, sent)
            chunk.add_done_callback(lambda f: self._settle(f, futures, syntaxes))
            return futures
        n = min(len(self._actors), len(sent))
        bounds = [len(sent) * i // n for i in range(n + 1)]
        for actor, lo, hi in zip(self._actors, bounds, bounds[1:], strict=False):
            ref = actor.generate.remote(sent[lo:hi])
            ref.future().add_done_callback(
                lambda f, lo=lo, hi=hi: self._settle(f, futures[lo:hi], syntaxes[lo:hi])
            )
        return futures

    def _settle(self, chunk: Future, part: list[Future[Result]], syntaxes: list[str | None]) -> None:
        try:
            results = self._results(chunk.result(), syntaxes)
        except Exception as e:  # the actor died or raised: these requests fail, the run goes on
            results = [BackendFailure("backend_error", f"{type(e).__name__}: {e}")] * len(part)
        for f, r in zip(part, results, strict=True):
            f.set_result(r)

    def close(self) -> None:
        if self._local is not None:
            self._thread.shutdown(wait=False)
        if self._actors:
            import ray

            for a in self._actors:
                ray.kill(a)
            self._actors = []
