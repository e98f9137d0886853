"""The HTTP side of ``core.remote_engine``: its settings, the OpenAI/vLLM wire format it speaks, the
remote's model list, and the mapping of every remote failure onto the suite's error tree.

    client = RemoteClient(RemoteSettings())           # DOMAINLLM_REMOTE_URL, DOMAINLLM_REMOTE_API_KEY, ...
    client.refresh_models()                           # GET /v1/models: the base model and the adapters
    client.completion({"model": "sentiment", "prompt": "...", "max_tokens": 8}, model="sentiment")
    client.prompt_logprobs([[1, 2, 3]], model="base", top_k=0)

Failures: unreachable, too slow, 5xx or 429 -> ``EngineOverloadedError`` (503, Retry-After); 400,
413, 422 (the remote refused the request) -> ``InvalidRequestError``; 404 for a named model ->
``AdapterNotFoundError``; 401/403, or an answer of the wrong shape -> ``UpstreamError``.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.adapters import BASE
from core.errors import (
    AdapterNotFoundError,
    DomainLLMError,
    EngineOverloadedError,
    InvalidRequestError,
    UpstreamError,
)
from core.logprobs import MAX_TOP_LOGPROBS, PositionLogprobs, RowLogprobs, TokenLogprob

log = logging.getLogger(__name__)

MESSAGE_CHARS = 300  # of a remote error message, quoted in ours
UNREACHABLE_RETRY_S = 5  # Retry-After when the remote cannot be reached at all


class RemoteSettings(BaseSettings):
    """Where the remote engine is and how to talk to it (env prefix ``DOMAINLLM_REMOTE_``)."""

    model_config = SettingsConfigDict(env_prefix="DOMAINLLM_REMOTE_", extra="ignore", env_file=".env")

    url: str = Field(
        "http://127.0.0.1:8001",
        description="Base URL of the OpenAI-compatible server, with or without the trailing /v1.",
    )
    api_key: SecretStr | None = Field(None, description="Sent as `Authorization: Bearer` (vLLM's --api-key).")
    base_model: str | None = Field(
        None,
        description="The remote's name for the base model (vLLM's --served-model-name); default: the model "
        "in its /v1/models without a parent.",
    )
    tokenizer_path: Path | None = Field(
        None,
        description="A folder with the base model's tokenizer files (the weights are not needed); default: "
        "the core settings' base model folder.",
    )
    connect_timeout_s: float = Field(5.0, gt=0, le=600)
    timeout_s: float = Field(
        120.0, gt=0, le=3600, description="Longest wait for an answer, or between two streamed chunks."
    )
    max_concurrency: int = Field(64, ge=1, le=4096, description="Requests in flight to the remote at once.")
    max_queue: int = Field(
        1024, ge=0, le=1_000_000, description="Requests waiting for a free connection; past it, 503 at once."
    )
    rows_per_request: int = Field(
        64, ge=1, le=4096, description="Token-id prompts per scoring request (their log-probs come back per token)."
    )
    models_ttl_s: float = Field(10.0, ge=0, le=3600, description="How long the remote's model list is reused.")
    startup_wait_s: float = Field(
        300.0, ge=0, le=86_400, description="warm_up waits this long for the remote to answer (vLLM loads for minutes)."
    )

    @field_validator("url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        url = value.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError("DOMAINLLM_REMOTE_URL must start with http:// or https://")
        return url.removesuffix("/v1")


def message_of(response: httpx.Response) -> str:
    """The error message in a remote's error body: vLLM's ``{"error": {"message"}}`` (before 0.10:
    ``{"message"}``) and this project's ``{"error": {"message"}}``; else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:MESSAGE_CHARS].strip() or response.reason_phrase
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        message = inner.get("message") if isinstance(inner, dict) else None
        if isinstance(message, str) and message:
            return message[:MESSAGE_CHARS]
    return json.dumps(body)[:MESSAGE_CHARS]


def row_of(row: list[int], choice: dict[str, Any], top_k: int) -> RowLogprobs:
    """One token-id prompt's ``RowLogprobs`` from its choice's ``prompt_logprobs``: per position,
    ``{token id: {logprob, rank, decoded_token}}`` holding the prompt token and the ``top_k`` most
    likely ones (vLLM's ``Logprob``); the first position is null."""
    entries = choice.get("prompt_logprobs")
    if not isinstance(entries, list) or len(entries) != len(row):
        raise UpstreamError(
            "the remote engine's answer has no prompt_logprobs for each prompt token (vLLM >= 0.10.2 is needed)"
        )
    positions: list[PositionLogprobs | None] = [None]
    pieces: dict[int, str] = {}
    for p in range(1, len(row)):
        if not isinstance(entries[p], dict):
            raise UpstreamError(f"the remote engine's prompt_logprobs hold no entry at position {p}")
        at = {int(k): v for k, v in entries[p].items()}
        own = at.get(row[p])
        if own is None:
            raise UpstreamError(f"the remote engine's prompt_logprobs lack the prompt token at position {p}")
        ranked = sorted((v.get("rank") or MAX_TOP_LOGPROBS + 1, t) for t, v in at.items())
        top = [TokenLogprob(t, float(at[t]["logprob"]), int(rank)) for rank, t in ranked[:top_k]]
        token = TokenLogprob(row[p], float(own["logprob"]), int(own.get("rank") or 0))
        positions.append(PositionLogprobs(token, top))
        pieces.update({t: str(v.get("decoded_token") or "") for t, v in at.items()})
    return RowLogprobs(token_ids=list(row), positions=positions, text=str(choice.get("text") or ""), pieces=pieces)


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON payloads of an OpenAI event stream, up to ``data: [DONE]``."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


