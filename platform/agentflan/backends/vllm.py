"""``kind: vllm``: an in-process vLLM engine (``pip install vllm``). Optional and untested here: no GPU and
no vllm on the machines this project is tested on. The engine batches everything it is given itself."""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from agentflan.backends import BackendFailure, Request, Result
from agentflan.backends.replies import reply_from_text
from agentflan.config import BackendConfig
from agentflan.rollout import dialect


class VLLMBackend:
    max_batches = 1

    def __init__(self, cfg: BackendConfig, model_path: str, syntax: str | None) -> None:
        from vllm import LLM, SamplingParams

        kwargs = {"tensor_parallel_size": max(1, int(cfg.num_gpus)), **cfg.engine_kwargs}
        if cfg.context_length:
            kwargs.setdefault("max_model_len", cfg.context_length)
        self.llm = LLM(model=model_path, **kwargs)
        s = cfg.sampling
        self.params = SamplingParams(
            temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_new_tokens, seed=s.seed
        )
        self.syntax = syntax
        self.max_new_tokens = cfg.sampling.max_new_tokens
        self.context_length = self.llm.llm_engine.model_config.max_model_len
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="vllm")

    def _run(self, requests: list[Request]) -> list[Result]:
        prepared = [dialect.request(self.syntax, m, t) for m, t in requests]  # text-call models: ReAct
        requests = [(m, t) for m, t, _ in prepared]
        out: list[Result] = [BackendFailure("backend_error", "not generated")] * len(requests)
        groups: dict[str, list[int]] = {}  # LLM.chat takes one tools list per call
        for i, (_, tools) in enumerate(requests):
            groups.setdefault(json.dumps(tools, sort_keys=True), []).append(i)
        for key, idx in groups.items():
            outputs = self.llm.chat(
                [list(requests[i][0]) for i in idx], self.params, tools=json.loads(key), use_tqdm=False
            )
            for i, o in zip(idx, outputs, strict=True):
                c = o.outputs[0]
                finish = "length" if c.finish_reason == "length" else "stop"
                out[i] = reply_from_text(
                    c.text, prepared[i][2], finish, len(o.prompt_token_ids), len(c.token_ids)
                )
        return out

    def submit(self, requests: Sequence[Request]) -> list[Future[Result]]:
        futures: list[Future[Result]] = [Future() for _ in requests]

        def settle(f: Future) -> None:
            try:
                results = f.result()
            except Exception as e:
                results = [BackendFailure("backend_error", f"{type(e).__name__}: {e}")] * len(futures)
            for target, r in zip(futures, results, strict=True):
                target.set_result(r)

        self._thread.submit(self._run, list(requests)).add_done_callback(settle)
        return futures

    def close(self) -> None:
        self._thread.shutdown(wait=False)
