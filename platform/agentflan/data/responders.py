"""Who writes the plain replies of negative samples.

The paper had GPT-4 answer its negative queries. Here the default works offline and reproducibly
(:class:`TemplateResponder`: replies drawn from the corpus where it has one, templates where it does not);
users with a model plug in :class:`HFResponder` (a local transformers model) or :class:`OpenAIResponder`
(any OpenAI-compatible chat endpoint, e.g. a vLLM server). All take a batch, so a model is called once per
batch. ``kind: vllm`` is a batch job before pass B instead (:mod:`agentflan.data.batch_negatives`), whose
replies pass B reads from the cache (:class:`Unanswered` behind it).

A request a model could not answer (an endpoint that kept failing) comes back as a
:class:`ResponderFailure`, not an exception: one bad request must not cost the rest of its batch, and the
sampler quarantines that record alone. Model-written replies are costly and every Tune trial re-mixes the
same decomposed corpus, so :class:`CachedResponder` keeps them on disk, keyed by what they depend on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from agentflan.config import ResponderConfig
from agentflan.data.record import Message
from agentflan.data.stage import rng

if TYPE_CHECKING:
    from agentflan.generation import ChatGenerator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NegativeRequest:
    id: str
    case: Literal["b", "c"]
    messages: list[Message]  # the prompt: optional system message with tools, then the user query
    reference: str | None = None  # a reply the corpus already holds for this query, if any


@dataclass(frozen=True)
class ResponderFailure:
    """A request left unanswered after the responder's retries; ``reason`` says why (goes to the quarantine)."""

    reason: str


Reply = str | ResponderFailure


class Responder(Protocol):
    def respond(self, requests: list[NegativeRequest]) -> list[Reply]:
        """One reply per request, in order: the text, or a :class:`ResponderFailure` for that request alone."""
        ...


# Plain replies for a query that looks like it needs a tool when none is offered (case c). They say
# what the assistant can do without announcing a tool call.
_NO_TOOL_REPLIES = (
    "I don't have access to live data or external services in this conversation, so I can't look that up "
    "directly. If you share the details you have, I'm happy to help you work through it.",
    "That needs information I can't fetch from here. If you paste the relevant data, I can help analyse it "
    "or explain how to get the answer yourself.",
    "I can't check that for you right now because no external services are available in this chat. I can "
    "still explain the steps to find it, or help with any information you already have.",
    "I'm not able to retrieve that from here. Could you share more context? With it I can give you a useful "
    "answer or point you to where to find it.",
)
_ANSWER_REPLIES = ("The answer is {a}.", "{a}.", "It is {a}.", "Based on what I know, the answer is {a}.")