class RemoteClient:
    """One connection pool to the remote, and what it serves (read from /v1/models, kept
    ``models_ttl_s``). Thread-safe; ``__init__`` connects to nothing."""

    def __init__(
        self, remote: RemoteSettings, *, http: httpx.Client | None = None, deadline_retry_s: float = 1
    ) -> None:
        self.remote = remote
        self.url = remote.url
        self.deadline_retry_s = deadline_retry_s  # Retry-After for a remote that answered too slowly
        headers = {"Authorization": f"Bearer {remote.api_key.get_secret_value()}"} if remote.api_key else {}
        self._owns_http = http is None  # a client handed in (a test's) is closed by its owner
        self._http = http or httpx.Client(
            base_url=remote.url,
            headers=headers,
            timeout=httpx.Timeout(remote.timeout_s, connect=remote.connect_timeout_s),
            limits=httpx.Limits(max_connections=remote.max_concurrency),
            transport=httpx.HTTPTransport(retries=1),  # a refused connect is tried once more
        )
        self.base_id = remote.base_model or ""  # the remote's name for the base model
        self.base_name = ""  # the base model's folder (or hub) name, as LocalEngine.base_model_name
        self._cards: dict[str, dict[str, Any]] = {}  # adapter name -> its /v1/models entry
        self._cards_at = -math.inf
        self._cards_lock = threading.Lock()
        self._refreshing = False

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    # ---- requests --------------------------------------------------------------------------------

    def _transport_error(self, exc: httpx.TransportError) -> EngineOverloadedError:
        if isinstance(exc, httpx.TimeoutException):
            return EngineOverloadedError(
                f"the remote engine at {self.url} did not answer within {self.remote.timeout_s:g} s "
                f"({type(exc).__name__}); retry shortly",
                retry_after_s=self.deadline_retry_s,
            )
        reason = str(exc) or type(exc).__name__
        return EngineOverloadedError(
            f"the remote engine at {self.url} cannot be reached ({reason}); retry shortly",
            retry_after_s=UNREACHABLE_RETRY_S,
        )

    def _raise_for_status(self, response: httpx.Response, model: str | None) -> None:
        status = response.status_code
        if status < 400:
            return
        message = message_of(response)
        where = f"the remote engine at {self.url}"
        if status == 404 and model is not None:
            self.refresh_models(quiet=True)  # the remote no longer serves it (unloaded): forget it here too
            raise AdapterNotFoundError(model, self.names())
        if status in (401, 403):
            raise UpstreamError(
                f"{where} refused our credentials ({status}: {message}); check DOMAINLLM_REMOTE_API_KEY"
            )
        if status == 429 or status >= 500:
            retry = response.headers.get("retry-after", "")
            advice = "" if "retry" in message.lower() else "; retry shortly"
            raise EngineOverloadedError(
                f"{where} answered {status}: {message}{advice}",
                retry_after_s=float(retry) if retry.isdigit() else 1,
            )
        if status in (400, 413, 422):
            raise InvalidRequestError(f"{where} refused the request ({status}): {message}")
        raise UpstreamError(f"{where} answered {status}: {message}")

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, *, model: str | None = None) -> Any:
        """The JSON answer to one request; ``model`` (ours: an adapter or "base") names what a 404 means."""
        try:
            response = self._http.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        self._raise_for_status(response, model)
        try:
            return response.json()
        except ValueError:
            raise UpstreamError(
                f"the remote engine at {self.url} answered {path} with something that is not JSON"
            ) from None

    def completion(self, body: dict[str, Any], *, model: str) -> dict[str, Any]:
        """POST /v1/completions for ``model`` (ours; sent as the remote's name), not streamed."""
        answer = self.request("POST", "/v1/completions", {**body, "model": self.remote_name(model)}, model=model)
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list) or not answer["choices"]:
            raise UpstreamError("the remote engine's completion holds no choices")
        return answer

    def stream_completion(
        self, body: dict[str, Any], *, model: str, on_text: Callable[[str], None], stop: Callable[[], bool]
    ) -> tuple[str, str | None, list[int] | None]:
        """POST /v1/completions with ``stream: true``: each chunk's text to ``on_text``; returns the text,
        the finish reason ("cancelled" once ``stop()`` said so: the connection is closed, which makes
        vLLM abort the request) and the token ids (None when the remote sent none)."""
        parts: list[str] = []
        ids: list[int] = []
        finish: str | None = None
        saw_ids = False
        payload = {**body, "model": self.remote_name(model), "stream": True}
        try:
            with self._http.stream("POST", "/v1/completions", json=payload) as response:
                if response.status_code >= 400:
                    response.read()
                    self._raise_for_status(response, model)
                for data in sse_events(response.iter_lines()):
                    if stop():
                        return "".join(parts), "cancelled", ids if saw_ids else None
                    if isinstance(data.get("error"), dict):  # failed after the 200: reported in-band
                        message = data["error"].get("message") or data["error"]
                        raise EngineOverloadedError(f"the remote engine failed mid-stream: {message}")
                    for choice in data.get("choices") or []:
                        if choice.get("text"):
                            parts.append(choice["text"])
                            on_text(choice["text"])
                        if choice.get("token_ids") is not None:
                            saw_ids = True
                            ids.extend(choice["token_ids"])
                        finish = choice.get("finish_reason") or finish
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        return "".join(parts), finish, ids if saw_ids else None

    def prompt_logprobs(
        self, rows: list[list[int]], *, model: str, top_k: int, abandoned: Callable[[], bool] = lambda: False
    ) -> list[RowLogprobs]:
        """Score token-id prompts (``echo: true, max_tokens: 0, prompt_logprobs: top_k``), at most
        ``rows_per_request`` per request; stops early (returning what it has) once ``abandoned()``."""
        out: list[RowLogprobs] = []
        step = self.remote.rows_per_request
        for start in range(0, len(rows), step):
            if abandoned():
                break
            part = rows[start : start + step]
            body = {
                "prompt": part,
                "echo": True,
                "max_tokens": 0,
                "temperature": 0.0,
                "prompt_logprobs": top_k,
                "add_special_tokens": False,
            }
            choices = sorted(self.completion(body, model=model)["choices"], key=lambda c: int(c["index"]))
            if len(choices) != len(part):
                raise UpstreamError(f"the remote engine answered {len(choices)} choices for {len(part)} prompts")
            out.extend(row_of(row, choice, top_k) for row, choice in zip(part, choices, strict=True))
        return out

    # ---- the served models -----------------------------------------------------------------------

    def refresh_models(self, *, quiet: bool = False) -> None:
        """Read /v1/models: the base model (named by ``DOMAINLLM_REMOTE_BASE_MODEL``, else the first
        entry without a parent) and one adapter per other entry with a parent. ``quiet``: on failure
        log it and keep the list as it was."""
        try:
            self._read_models()
        except DomainLLMError as exc:
            if not quiet:
                raise
            log.warning("cannot read the remote engine's models: %s", exc.message)

    def _read_models(self) -> None:
        listing = self.request("GET", "/v1/models")
        data = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(data, list):
            raise UpstreamError("the remote engine's /v1/models is not an OpenAI model list")
        cards = [c for c in data if isinstance(c, dict) and isinstance(c.get("id"), str)]
        bases = [c for c in cards if not c.get("parent")]
        if self.remote.base_model:
            chosen = next((c for c in cards if c["id"] == self.remote.base_model), None)
            if chosen is None:
                raise UpstreamError(
                    f"the remote serves {', '.join(c['id'] for c in cards) or 'nothing'}; "
                    f"DOMAINLLM_REMOTE_BASE_MODEL={self.remote.base_model} is not among them"
                )
        elif bases:
            chosen = bases[0]
        else:
            raise UpstreamError("the remote engine's /v1/models lists no base model (every entry has a parent)")
        base_ids = {c["id"] for c in bases} | {chosen["id"]}
        with self._cards_lock:
            self.base_id = chosen["id"]
            self.base_name = Path(str(chosen.get("root") or chosen["id"])).name  # vLLM's root: a path or hub id
            self._cards = {c["id"]: c for c in cards if c["id"] not in base_ids and c["id"] != BASE}
            self._cards_at = time.monotonic()

    def models(self) -> dict[str, dict[str, Any]]:
        """The remote's adapters ({name: its /v1/models entry}) as last read. A stale list is re-read
        in the background: a route asking ``has_model`` on the event loop never waits on the network."""
        if time.monotonic() - self._cards_at > self.remote.models_ttl_s:
            self._refresh_soon()
        with self._cards_lock:
            return dict(self._cards)

    def names(self) -> list[str]:
        return [BASE, *self.models()]

    def remote_name(self, model: str) -> str:
        """The remote's name for ``model``: the base model's for ``"base"``, an adapter's own."""
        return self.base_id if model == BASE else model

    def _refresh_soon(self) -> None:
        with self._cards_lock:
            if self._refreshing:
                return
            self._refreshing = True

        def run() -> None:
            try:
                self.refresh_models(quiet=True)
            finally:
                with self._cards_lock:
                    self._refreshing = False
                    self._cards_at = max(self._cards_at, time.monotonic())  # after a failed read, wait a TTL too

        threading.Thread(target=run, name="remote-engine-models", daemon=True).start()
