"""The inference engine: one base model, its adapters, and the operations the apps need.

    engine = LocalEngine(settings); engine.warm_up()
    engine.generate(messages, model="support", params=SamplingParams(max_new_tokens=64))
    engine.score_labels(texts, ["negative", "neutral", "positive"], model="sentiment")
    engine.score_continuations(history_prompt, candidates, model="recommend", answer_labels=["Yes", "No"])
    engine.embed(texts)

Every call is thread-safe: model work runs on the micro-batcher's one thread, where concurrent
``generate`` and ``score_labels`` calls are merged into mixed-adapter batches (the adapters applied
per row by ``core.lora_stack``). Any number of adapters may be registered; at most
``DOMAINLLM_ADAPTER_MAX_RESIDENT`` hold their weights in memory, and each batch's adapters are made
resident just before it runs (``core.adapters``: cold loads, LRU evictions; a batch that needs more
runs in groups). A tenant's version ``tenant/name@vN`` is served from the artefact store on its
first request. ``submit_*`` return futures for async callers (the server awaits
them through ``apps.http.deadline.await_engine``, with the deadline and a watch on the client);
they validate and tokenise on the caller's thread, so an async caller runs them off its event loop.
The queue is bounded by its estimated time (``DOMAINLLM_ENGINE_MAX_QUEUE_S``, see
``core.batching``): past it ``submit_*`` raise ``EngineOverloadedError`` at once. Cancelling a
returned future drops its queued work; a running generation stops at its next decode step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from core import metrics
from core.adapters import BASE, AdapterInfo, AdapterRegistry, read_card
from core.batching import Job, MicroBatcher, settle, work_elapsed_s
from core.config import DEFAULT_BASE_MODEL, Settings
from core.decoding import DecodeRow, beam_search, decode_batch
from core.embeddings import MiniLMEmbedder
from core.errors import (
    AdapterNotFoundError,
    DomainLLMError,
    EngineOverloadedError,
    InputTooLargeError,
    InvalidRequestError,
    ModelNotReadyError,
)
from core.interface import DeltaCallback, Prompt
from core.logprobs import RowLogprobs, check_token_rows, prompt_logprobs
from core.lora_stack import LoraRouter
from core.model_store import is_prepared, prepare_default_model
from core.prompts import classification_prompt, render_chat, truncate_tokens
from core.quantize import quantize_int8
from core.sampling import Completion, ContinuationScore, SamplingParams
from core.scoring import LabelRow, label_first_tokens, mean_hidden_states, score_continuations, score_label_rows

log = logging.getLogger(__name__)

INT8_FROZEN = "the base model is int8-quantised and PEFT cannot add LoRA layers to it at run time"


class _AdapterRow(Protocol):
    adapter: str


RowT = TypeVar("RowT", bound=_AdapterRow)
ResultT = TypeVar("ResultT")


@dataclass
class _GenerateRequest:
    row: DecodeRow


@dataclass
class _LabelRequest:
    rows: list[LabelRow]


def _stoppable(job: Job) -> DecodeRow:
    """A generation job's row, stopped at the next decode step once its caller gave up (the
    future cancelled: the client left, or its deadline passed) or its own ``should_stop`` says so."""
    row: DecodeRow = job.payload.row
    own = row.should_stop
    return replace(row, should_stop=lambda: job.abandoned or (own is not None and own()))


def _check_unicode(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(f"{what} must be valid Unicode text (it holds a lone surrogate)") from None


class LocalEngine:
    """The base model and its adapters in this process: implements ``core.interface.Engine``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = torch.device(settings.resolved_device())
        self.dtype = getattr(torch, settings.resolved_dtype(self.device.type))
        self.tokenizer: Any = None
        self.registry: AdapterRegistry | None = None
        self.lora: LoraRouter | None = None  # applies each batch row's adapter (see core.lora_stack)
        self.embedder = MiniLMEmbedder(settings.embedder_path, device=self.device.type)
        self.adapter_failures: dict[str, str] = {}
        self.base_model_name = ""
        self.load_seconds = 0.0
        self._eos_ids: set[int] = set()
        self._batcher = MicroBatcher(
            {"generate": self._run_generate, "labels": self._run_labels},
            max_batch=settings.max_batch_size,
            wait_s=settings.batch_wait_ms / 1000,
            max_queue_s=settings.engine_max_queue_s,
        )
        self._lock = threading.Lock()
        self._ready = False
        self._label_token_cache: dict[tuple[str, ...], list[list[int]] | None] = {}

    # ---- lifecycle -------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once the base model, the adapters on disk and the batch worker are all up."""
        return self._ready

    def warm_up(self) -> None:
        """Load the base model, its tokenizer and the adapters found on disk; safe to call twice."""
        with self._lock:
            if self.ready:
                return
            started = time.perf_counter()
            # Loading (and int8 quantising) runs on the engine's own thread, like every later torch
            # call: torch's GNU OpenMP gives each thread that runs a parallel op its own worker team,
            # and once the teams outnumber the cores every op pays a futex wake-up (bench/README.md,
            # "Core findings": an int8 engine warmed on the caller's thread decoded at half speed).
            self._batcher.start()
            self._batcher.submit_solo(self._load_all, kind="load", bounded=False).result()
            self._calibrate()
            self._ready = True
            self.load_seconds = time.perf_counter() - started
            log.info(
                "engine ready in %.2fs: %s on %s/%s", self.load_seconds, self.base_model_name, self.device, self.dtype
            )

    def _load_all(self) -> None:
        path = self.settings.base_model_path
        if not is_prepared(path):
            if self.settings.base_model != DEFAULT_BASE_MODEL:
                raise ModelNotReadyError(f"base model folder {path} is missing config/tokenizer/weights")
            prepare_default_model(path)
        self._load_base(path)
        if self.settings.load_adapters_on_start:
            self.adapter_failures = self.registry.discover(self.settings.adapters_path)  # type: ignore[union-attr]
        if self.settings.quantization == "int8":
            self._apply_int8()

    def _calibrate(self) -> None:
        """One small batch of each batchable kind, twice (the first pays one-off allocations and is
        forgotten), so the queue bound has an estimate for each before the first request (their work
        would otherwise count as free until a first batch of the kind had run). One row decodes
        several times slower per token than a full batch: the bound starts cautious and learns
        from real batches."""
        chat = self.tokenize(self.render([{"role": "user", "content": "Hello"}]))
        labels = ["yes", "no"]
        first_tokens = self._label_tokens(tuple(labels))
        prompt = self.tokenize(classification_prompt(self.tokenizer, "Hello", labels, None))
        params = SamplingParams(max_new_tokens=4, ignore_eos=True)
        for warm in (True, False):
            row = DecodeRow(chat, BASE, params)
            self._batcher.submit("generate", _GenerateRequest(row), cost=params.max_new_tokens).result()
            if first_tokens is not None:
                rows = [LabelRow(prompt, BASE, first_tokens)]
                self._batcher.submit("labels", _LabelRequest(rows)).result()
            if warm:
                self._batcher.forget("generate", "labels")

    def _load_base(self, path: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype)
        model = model.to(self.device).eval()
        eos = model.generation_config.eos_token_id
        self._eos_ids = {int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None}
        if tokenizer.eos_token_id is not None:
            self._eos_ids.add(int(tokenizer.eos_token_id))
        self.tokenizer = tokenizer
        self.base_model_name = path.name
        # under int8 no adapter can be loaded after start (see _apply_int8), so all of them stay resident
        budget = 0 if self.settings.quantization == "int8" else self.settings.adapter_max_resident
        self.registry = AdapterRegistry(model, max_resident=budget, store=self.settings.adapters_path)
        self.lora = LoraRouter(self.registry)

    def _apply_int8(self) -> None:
        if self.device.type != "cpu":
            raise InvalidRequestError("int8 dynamic quantisation runs on CPU only")
        # in place: the registry's base model and its PEFT wrapper both see the int8 layers
        registry = self._registry()
        quantize_int8(registry.model, inplace=True)
        # PEFT cannot wrap a quantised Linear: the adapters resident now are all this engine serves
        registry.freeze(INT8_FROZEN)

    def close(self) -> None:
        self._batcher.stop()
        self._ready = False

    @property
    def recent_batches(self) -> list[tuple[str, int]]:
        """(kind, rows) of the most recent batches, newest last: for tests and debugging."""
        return list(self._batcher.recent)

    def _registry(self) -> AdapterRegistry:
        if self.registry is None:
            raise ModelNotReadyError("the engine is still loading the base model")
        return self.registry

    def _router(self) -> LoraRouter:
        if self.lora is None:
            raise ModelNotReadyError("the engine is still loading the base model")
        return self.lora

    # ---- adapters --------------------------------------------------------------------------------

    def list_models(self) -> list[dict[str, Any]]:
        registry = self._registry()
        base = {"id": BASE, "base_model": self.base_model_name, "kind": "base"}
        return [base, *({**a.describe(), "kind": "lora"} for a in registry.all())]

    def serving_config(self, name: str) -> dict[str, Any]:
        """The ``serving`` section of an adapter's card (how it was trained to be prompted: labels,
        instruction, ...); empty for the base model or an adapter without one. A store version not
        used yet is read from its folder, without loading it."""
        if name == BASE or not self.has_model(name):
            return {}
        registry = self._registry()
        try:
            card = registry.info(name).card
        except AdapterNotFoundError:
            folder = registry.locate(name)
            card = read_card(folder) if folder is not None else {}
        return dict((card or {}).get("serving") or {})

    def adapters(self) -> list[AdapterInfo]:
        """The registered adapters, resident or not (empty until the base model is in)."""
        return self.registry.all() if self.registry is not None else []

    def adapter_file(self, name: str, filename: str) -> Path | None:
        """A file shipped in an adapter's folder (an intent head, say), or None when absent."""
        if name == BASE or not self.has_model(name):
            return None
        folder = self._registry().locate(name)
        path = folder / filename if folder is not None else None
        return path if path is not None and path.is_file() else None

    @property
    def max_batch_texts(self) -> int:
        return self.settings.max_batch_texts

    def _wait(self, future: Future[ResultT]) -> ResultT:
        """The job's result within the engine deadline (``DOMAINLLM_ENGINE_DEADLINE_S``); past it the
        job is cancelled (a queued one never runs, a running generation stops) and the caller gets a
        503 with Retry-After."""
        try:  # inside a piece of work (a support answer), its earlier waits count against the deadline
            return future.result(timeout=max(0.0, self.settings.engine_deadline_s - work_elapsed_s()))
        except FutureTimeout:
            future.cancel()
            # retry once the queue, bounded at engine_max_queue_s of work, has had time to drain
            raise EngineOverloadedError(
                f"the engine did not answer within {self.settings.engine_deadline_s:g} s; retry shortly",
                retry_after_s=self.settings.engine_max_queue_s,
            ) from None

    @property
    def embedder_id(self) -> str:
        """What the embeddings come from (a knowledge base rebuilds its index when this changes)."""
        return str(getattr(self.embedder, "embedder_id", type(self.embedder).__name__))

    def has_model(self, name: str) -> bool:
        """Whether a request for ``name`` can be served: the base, a registered adapter, or a tenant's
        version ``tenant/name@vN`` in the artefact store (registered on its first request)."""
        try:
            self._registry().servable(name)
        except (AdapterNotFoundError, InvalidRequestError):
            return False
        return True

    def load_adapter(self, name: str, path: Path) -> AdapterInfo:
        """Register ``name`` and make it resident now (on the engine thread, between batches)."""
        registry = self._registry()
        if self.settings.quantization == "int8":
            raise InvalidRequestError(INT8_FROZEN + "; put the adapter in the adapters folder and restart", name=name)
        info: AdapterInfo = self._batcher.submit_solo(
            lambda: registry.load(name, path), kind="adapter", bounded=False
        ).result()
        return info

    def unload_adapter(self, name: str) -> None:
        """Stop serving ``name`` (between batches): batches already running finish on it; requests
        still queued for it get 404."""
        registry = self._registry()
        self._batcher.submit_solo(lambda: registry.unload(name), kind="adapter", bounded=False).result()

    # ---- tokenising and validation ---------------------------------------------------------------

    def render(self, prompt: Prompt) -> str:
        """A chat (list of messages) through the chat template; a string as it is."""
        self._registry()
        if isinstance(prompt, str):
            self._check_text(prompt, "prompt")
            return prompt
        if not prompt:
            raise InvalidRequestError("messages must not be empty")
        for m in prompt:
            if not isinstance(m, dict):
                raise InvalidRequestError("each message must be an object with role and content")
            if m.get("role") not in {"system", "user", "assistant"}:
                raise InvalidRequestError(f"message role must be system, user or assistant, got {m.get('role')!r}")
            if not isinstance(m.get("content"), str):
                raise InvalidRequestError("message content must be a string")
            _check_unicode(m["content"], "message content")
        total = sum(len(m["content"]) for m in prompt)
        if total > self.settings.max_input_chars:
            raise InputTooLargeError(
                f"messages hold {total} characters; the limit is {self.settings.max_input_chars}",
                limit=self.settings.max_input_chars,
                actual=total,
            )
        if not any(m["content"].strip() for m in prompt):
            raise InvalidRequestError("messages must contain some text")
        return render_chat(self.tokenizer, prompt)

    def truncate_tokens(self, text: str, max_tokens: int) -> str:
        """``text`` cut to at most ``max_tokens`` tokens of the served tokenizer (" …" marks a cut)."""
        self._registry()
        return truncate_tokens(self.tokenizer, text, max_tokens)

    def _check_text(self, text: str, what: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequestError(f"{what} must be a non-empty string")
        _check_unicode(text, what)
        if len(text) > self.settings.max_input_chars:
            raise InputTooLargeError(
                f"{what} holds {len(text)} characters; the limit is {self.settings.max_input_chars}",
                limit=self.settings.max_input_chars,
                actual=len(text),
            )

    def _check_texts(self, texts: list[str], count: str) -> None:
        """At most ``max_batch_texts`` texts (``count`` says how many, in the error), each one valid."""
        if len(texts) > self.settings.max_batch_texts:
            raise InputTooLargeError(
                f"{count}; the limit is {self.settings.max_batch_texts}",
                limit=self.settings.max_batch_texts,
                actual=len(texts),
            )
        for t in texts:
            self._check_text(t, "each text")

    def tokenize(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) > self.settings.max_prompt_tokens:
            raise InputTooLargeError(
                f"the prompt is {len(ids)} tokens; the limit is {self.settings.max_prompt_tokens}",
                limit=self.settings.max_prompt_tokens,
                actual=len(ids),
            )
        return ids

    def _check_model(self, model: str) -> None:
        self._registry().servable(model)  # raises AdapterNotFoundError, never falls back to base

    # ---- generate --------------------------------------------------------------------------------

    def submit_generate(
        self,
        prompt: Prompt,
        *,
        model: str = BASE,
        params: SamplingParams | None = None,
        on_delta: DeltaCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Future[Completion]:
        """Queue one generation. ``on_delta`` gets text as it is decoded (on the engine thread);
        ``should_stop`` is polled each step so an abandoned stream stops using batch capacity."""
        params = params or SamplingParams()
        self._check_model(model)
        if params.max_new_tokens > self.settings.max_new_tokens:
            raise InvalidRequestError(f"max_tokens may be at most {self.settings.max_new_tokens}")
        row = DecodeRow(self.tokenize(self.render(prompt)), model, params, on_delta, should_stop)
        metrics.ENGINE_REQUESTS.labels("generate", model).inc()
        if params.num_beams > 1:  # runs whole once started (transformers' generate); dropped while queued
            return self._batcher.submit_solo(
                lambda: self._run_beam(row), kind="beam", cost=params.max_new_tokens * params.num_beams
            )
        # its cost for the queue bound: its token budget (a batch decodes for as long as its longest row)
        return self._batcher.submit("generate", _GenerateRequest(row), cost=params.max_new_tokens)

    def generate(self, prompt: Prompt, **kwargs: Any) -> Completion:
        return self._wait(self.submit_generate(prompt, **kwargs))

    def _in_adapter_groups(
        self, jobs: list[Job], rows: list[RowT], job_of: list[int], run: Callable[[list[RowT]], list[ResultT]]
    ) -> list[ResultT | None]:
        """``run`` over the batch's rows (row i belongs to ``jobs[job_of[i]]``), once, or once per group
        where one run would need more adapters than may be resident (``AdapterRegistry.groups``) or
        would mix adapters PEFT cannot (``LoraRouter.groups``). Each group's adapters are made
        resident first (cold loads, LRU evictions). A row whose adapter cannot be served (unloaded
        while queued: 404; a folder that fails to load: 422) fails its own job, not the batch.
        The results in row order; None for a failed row."""
        registry, router = self._registry(), self._router()
        results: list[ResultT | None] = [None] * len(rows)
        failed: dict[str, DomainLLMError] = {}
        for group in registry.groups([r.adapter for r in rows]):
            failed.update(
                registry.acquire(dict.fromkeys(rows[i].adapter for i in group if rows[i].adapter not in failed))
            )
            for i in group:  # an adapter's rows are all in one group: its callers learn at once
                if rows[i].adapter in failed:
                    settle(jobs[job_of[i]].future, error=failed[rows[i].adapter])
            live = [i for i in group if rows[i].adapter not in failed]
            if not live:
                continue
            for part in router.groups([rows[i].adapter for i in live]):
                picked = [live[j] for j in part]
                for i, result in zip(picked, run([rows[i] for i in picked]), strict=True):
                    results[i] = result
        return results

    def _count(self, completions: list[Completion | None], rows: list[DecodeRow]) -> None:
        for c, r in zip(completions, rows, strict=True):
            if c is None:
                continue
            metrics.TOKENS_GENERATED.labels(r.adapter).inc(c.completion_tokens)
            metrics.PROMPT_TOKENS.labels(r.adapter).inc(c.prompt_tokens)

    def _run_generate(self, jobs: list[Job]) -> list[Completion | None]:
        rows = [_stoppable(j) for j in jobs]
        registry, adapter_rows = self._registry(), self._router().rows

        def run(part: list[DecodeRow]) -> list[Completion]:
            # the model is read per group: the first adapter made resident wraps the base in PEFT
            return decode_batch(registry.model, self.tokenizer, part, adapter_rows, self._eos_ids, self.device)

        completions = self._in_adapter_groups(jobs, rows, list(range(len(jobs))), run)
        self._count(completions, rows)
        return completions

    def _model_for(self, name: str) -> torch.nn.Module:
        """The model to run a solo job for adapter ``name`` on, with the adapter made resident first
        (the first resident adapter wraps the base in PEFT, so the model is read after that)."""
        registry = self._registry()
        failures = registry.acquire([name])
        if failures:
            raise failures[name]
        return registry.model

    def _run_beam(self, row: DecodeRow) -> Completion:
        model = self._model_for(row.adapter)
        completion = beam_search(model, self.tokenizer, row, self._router().rows, self._eos_ids, self.device)
        self._count([completion], [row])
        return completion

    # ---- label scoring ---------------------------------------------------------------------------

    def _label_tokens(self, labels: tuple[str, ...]) -> list[list[int]] | None:
        """First-token ids per label, memoised: every request of an app sends the same label set,
        and tokenising the surface variants on each call would sit on the hot path."""
        if labels not in self._label_token_cache:
            if len(self._label_token_cache) > 1024:
                self._label_token_cache.clear()
            self._label_token_cache[labels] = label_first_tokens(self.tokenizer, list(labels))
        return self._label_token_cache[labels]

    def _check_labels(self, labels: list[str]) -> None:
        if not 2 <= len(labels) <= self.settings.max_labels:
            raise InvalidRequestError(f"give between 2 and {self.settings.max_labels} labels, got {len(labels)}")
        if any(not isinstance(x, str) or not x.strip() for x in labels):
            raise InvalidRequestError("labels must be non-empty strings")
        for label in labels:
            _check_unicode(label, "each label")
        if len(set(labels)) != len(labels):
            raise InvalidRequestError("labels must be distinct")

    def submit_score_labels(
        self, texts: list[str], labels: list[str], *, model: str = BASE, instruction: str | None = None
    ) -> Future[list[dict[str, float]]]:
        self._check_model(model)
        self._check_labels(labels)
        if not texts:
            raise InvalidRequestError("texts must not be empty")
        if instruction is not None:
            self._check_text(instruction, "instruction")
        self._check_texts(texts, f"{len(texts)} texts in one request")
        metrics.ENGINE_REQUESTS.labels("labels", model).inc(len(texts))
        prompts = [classification_prompt(self.tokenizer, t, labels, instruction) for t in texts]
        first_tokens = self._label_tokens(tuple(labels))
        if first_tokens is None:  # labels share first tokens: whole-label likelihood, one job per text
            return self._batcher.submit_solo(
                lambda: self._score_labels_by_likelihood(prompts, labels, model),
                kind="likelihood",
                cost=len(prompts) * len(labels),
            )
        rows = [LabelRow(self.tokenize(p), model, first_tokens) for p in prompts]
        # One job per micro-batch of rows: 256 texts never make one forward pass, other requests'
        # rows interleave with them, and a cancelled request drops its chunks not yet run. The
        # chunks are admitted together: the queue bound looks at the work ahead of the first.
        step = self.settings.max_batch_size
        chunks = [rows[i : i + step] for i in range(0, len(rows), step)]
        inners: list[Future[Any]] = list(
            self._batcher.submit_all("labels", [(_LabelRequest(c), len(c), len(c)) for c in chunks])
        )
        outer: Future[list[dict[str, float]]] = Future()
        lock = threading.Lock()

        def _done(_: Future[list[list[float]]]) -> None:
            with lock:
                if outer.done():
                    return
                failed = next((f for f in inners if f.done() and not f.cancelled() and f.exception()), None)
                if failed is not None:  # one chunk failed: the request fails, its other chunks are dropped
                    settle(outer, error=failed.exception())
                    for f in inners:
                        f.cancel()
                    return
                if not all(f.done() for f in inners):
                    return
                if any(f.cancelled() for f in inners):
                    outer.cancel()
                    return
                scores = [p for f in inners for p in f.result()]
                settle(outer, [dict(zip(labels, p, strict=True)) for p in scores])

        for inner in inners:
            inner.add_done_callback(_done)
        outer.add_done_callback(lambda o: [f.cancel() for f in inners] if o.cancelled() else None)
        return outer

    def score_labels(self, texts: list[str], labels: list[str], **kwargs: Any) -> list[dict[str, float]]:
        return self._wait(self.submit_score_labels(texts, labels, **kwargs))

    def _run_labels(self, jobs: list[Job]) -> list[list[list[float] | None]]:
        rows = [r for j in jobs for r in j.payload.rows]
        job_of = [k for k, j in enumerate(jobs) for _ in j.payload.rows]
        registry, adapter_rows = self._registry(), self._router().rows

        def run(part: list[LabelRow]) -> list[list[float]]:
            return score_label_rows(registry.model, part, adapter_rows, self.tokenizer.pad_token_id, self.device)

        probs = self._in_adapter_groups(jobs, rows, job_of, run)
        out, at = [], 0
        for j in jobs:
            out.append(probs[at : at + j.rows])
            at += j.rows
        return out

    def _score_labels_by_likelihood(self, prompts: list[str], labels: list[str], model: str) -> list[dict[str, float]]:
        end = self.tokenizer.eos_token or ""
        conts = [self.tokenizer.encode(label + end, add_special_tokens=False) for label in labels]
        results = []
        for p in prompts:
            scores = self._continuations_now(self.tokenize(p), conts, model, None, None)
            lp = torch.tensor([s.logprob for s in scores])
            results.append(dict(zip(labels, torch.softmax(lp, dim=0).tolist(), strict=True)))
        return results

    # ---- shared-prefix continuation scoring --------------------------------------------------------

    def submit_score_continuations(
        self,
        prefix: Prompt,
        continuations: list[str],
        *,
        model: str = BASE,
        answer_labels: list[str] | None = None,
    ) -> Future[list[ContinuationScore]]:
        self._check_model(model)
        if not continuations:
            raise InvalidRequestError("continuations must not be empty")
        if len(continuations) > self.settings.max_continuations:
            raise InputTooLargeError(
                f"{len(continuations)} continuations; the limit is {self.settings.max_continuations}",
                limit=self.settings.max_continuations,
                actual=len(continuations),
            )
        prefix_ids = self.tokenize(self.render(prefix))
        conts = []
        for c in continuations:
            self._check_text(c, "each continuation")
            conts.append(self.tokenize(c))
        answer_tokens = None
        if answer_labels is not None:
            self._check_labels(answer_labels)
            answer_tokens = self._label_tokens(tuple(answer_labels))
            if answer_tokens is None:
                raise InvalidRequestError("answer labels must start with different tokens")
        metrics.ENGINE_REQUESTS.labels("continuations", model).inc(len(conts))
        return self._batcher.submit_solo(
            lambda: self._continuations_now(prefix_ids, conts, model, answer_tokens, answer_labels),
            kind="continuations",
            cost=len(conts),
        )

    def score_continuations(self, prefix: Prompt, continuations: list[str], **kwargs: Any) -> list[ContinuationScore]:
        return self._wait(self.submit_score_continuations(prefix, continuations, **kwargs))

    def _continuations_now(
        self,
        prefix_ids: list[int],
        conts: list[list[int]],
        model: str,
        answer_tokens: list[list[int]] | None,
        answer_labels: list[str] | None,
    ) -> list[ContinuationScore]:
        return score_continuations(
            self._model_for(model),
            prefix_ids,
            conts,
            model,
            self._router().rows,
            self.tokenizer.pad_token_id,
            self.device,
            answer_tokens=answer_tokens,
            answer_labels=answer_labels,
            chunk_size=self.settings.max_batch_size,
        )

    # ---- prompt log-probabilities ----------------------------------------------------------------

    def submit_prompt_logprobs(
        self, rows: list[list[int]], *, model: str = BASE, top_k: int = 0
    ) -> Future[list[RowLogprobs]]:
        """Per row of token ids, each token's log-probability given the ones before it, with the
        ``top_k`` most likely tokens at each position (raw log-probabilities, as vLLM's
        ``prompt_logprobs``): the server's ``logprobs``/``echo``/``prompt_logprobs``, which a
        ``core.remote_engine.RemoteEngine`` scores labels and continuations with. A row may be as
        long as a prompt and its completion."""
        self._check_model(model)
        check_token_rows(
            rows,
            vocab_size=len(self.tokenizer),
            max_rows=self.settings.max_batch_texts,
            max_tokens=self.settings.max_prompt_tokens + self.settings.max_new_tokens,
            top_k=top_k,
        )
        metrics.ENGINE_REQUESTS.labels("logprobs", model).inc(len(rows))

        def run() -> list[RowLogprobs]:
            return prompt_logprobs(
                self._model_for(model),
                self.tokenizer,
                rows,
                model,
                self._router().rows,
                self.tokenizer.pad_token_id,
                self.device,
                top_k=top_k,
            )

        return self._batcher.submit_solo(run, kind="logprobs", cost=len(rows))

    # ---- embeddings ------------------------------------------------------------------------------

    def embed(self, texts: list[str], *, normalize: bool = True) -> np.ndarray:
        if len(texts) > self.settings.max_batch_texts * 16:
            raise InputTooLargeError(
                f"{len(texts)} texts to embed; the limit is {self.settings.max_batch_texts * 16}",
                limit=self.settings.max_batch_texts * 16,
                actual=len(texts),
            )
        return self._on_engine_thread(lambda: self.embedder.embed(texts, normalize=normalize), "embed", len(texts))

    def _on_engine_thread(self, run: Callable[[], np.ndarray], kind: str, cost: int) -> np.ndarray:
        """``run()`` on the engine thread, between batches (inline when already there), for the
        OpenMP reason given in warm_up: one MiniLM call from another thread made every later
        mixed-adapter batch 1.7x slower."""
        if self._batcher.on_worker():
            return run()
        self._batcher.start()
        result: np.ndarray = self._wait(self._batcher.submit_solo(run, kind=kind, cost=max(1, cost)))
        return result

    def hidden_states(self, texts: list[str], *, model: str = BASE) -> np.ndarray:
        """[n, hidden]: each text's mean final hidden state with ``model``'s adapter applied (the
        features a ``core.heads.LinearHead`` is fitted on); on the engine thread, between batches."""
        self._check_model(model)
        if not texts:
            raise InvalidRequestError("texts must not be empty")
        self._check_texts(texts, f"{len(texts)} texts")

        def run() -> np.ndarray:
            return mean_hidden_states(
                self._model_for(model),
                self.tokenizer,
                texts,
                self.device,
                self.settings.max_batch_size,
                self._router().rows,
                model,
            )

        return self._on_engine_thread(run, "hidden", len(texts))