class TemplateResponder:
    """Offline and deterministic: corpus replies for case (b), answers or templates for case (c)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def respond(self, requests: list[NegativeRequest]) -> list[Reply]:
        replies: list[Reply] = []
        for req in requests:
            r = rng(self.seed, "responder", req.id)
            if req.case == "b" and req.reference:
                replies.append(req.reference)
            elif req.reference:
                replies.append(r.choice(_ANSWER_REPLIES).format(a=req.reference.strip().rstrip(".")))
            else:
                replies.append(r.choice(_NO_TOOL_REPLIES))
        return replies


class HFResponder:
    """A local transformers causal LM, greedy, in batches of ``batch_size`` (see
    :class:`agentflan.generation.ChatGenerator`).

    The model loads on the first request, not on construction: behind a :class:`CachedResponder` whose
    cache already holds every reply (a later Tune trial), it never loads at all.
    """

    def __init__(self, cfg: ResponderConfig) -> None:
        self.cfg = cfg
        self._generator: ChatGenerator | None = None

    @property
    def generator(self) -> ChatGenerator:
        if self._generator is None:
            from agentflan.generation import ChatGenerator

            model = str(self.cfg.model)  # the config requires one for kind hf
            s = self.cfg.sampling
            self._generator = ChatGenerator(
                model, s.max_new_tokens, self.cfg.batch_size, temperature=s.temperature, top_p=s.top_p
            )
        return self._generator

    def respond(self, requests: list[NegativeRequest]) -> list[Reply]:
        # One call for the whole list: the generator splits it into batches of batch_size itself.
        return list(
            self.generator.generate(
                [[{"role": m.role, "content": m.content} for m in r.messages] for r in requests]
            )
        )


class OpenAIResponder:
    """Any OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM, TGI, llama.cpp server), through the
    shared :class:`~agentflan.backends.openai_client.OpenAIClient`: a batch goes out ``max_in_flight``
    requests at a time, with its retries and Retry-After; a request that still fails comes back as a
    :class:`ResponderFailure` (the rest of the batch is kept)."""

    def __init__(self, cfg: ResponderConfig) -> None:
        from agentflan.backends.openai_client import OpenAIClient

        self.cfg = cfg
        self.client = OpenAIClient(cfg)

    def respond(self, requests: list[NegativeRequest]) -> list[Reply]:
        from agentflan.backends.openai_client import ClientFailure

        answers = self.client.complete_many(
            [([{"role": m.role, "content": m.content} for m in r.messages], None) for r in requests]
        )
        return [ResponderFailure(a.reason) if isinstance(a, ClientFailure) else a.content for a in answers]


NOT_GENERATED = "the batch engine wrote no reply for this request"


class Unanswered:
    """``kind: vllm`` in pass B: the replies were generated before the pass, in one batch job, into the
    cache (:mod:`agentflan.data.batch_negatives`), so a request the cache cannot answer is one the engine
    failed on. Its candidate is quarantined (``responder_failed``), not asked again."""

    def respond(self, requests: list[NegativeRequest]) -> list[Reply]:
        return [ResponderFailure(NOT_GENERATED)] * len(requests)


# ResponderConfig fields that do not change what a model replies: left out of the cache key, so tuning
# them keeps the cache. Everything else (a new field too, until it is listed here) is in the key.
_NOT_IN_KEY = frozenset(
    {
        "api_key_env",
        "batch_size",
        "timeout_s",
        "max_in_flight",
        "max_retries",
        "retry_backoff_s",
    }
)


def responder_key(cfg: ResponderConfig) -> str:
    """The cache folder of a responder: its kind and a hash of the config fields its replies depend on."""
    keyed = cfg.revalidated().model_dump(mode="json", exclude=set(_NOT_IN_KEY))
    digest = hashlib.blake2b(json.dumps(keyed, sort_keys=True).encode(), digest_size=8).hexdigest()
    return f"{cfg.kind}-{digest}"


def request_key(req: NegativeRequest) -> str:
    """What a (greedy) model reply depends on besides the model: the prompt. The case and reference ride
    along so a cached reply is never served for a request built another way."""
    what = [req.case, [[m.role, m.content] for m in req.messages], req.reference]
    return hashlib.blake2b(json.dumps(what, ensure_ascii=False).encode(), digest_size=16).hexdigest()


class CachedResponder:
    """Answers from ``cache_dir/<responder_key>/*.parquet`` where it can, asks ``inner`` for the rest.

    Every trial of a Tune study re-mixes the same decomposed corpus (pass B), so without a cache each trial
    would pay the model again for the same queries. Replies are keyed by :func:`request_key` under a folder
    per :func:`responder_key`. Each batch's new replies go to a new part file of their own, written under a
    temporary name and renamed into place: Ray tasks writing at once never share a file, and a reader never
    sees half a file. Failures are not stored, so the next run asks again. The parts are read once, on the
    first batch, so a responder built in an actor sees what earlier runs wrote.
    """

    def __init__(self, inner: Responder, cache_dir: str | Path, responder_key: str) -> None:
        self.inner = inner
        self.dir = Path(cache_dir) / responder_key
        self._replies: dict[str, str] | None = None
        self.hits = 0
        self.misses = 0

    def _load(self) -> dict[str, str]:
        replies: dict[str, str] = {}
        # part-*.parquet from a responder in pass B, other names from a batch job's write_parquet
        for part in sorted(self.dir.glob("[!.]*.parquet")):
            try:
                table = pq.read_table(part, columns=["key", "reply"])
            except (OSError, pa.ArrowException) as e:
                log.warning("negatives cache: skipping unreadable %s (%s)", part, e)
                continue
            replies.update(
                zip(table.column("key").to_pylist(), table.column("reply").to_pylist(), strict=True)
            )
        return replies

    def _store(self, replies: dict[str, str]) -> None:
        """A new part file; a cache that cannot be written costs a later run, never this one."""
        name = f"part-{uuid.uuid4().hex}.parquet"
        tmp = self.dir / f".{name}.tmp"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({"key": list(replies), "reply": list(replies.values())}), tmp)
            os.replace(tmp, self.dir / name)
        except OSError as e:
            log.warning("negatives cache: cannot write %s (%s)", self.dir / name, e)

    def respond(self, requests: list[NegativeRequest]) -> list[Reply]:
        if self._replies is None:
            self._replies = self._load()
        cached = self._replies
        keys = [request_key(r) for r in requests]
        missing: dict[str, NegativeRequest] = {}
        for key, req in zip(keys, requests, strict=True):
            if key not in cached:
                missing.setdefault(key, req)
        answers: dict[str, Reply] = {}
        if missing:
            answers = dict(zip(missing, self.inner.respond(list(missing.values())), strict=True))
            fresh = {k: a for k, a in answers.items() if isinstance(a, str)}
            if fresh:
                self._store(fresh)
                cached.update(fresh)
        n_missing = sum(k in missing for k in keys)
        self.misses += n_missing
        self.hits += len(requests) - n_missing
        return [cached[k] if k in cached else answers[k] for k in keys]


def make_responder(cfg: ResponderConfig, seed: int, cache_dir: str | Path | None = None) -> Responder:
    """The responder ``cfg`` names; a model-backed one is cached under ``cache_dir`` when given. The template
    responder is cheap, offline and seeded per record id, so it is never cached."""
    if cfg.kind == "template":
        return TemplateResponder(seed)
    inner: Responder
    if cfg.kind == "hf":
        inner = HFResponder(cfg)
    elif cfg.kind == "openai":
        inner = OpenAIResponder(cfg)
    else:  # vllm: answered before pass B, into the cache (agentflan.data.batch_negatives)
        inner = Unanswered()
    return inner if cache_dir is None else CachedResponder(inner, cache_dir, responder_key(cfg))
