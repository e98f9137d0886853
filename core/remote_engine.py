"""The Engine on an OpenAI-compatible multi-LoRA server: vLLM with ``--enable-lora`` (or a second
instance of this project's own server). Chosen by ``DOMAINLLM_ENGINE_BACKEND=remote``; configured by
``core.remote_client.RemoteSettings`` (``DOMAINLLM_REMOTE_*``). vLLM version and flags: docs/remote-engine.md.

    engine = RemoteEngine(settings)          # DOMAINLLM_REMOTE_URL=http://gpu-host:8000
    engine.warm_up()                         # loads the tokenizer, waits for the server to answer
    engine.score_labels(texts, ["negative", "neutral", "positive"], model="sentiment")

What runs where:

* On the remote, one model name per adapter (vLLM's ``--lora-modules name=path``; ``"base"`` here is
  the remote's base model): generation (``/v1/completions`` with the prompt rendered here and
  ``return_token_ids``), and the log-probabilities that label and continuation scores are made of
  (``/v1/completions`` with token-id prompts, ``echo``, ``max_tokens: 0``, ``prompt_logprobs``).
* Here: the base model's tokenizer only (no weights), so chat rendering, token counts and limits,
  and the label first tokens are computed by the same code as ``LocalEngine``'s and the remote sees
  the very token ids the local engine would; MiniLM embeddings (a 90 MB model: a KB index keeps its
  vectors whichever backend serves); adapter cards, read from the local copy of the adapters folder
  (or, from this project's server, from ``/v1/models``).
* Not available: ``hidden_states`` (an OpenAI-compatible server does not return them), loading and
  unloading adapters (the remote's operator does that): each raises an error that says so.
  ``adapter_file`` answers None (its files, an intent head, would need the hidden states): the
  apps then run as for an adapter that ships none.

Scores are exact, not top-k approximations: the log-probability of each label's first tokens (its
surface variants pooled, as ``core.scoring``) is read as the last prompt token of ``prompt + [token]``
rows, so a label outside the top 20 still gets its true probability. The price is one prompt row per
candidate token; vLLM skips its prefix cache for requests with prompt log-probabilities.

Remote failures never crash a caller: unreachable, too slow, 5xx or 429 -> ``EngineOverloadedError``
(503 with Retry-After); a 4xx about the request -> ``InvalidRequestError``; an unknown model ->
``AdapterNotFoundError``; refused credentials or an answer we cannot read -> ``UpstreamError``.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np

from core import metrics
from core.adapters import BASE, WEIGHT_FILES, AdapterInfo, parse_adapter_name, read_card, version_dir
from core.batching import JobFuture, settle, work_elapsed_s
from core.config import Settings
from core.embeddings import MiniLMEmbedder
from core.errors import (
    AdapterNotFoundError,
    DomainLLMError,
    EngineOverloadedError,
    InputTooLargeError,
    InvalidRequestError,
    ModelNotReadyError,
    UpstreamError,
)
from core.interface import DeltaCallback, Prompt
from core.logprobs import RowLogprobs, check_token_rows
from core.prompts import classification_prompt, render_chat, truncate_tokens
from core.remote_client import RemoteClient, RemoteSettings
from core.sampling import Completion, ContinuationScore, SamplingParams
from core.scoring import label_first_tokens

log = logging.getLogger(__name__)

T = TypeVar("T")


def _softmax(logits: list[float]) -> list[float]:
    values = np.asarray(logits, dtype=np.float64)
    values = np.exp(values - values.max())
    return list((values / values.sum()).tolist())


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _check_unicode(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(f"{what} must be valid Unicode text (it holds a lone surrogate)") from None


class RemoteEngine:
    """``core.interface.Engine`` over an OpenAI-compatible multi-LoRA server (see the module doc)."""

    def __init__(
        self, settings: Settings, remote: RemoteSettings | None = None, *, http: httpx.Client | None = None
    ) -> None:
        self.settings = settings
        self.remote = remote or RemoteSettings()
        self.embedder = MiniLMEmbedder(settings.embedder_path, device="cpu")
        self.tokenizer: Any = None
        self.adapter_failures: dict[str, str] = {}
        self.base_model_name = ""
        self.load_seconds = 0.0
        self._eos_ids: set[int] = set()
        self._label_token_cache: dict[tuple[str, ...], list[list[int]] | None] = {}
        self._lock = threading.Lock()
        self._ready = False
        self.client = RemoteClient(self.remote, http=http, deadline_retry_s=settings.engine_max_queue_s)
        self._pool = ThreadPoolExecutor(self.remote.max_concurrency, thread_name_prefix="remote-engine")
        # MiniLM's torch work on one thread of its own (torch's OpenMP makes a team per calling thread)
        self._torch = ThreadPoolExecutor(1, thread_name_prefix="remote-engine-embed")
        self._waiting = 0
        self._waiting_lock = threading.Lock()

    # ---- lifecycle -------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once the tokenizer is loaded and the remote has answered."""
        return self._ready

    def warm_up(self) -> None:
        """Load the tokenizer, then wait (up to ``startup_wait_s``) for the remote to list its models;
        safe to call twice."""
        with self._lock:
            if self._ready:
                return
            started = time.perf_counter()
            self._load_tokenizer()
            self._wait_for_remote()
            self._ready = True
            self.load_seconds = time.perf_counter() - started
            log.info(
                "remote engine ready in %.2fs: %s at %s with %d adapters",
                self.load_seconds,
                self.base_model_name,
                self.remote.url,
                len(self.client.models()),
            )

    def _load_tokenizer(self) -> None:
        from transformers import AutoTokenizer, GenerationConfig

        path = self.remote.tokenizer_path or self.settings.base_model_path
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise ModelNotReadyError(
                f"no tokenizer in {path} (a remote engine needs the base model's tokenizer files here; `make model` "
                f"prepares the default one, or set DOMAINLLM_REMOTE_TOKENIZER_PATH): {exc}"
            ) from exc
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._eos_ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
        try:
            eos = GenerationConfig.from_pretrained(path).eos_token_id
            self._eos_ids |= {int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None}
        except OSError:
            pass  # no generation_config.json: the tokenizer's end-of-sequence token is the one
        self.tokenizer = tokenizer

    def _wait_for_remote(self) -> None:
        deadline = time.monotonic() + self.remote.startup_wait_s
        while True:
            try:
                self.client.refresh_models()
                self.base_model_name = self.client.base_name
                return
            except EngineOverloadedError as exc:  # not up yet (vLLM takes minutes to load a model)
                if time.monotonic() >= deadline:
                    raise ModelNotReadyError(
                        f"the remote engine at {self.remote.url} did not answer within "
                        f"{self.remote.startup_wait_s:g} s: {exc.message}"
                    ) from exc
                time.sleep(1.0)
            except DomainLLMError as exc:
                raise ModelNotReadyError(f"the remote engine at {self.remote.url} is unusable: {exc.message}") from exc

    def close(self) -> None:
        self._ready = False
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._torch.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    # ---- requests on the connection threads ---------------------------------------------------

    def _submit(self, work: Callable[[JobFuture], T], kind: str, model: str, count: int = 1) -> Future[T]:
        """Run ``work(future)`` on a connection thread; its result or error settles ``future``. Work may
        poll ``future.abandoned`` (its caller gave up). Past the queue bound: 503 at once."""
        bound = self.remote.max_concurrency + self.remote.max_queue
        with self._waiting_lock:
            if self._waiting >= bound:
                raise EngineOverloadedError(
                    f"{self._waiting} requests are waiting for the remote engine (the bound is {bound}); retry shortly",
                    retry_after_s=1,
                )
            self._waiting += 1
        metrics.ENGINE_REQUESTS.labels(kind, model).inc(count)
        future = JobFuture()

        def run() -> None:
            try:
                if not future.abandoned:
                    settle(future, work(future))
            except DomainLLMError as exc:
                settle(future, error=exc)
            except Exception as exc:  # an answer of an unexpected shape: say so, never crash the caller
                log.exception("remote engine %s request failed", kind)
                settle(
                    future,
                    error=UpstreamError(
                        f"the remote engine's answer could not be read ({type(exc).__name__}: {exc}); is it an "
                        "OpenAI-compatible server with vLLM's extensions (docs/remote-engine.md)?"
                    ),
                )
            finally:
                with self._waiting_lock:
                    self._waiting -= 1

        try:
            self._pool.submit(run)
        except RuntimeError:  # the pool is shut down: the engine was closed
            with self._waiting_lock:
                self._waiting -= 1
            raise ModelNotReadyError("the remote engine is closed") from None
        return future

    def _wait(self, future: Future[T]) -> T:
        """The result within the engine deadline (``DOMAINLLM_ENGINE_DEADLINE_S``); past it the request
        is abandoned (a stream stops at its next chunk) and the caller gets a 503 with Retry-After."""
        try:
            return future.result(timeout=max(0.0, self.settings.engine_deadline_s - work_elapsed_s()))
        except FutureTimeout:
            future.cancel()
            raise EngineOverloadedError(
                f"the remote engine did not answer within {self.settings.engine_deadline_s:g} s; retry shortly",
                retry_after_s=self.settings.engine_max_queue_s,
            ) from None

    # ---- the served models -----------------------------------------------------------------------

    def has_model(self, name: str) -> bool:
        """``"base"`` or an adapter the remote lists (the list is re-read every ``models_ttl_s``)."""
        return name == BASE or name in self.client.models()

    def _check_model(self, model: str) -> None:
        if not self.has_model(model):
            raise AdapterNotFoundError(model, self.client.names())

    def _local_folder(self, name: str) -> Path | None:
        """The adapter's folder in the local copy of the adapters folder (its card), if there is one."""
        ref = parse_adapter_name(name)
        if ref is None:
            return None
        root = self.settings.adapters_path
        folder = root / name if ref.tenant is None else version_dir(root, ref.tenant, ref.name, ref.version or 0)
        return folder if (folder / "adapter_config.json").is_file() else None

    def _info(self, name: str, card: dict[str, Any]) -> AdapterInfo:
        folder = self._local_folder(name)
        config: dict[str, Any] = {}
        size = 0
        if folder is not None:
            try:
                config = json.loads((folder / "adapter_config.json").read_text())
                size = next((folder / w).stat().st_size for w in WEIGHT_FILES if (folder / w).is_file())
            except (OSError, ValueError, StopIteration):
                pass
        remote_card = card.get("card") if isinstance(card.get("card"), dict) else {}
        return AdapterInfo(
            name=name,
            path=folder or Path(str(card.get("root") or name)),
            rank=int(config.get("r") or card.get("rank") or 0),
            alpha=float(config.get("lora_alpha") or 0.0),
            target_modules=list(config.get("target_modules") or []),
            size_bytes=size,
            loaded_at=float(card.get("created") or time.time()),
            card=(read_card(folder) if folder is not None else {}) or dict(remote_card or {}),
            resident=True,
        )

    def list_models(self) -> list[dict[str, Any]]:
        base = {"id": BASE, "base_model": self.base_model_name, "kind": "base"}
        return [base, *({**info.describe(), "kind": "lora"} for info in self.adapters())]

    def adapters(self) -> list[AdapterInfo]:
        return [self._info(name, card) for name, card in self.client.models().items()]

    def serving_config(self, name: str) -> dict[str, Any]:
        """The ``serving`` section of an adapter's card: from the local copy of its folder, else from
        the remote's model card (this project's server lists cards; vLLM does not)."""
        if name == BASE or not self.has_model(name):
            return {}
        card = self._info(name, self.client.models().get(name, {})).card
        return dict((card or {}).get("serving") or {})

    def adapter_file(self, name: str, filename: str) -> Path | None:
        """None: files that go with an adapter (an intent head) are used with ``hidden_states``, which a
        remote engine cannot give; the apps then run as for an adapter that ships none."""
        return None

    def load_adapter(self, name: str, path: Path) -> AdapterInfo:
        raise InvalidRequestError(
            f"adapters of a remote engine are loaded on the remote server ({self.remote.url}), not by this one: "
            f"vLLM loads `--lora-modules {name}=PATH` at start, or at run time with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True "
            "and POST /v1/load_lora_adapter (docs/remote-engine.md)",
            name=name,
        )

    def unload_adapter(self, name: str) -> None:
        raise InvalidRequestError(
            f"adapters of a remote engine are unloaded on the remote server ({self.remote.url}), not by this one "
            "(vLLM: POST /v1/unload_lora_adapter with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)",
            name=name,
        )

    @property
    def embedder_id(self) -> str:
        return str(getattr(self.embedder, "embedder_id", type(self.embedder).__name__))

    @property
    def max_batch_texts(self) -> int:
        return self.settings.max_batch_texts

    # ---- prompts (the same checks and tokenizer as LocalEngine) ------------------------------------

    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ModelNotReadyError("the remote engine is still starting (loading its tokenizer)")
        return self.tokenizer

    def render(self, prompt: Prompt) -> str:
        """A chat (list of messages) through the base model's chat template; a string as it is."""
        tokenizer = self._require_tokenizer()
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
        return render_chat(tokenizer, prompt)

    def truncate_tokens(self, text: str, max_tokens: int) -> str:
        return truncate_tokens(self._require_tokenizer(), text, max_tokens)

    def tokenize(self, text: str) -> list[int]:
        ids: list[int] = self._require_tokenizer().encode(text, add_special_tokens=False)
        if len(ids) > self.settings.max_prompt_tokens:
            raise InputTooLargeError(
                f"the prompt is {len(ids)} tokens; the limit is {self.settings.max_prompt_tokens}",
                limit=self.settings.max_prompt_tokens,
                actual=len(ids),
            )
        return ids

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
        if len(texts) > self.settings.max_batch_texts:
            raise InputTooLargeError(
                f"{count}; the limit is {self.settings.max_batch_texts}",
                limit=self.settings.max_batch_texts,
                actual=len(texts),
            )
        for t in texts:
            self._check_text(t, "each text")

    def _check_labels(self, labels: list[str]) -> None:
        if not 2 <= len(labels) <= self.settings.max_labels:
            raise InvalidRequestError(f"give between 2 and {self.settings.max_labels} labels, got {len(labels)}")
        if any(not isinstance(x, str) or not x.strip() for x in labels):
            raise InvalidRequestError("labels must be non-empty strings")
        for label in labels:
            _check_unicode(label, "each label")
        if len(set(labels)) != len(labels):
            raise InvalidRequestError("labels must be distinct")

    def _label_tokens(self, labels: tuple[str, ...]) -> list[list[int]] | None:
        if labels not in self._label_token_cache:
            if len(self._label_token_cache) > 1024:
                self._label_token_cache.clear()
            self._label_token_cache[labels] = label_first_tokens(self.tokenizer, list(labels))
        return self._label_token_cache[labels]

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
        """One generation on the remote, streamed when ``on_delta`` is given. Greedy decoding gives the
        local engine's tokens; sampling follows the remote's own random generator."""
        params = params or SamplingParams()
        self._check_model(model)
        if params.max_new_tokens > self.settings.max_new_tokens:
            raise InvalidRequestError(f"max_tokens may be at most {self.settings.max_new_tokens}")
        if params.num_beams > 1:
            raise InvalidRequestError("beam search (num_beams > 1) is not available on the remote engine")
        text = self.render(prompt)
        prompt_tokens = len(self.tokenize(text))
        body: dict[str, Any] = {
            "prompt": text,
            "max_tokens": params.max_new_tokens,
            "temperature": 0.0 if params.greedy else params.temperature,
            "top_p": params.top_p,
            "stop": list(params.stop),
            "ignore_eos": params.ignore_eos,
            "add_special_tokens": False,  # the prompt was rendered here, its special tokens included
            "return_token_ids": True,
            # neutral, whatever defaults the model's generation_config.json gave the remote
            "top_k": 0,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
        }
        if params.seed is not None:
            body["seed"] = params.seed

        def work(future: JobFuture) -> Completion:
            if on_delta is None:
                choice = self.client.completion(body, model=model)["choices"][0]
                out, finish, ids = str(choice.get("text") or ""), choice.get("finish_reason"), choice.get("token_ids")
            else:
                out, finish, ids = self.client.stream_completion(
                    body,
                    model=model,
                    on_text=on_delta,
                    stop=lambda: future.abandoned or bool(should_stop and should_stop()),
                )
            return self._completion(out, finish, ids, prompt_tokens, params, model)

        return self._submit(work, "generate", model)

    def generate(self, prompt: Prompt, **kwargs: Any) -> Completion:
        return self._wait(self.submit_generate(prompt, **kwargs))

    def _completion(
        self,
        text: str,
        finish: str | None,
        ids: list[int] | None,
        prompt_tokens: int,
        params: SamplingParams,
        model: str,
    ) -> Completion:
        """The remote's answer as the local engine gives it: vLLM returns (and counts) the end-of-sequence
        token that stopped a generation; the local engine does not."""
        token_ids = [int(t) for t in ids] if ids is not None else []
        reason = finish if finish in ("stop", "length", "cancelled") else "stop"
        if reason == "stop" and token_ids and token_ids[-1] in self._eos_ids and not params.ignore_eos:
            token_ids.pop()
        if ids is not None:
            completion_tokens = len(token_ids)
        else:  # a remote without return_token_ids (vLLM < 0.10.2): count the text's tokens
            completion_tokens = len(self.tokenizer.encode(text, add_special_tokens=False))
        metrics.TOKENS_GENERATED.labels(model).inc(completion_tokens)
        metrics.PROMPT_TOKENS.labels(model).inc(prompt_tokens)
        return Completion(
            text=text,
            finish_reason=reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            token_ids=token_ids,
        )

    # ---- prompt log-probabilities (what every score is made of) ----------------------------------

    def submit_prompt_logprobs(
        self, rows: list[list[int]], *, model: str = BASE, top_k: int = 0
    ) -> Future[list[RowLogprobs]]:
        """Per row of token ids, each token's log-probability given the ones before it and the ``top_k``
        most likely tokens at each position: the remote's ``prompt_logprobs``."""
        self._check_model(model)
        check_token_rows(
            rows,
            vocab_size=len(self._require_tokenizer()),
            max_rows=self.settings.max_batch_texts,
            max_tokens=self.settings.max_prompt_tokens + self.settings.max_new_tokens,
            top_k=top_k,
        )
        return self._submit(lambda future: self._logprobs(rows, model, future, top_k), "logprobs", model, len(rows))

    def _logprobs(self, rows: list[list[int]], model: str, future: JobFuture, top_k: int = 0) -> list[RowLogprobs]:
        return self.client.prompt_logprobs(rows, model=model, top_k=top_k, abandoned=lambda: future.abandoned)

    # ---- label scoring ---------------------------------------------------------------------------

    def submit_score_labels(
        self, texts: list[str], labels: list[str], *, model: str = BASE, instruction: str | None = None
    ) -> Future[list[dict[str, float]]]:
        """P(label | classification prompt) per text, exactly as ``LocalEngine``: each label's first
        tokens (surface variants pooled) read as ``prompt + [token]`` rows; labels whose first tokens
        collide are scored by the likelihood of the whole label."""
        self._check_model(model)
        self._check_labels(labels)
        if not texts:
            raise InvalidRequestError("texts must not be empty")
        if instruction is not None:
            self._check_text(instruction, "instruction")
        self._check_texts(texts, f"{len(texts)} texts in one request")
        tokenizer = self._require_tokenizer()
        prompts = [self.tokenize(classification_prompt(tokenizer, t, labels, instruction)) for t in texts]
        first = self._label_tokens(tuple(labels))
        if first is None:  # labels share first tokens: the likelihood of each whole label (as LocalEngine)
            end = tokenizer.eos_token or ""
            conts = [tokenizer.encode(label + end, add_special_tokens=False) for label in labels]

            def by_likelihood(future: JobFuture) -> list[dict[str, float]]:
                rows = [p + c for p in prompts for c in conts]
                scored = self._logprobs(rows, model, future)
                out = []
                for i, p in enumerate(prompts):
                    sums = [scored[i * len(conts) + j].logprob_sum(len(p)) for j in range(len(conts))]
                    out.append(dict(zip(labels, _softmax(sums), strict=True)))
                return out

            return self._submit(by_likelihood, "labels", model, len(texts))
        tokens = sorted({t for ids in first for t in ids})

        def by_first_token(future: JobFuture) -> list[dict[str, float]]:
            scored = self._logprobs([[*p, t] for p in prompts for t in tokens], model, future)
            out = []
            for i in range(len(prompts)):
                logprob = {t: self._last(scored[i * len(tokens) + k]) for k, t in enumerate(tokens)}
                pooled = [_logsumexp([logprob[t] for t in ids]) for ids in first]
                out.append(dict(zip(labels, _softmax(pooled), strict=True)))
            return out

        return self._submit(by_first_token, "labels", model, len(texts))

    @staticmethod
    def _last(row: RowLogprobs) -> float:
        position = row.positions[-1]
        if position is None:
            raise UpstreamError("the remote engine gave no log-probability for a scored token")
        return position.token.logprob

    def score_labels(self, texts: list[str], labels: list[str], **kwargs: Any) -> list[dict[str, float]]:
        return self._wait(self.submit_score_labels(texts, labels, **kwargs))

    # ---- continuation scoring --------------------------------------------------------------------

    def submit_score_continuations(
        self,
        prefix: Prompt,
        continuations: list[str],
        *,
        model: str = BASE,
        answer_labels: list[str] | None = None,
    ) -> Future[list[ContinuationScore]]:
        """Each continuation's log-likelihood after ``prefix`` (one ``prefix + continuation`` row each),
        and with ``answer_labels`` P(answer | prefix + continuation) (one more row per answer token)."""
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
        first: list[list[int]] | None = None
        if answer_labels is not None:
            self._check_labels(answer_labels)
            first = self._label_tokens(tuple(answer_labels))
            if first is None:
                raise InvalidRequestError("answer labels must start with different tokens")
        tokens = sorted({t for ids in first for t in ids}) if first is not None else []
        width = max(1, len(tokens))

        def work(future: JobFuture) -> list[ContinuationScore]:
            rows = [[*prefix_ids, *c, t] for c in conts for t in tokens] if tokens else [prefix_ids + c for c in conts]
            scored = self._logprobs(rows, model, future)
            out = []
            for i, c in enumerate(conts):
                group = scored[i * width : (i + 1) * width]
                total = group[0].logprob_sum(len(prefix_ids), len(prefix_ids) + len(c))
                probs = None
                if first is not None and answer_labels is not None:
                    logprob = {t: self._last(row) for t, row in zip(tokens, group, strict=True)}
                    pooled = [_logsumexp([logprob[t] for t in ids]) for ids in first]
                    probs = dict(zip(answer_labels, _softmax(pooled), strict=True))
                out.append(ContinuationScore(logprob=total, n_tokens=len(c), next_label_probs=probs))
            return out

        return self._submit(work, "continuations", model, len(conts))

    def score_continuations(self, prefix: Prompt, continuations: list[str], **kwargs: Any) -> list[ContinuationScore]:
        return self._wait(self.submit_score_continuations(prefix, continuations, **kwargs))

    # ---- here, not remote ------------------------------------------------------------------------

    def embed(self, texts: list[str], *, normalize: bool = True) -> np.ndarray:
        """MiniLM embeddings, computed here on one thread of their own."""
        if len(texts) > self.settings.max_batch_texts * 16:
            raise InputTooLargeError(
                f"{len(texts)} texts to embed; the limit is {self.settings.max_batch_texts * 16}",
                limit=self.settings.max_batch_texts * 16,
                actual=len(texts),
            )
        if threading.current_thread().name.startswith("remote-engine-embed"):
            return self.embedder.embed(texts, normalize=normalize)
        return self._wait(self._torch.submit(self.embedder.embed, texts, normalize=normalize))

    def hidden_states(self, texts: list[str], *, model: str = BASE) -> np.ndarray:
        raise InvalidRequestError(
            "hidden states are not available from a remote engine: an OpenAI-compatible server does not "
            "return them (features for an intent head need DOMAINLLM_ENGINE_BACKEND=local)"
        )
