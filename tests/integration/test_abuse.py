"""Abuse, over real sockets: uvicorn serving the app on loopback (in a thread of this process, so the
test can hold the engine's worker and watch its queue), the tiny random model, real Redis.

* a full engine queue answers 503 with Retry-After at once, streams included, and /healthz stays up;
* a wait past the engine deadline is a 503, and its job never runs;
* a client that disconnects is cancelled: a queued job leaves the queue, a running generation stops;
* a half-sent body gets a 408; a 2 MB body a 413, and no tokeniser runs on either (nor on the loop);
* a tenant that has spent its daily token budget gets a 429 until midnight UTC.

Nothing here is timed: the engine is held by a gate job while the test looks at its queue, and every
wait is a poll with a generous limit. figures under load: bench/abuse_bench.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from pydantic import SecretStr

from apps.server import create_app
from apps.settings import AppSettings
from apps.support.settings import SupportSettings
from apps.tenants.budget import seconds_to_utc_midnight
from core.config import Settings
from core.engine import LocalEngine
from tests.doubles.redis import free_port

pytestmark = pytest.mark.integration

KEY = "test-admin-key"
HEADERS = {"X-Api-Key": KEY}
DEADLINE_S = 2.0
BODY_TIMEOUT_S = 1.0
LIMIT_S = 10.0  # the most any poll below waits for what it expects
LABELS = ["negative", "positive"]
CLASSIFY = {"model": "base", "texts": ["The market fell."], "labels": LABELS}
CHAT = {"model": "base", "messages": [{"role": "user", "content": "Where is my order?"}], "max_tokens": 8}


def app_settings(base: Settings, tmp: Path, **core: Any) -> AppSettings:
    run = uuid.uuid4().hex[:8]
    settings = AppSettings.of(
        base.model_copy(update=core),
        operator_key=SecretStr("abuse-operator-key"),
        tenancy_namespace=f"abuse-tenancy-{run}",
        support=SupportSettings(namespace=f"abuse-support-{run}", kb_dir=tmp / "kb"),
    )
    settings.sentiment.namespace = f"abuse-sentiment-{run}"
    settings.sentiment.inbox_dir = tmp / "inbox"
    settings.recommend.namespace = f"abuse-recommend-{run}"
    return settings


@pytest.fixture(scope="module")
def base_settings(
    tiny_model_dir: Path, tiny_adapters: dict[str, Path], redis_url: str, tmp_path_factory: Any
) -> Settings:
    return Settings(
        environment="test",
        data_dir=tmp_path_factory.mktemp("abuse") / "data",
        base_model=str(tiny_model_dir),
        adapters_dir=tiny_adapters["alpha"].parent,
        admin_key=KEY,
        redis_url=redis_url,
        batch_wait_ms=2,
    )


@pytest.fixture(scope="module")
def live(base_settings: Settings, tmp_path_factory: Any) -> Iterator[tuple[str, LocalEngine]]:
    """(base URL, engine) of the app under uvicorn: a queue bound of 50 ms of work, a 2 s engine
    deadline and a 1 s body read timeout, so that every limit is reached in a test's time."""
    settings = app_settings(
        base_settings,
        tmp_path_factory.mktemp("abuse-live"),
        engine_max_queue_s=0.05,
        engine_deadline_s=DEADLINE_S,
        body_read_timeout_s=BODY_TIMEOUT_S,
    )
    engine = LocalEngine(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, engine=engine), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="abuse-uvicorn", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        until(lambda: _ready(base), "the server was not ready", limit=60)
        yield base, engine
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        engine.close()


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def until(check: Callable[[], Any], what: str, limit: float = LIMIT_S) -> None:
    give_up = time.monotonic() + limit
    while not check():
        assert time.monotonic() < give_up, what
        time.sleep(0.01)


class Gate:
    """Holds the engine's worker with a solo job until released: what is queued meanwhile stays queued."""

    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine
        self.release = threading.Event()
        # a kind of its own each time: an unmeasured kind's remaining time counts as nothing in the bound
        kind = f"gate-{uuid.uuid4().hex[:6]}"
        self.job = engine._batcher.submit_solo(lambda: self.release.wait(60), kind=kind, bounded=False)
        until(self.job.running, "the gate job did not start")

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *_: object) -> None:
        self.release.set()
        self.job.result(timeout=LIMIT_S)


def queued(engine: LocalEngine) -> int:
    return engine._batcher.queued_jobs


def ran_since(engine: LocalEngine, before: int, kind: str) -> list[tuple[str, int]]:
    return [b for b in engine.recent_batches[before:] if b[0] == kind]


def raw_request(base: str, path: str, body: bytes, *, declared: int | None = None) -> socket.socket:
    """A socket that has sent a POST with ``body`` (and Content-Length ``declared``, default its length)."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=LIMIT_S)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nX-Api-Key: {KEY}\r\n"
        f"Content-Length: {len(body) if declared is None else declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def client_gone(route: str) -> float:
    """Requests to ``route`` that ended because their client left (recorded as 499)."""
    labels = {"method": "POST", "route": route, "status": "499"}
    return REGISTRY.get_sample_value("domainllm_http_requests_total", labels) or 0.0


# ---- a full queue, a passed deadline ------------------------------------------------------------


def test_a_full_queue_is_a_503_with_retry_after_and_healthz_answers(live: tuple[str, LocalEngine]) -> None:
    base, engine = live
    big = {**CLASSIFY, "texts": [f"Shares fell {i}%." for i in range(256)]}
    with httpx.Client(base_url=base, headers=HEADERS, timeout=LIMIT_S) as http, ThreadPoolExecutor(1) as pool:
        with Gate(engine):
            first: Future[httpx.Response] = pool.submit(
                httpx.post, f"{base}/v1/classify", json=big, headers=HEADERS, timeout=LIMIT_S
            )
            until(lambda: queued(engine) == 8, "the 256 texts were not queued as 8 chunks")
            for path, body in (("/v1/classify", CLASSIFY), ("/v1/chat/completions", {**CHAT, "stream": True})):
                r = http.post(path, json=body)
                assert r.status_code == 503, r.text  # refused at once, a stream included: no 200 to break later
                assert r.json()["error"]["type"] == "overloaded" and "DOMAINLLM_ENGINE_MAX_QUEUE_S" in r.text
                assert int(r.headers["retry-after"]) >= 1
            assert http.get("/healthz").status_code == 200
        assert first.result().status_code == 200  # the admitted request is served once the engine is free


def test_a_wait_past_the_deadline_is_a_503_and_its_job_never_runs(live: tuple[str, LocalEngine]) -> None:
    base, engine = live
    with httpx.Client(base_url=base, headers=HEADERS, timeout=LIMIT_S) as http:
        with Gate(engine):
            before = len(engine.recent_batches)
            r = http.post("/v1/classify", json=CLASSIFY)  # admitted (nothing queued), then waits DEADLINE_S
            assert r.status_code == 503 and f"did not answer within {DEADLINE_S:g} s" in r.text
            assert int(r.headers["retry-after"]) >= 1
            assert queued(engine) == 0  # cancelled before the answer went out
        assert http.post("/v1/classify", json=CLASSIFY).status_code == 200
    assert ran_since(engine, before, "labels") == [("labels", 1)]  # the next request's row only


# ---- clients that leave ------------------------------------------------------------------------


def test_a_client_that_disconnects_while_queued_takes_its_job_out(live: tuple[str, LocalEngine]) -> None:
    base, engine = live
    gone = client_gone("/v1/classify")
    with Gate(engine):
        before = len(engine.recent_batches)
        sock = raw_request(base, "/v1/classify", json.dumps(CLASSIFY).encode())
        until(lambda: queued(engine) == 1, "the request was not queued")
        sock.close()
        until(lambda: queued(engine) == 0, "the job stayed queued after its client left")
        until(lambda: client_gone("/v1/classify") == gone + 1, "not cancelled as a client gone (the deadline did it?)")
    assert ran_since(engine, before, "labels") == []


def test_a_client_that_disconnects_stops_its_running_generation(
    live: tuple[str, LocalEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, engine = live
    decode = engine.tokenizer.decode

    def slow_decode(*args: Any, **kwargs: Any) -> Any:  # each step ≥ 5 ms: 1024 tokens take ≥ 5 s
        time.sleep(0.005)
        return decode(*args, **kwargs)

    monkeypatch.setattr(engine.tokenizer, "decode", slow_decode)
    done: list[Any] = []
    run = engine._run_generate
    monkeypatch.setattr(engine._batcher, "_handlers", {**engine._batcher._handlers, "generate": spy(run, done)})
    gone = client_gone("/v1/chat/completions")
    sock = raw_request(base, "/v1/chat/completions", json.dumps({**CHAT, "max_tokens": 1024}).encode())
    until(lambda: engine._batcher.busy, "the generation did not start")
    sock.close()
    until(lambda: done, "the generation did not end")
    (completion,) = done[0]
    assert completion.finish_reason == "cancelled" and completion.completion_tokens < 1024
    until(lambda: client_gone("/v1/chat/completions") == gone + 1, "not cancelled as a client gone (the deadline?)")


def spy(run: Callable[[Any], list[Any]], into: list[Any]) -> Callable[[Any], list[Any]]:
    def wrapped(jobs: Any) -> list[Any]:
        out = run(jobs)
        into.append(out)
        return out

    return wrapped


# ---- bodies ------------------------------------------------------------------------------------


def test_a_half_sent_body_gets_a_408(live: tuple[str, LocalEngine]) -> None:
    base, _ = live
    sock = raw_request(base, "/v1/classify", b'{"model": "base", ', declared=2000)  # and then nothing
    reply = b""
    with sock:  # the server answers and closes the connection (the rest of the body never came)
        while chunk := sock.recv(4096):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), reply
    assert json.loads(body)["error"]["type"] == "request_timeout"


def test_a_2mb_body_is_refused_before_any_tokeniser_runs(
    live: tuple[str, LocalEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, engine = live
    calls: list[bool] = []  # one per encode: whether it ran on an event loop
    encode = engine.tokenizer.encode

    def spy_encode(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            calls.append(True)
        except RuntimeError:
            calls.append(False)
        return encode(*args, **kwargs)

    monkeypatch.setattr(engine.tokenizer, "encode", spy_encode)
    two_mb = 2 * 1024 * 1024
    huge = "x" * 1_900_000  # a body under the 2,000,000-byte limit, one text far over the character limit
    with httpx.Client(base_url=base, headers=HEADERS, timeout=LIMIT_S) as http:
        for path, body in (
            ("/v1/classify", {**CLASSIFY, "texts": ["y" * two_mb]}),
            ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "y" * two_mb}]}),
            ("/v1/classify", {**CLASSIFY, "texts": [huge]}),
            ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": huge}]}),
        ):
            r = http.post(path, json=body)
            assert r.status_code == 413 and r.json()["error"]["type"] == "input_too_large", r.text[:200]
        sent = json.dumps({**CLASSIFY, "texts": ["y" * two_mb]}).encode()
        r = http.post("/v1/classify", content=iter([sent[: len(sent) // 2], sent[len(sent) // 2 :]]))  # no length
        assert r.status_code == 413
        assert calls == []  # no tokeniser ran for any of them
        assert http.post("/v1/classify", json=CLASSIFY).status_code == 200
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert calls and not any(calls)  # a request that is served is tokenised, and never on the event loop


# ---- the daily token budget --------------------------------------------------------------------


def test_a_tenant_over_its_daily_token_budget_gets_a_429_until_midnight_utc(
    base_settings: Settings, redis_url: str, tmp_path: Path
) -> None:
    settings = app_settings(base_settings, tmp_path, tenant_daily_tokens=100)
    spent = 0
    with TestClient(create_app(settings), headers=HEADERS) as c:
        until(lambda: c.get("/readyz").status_code == 200, "not ready", limit=60)
        for _ in range(20):  # each chat uses some 30-40 tokens; counts land just after each answer
            r = c.post("/v1/chat/completions", json=CHAT)
            if r.status_code != 200:
                break
            spent += r.json()["usage"]["total_tokens"]
        assert r.status_code == 429, r.text
        assert r.json()["error"]["type"] == "quota_exceeded" and spent >= 100
        assert abs(int(r.headers["retry-after"]) - seconds_to_utc_midnight(time.time())) <= 5
        assert c.post("/v1/classify", json=CLASSIFY).status_code == 200  # classification is not budgeted
        with redis.Redis.from_url(redis_url, decode_responses=True) as client:
            (key,) = client.keys(f"{settings.tenancy_namespace}:tokens:default:*")
            until(lambda: int(client.get(key) or 0) == spent, "the tokens used were not all counted")
            assert 0 < client.ttl(key) <= 2 * 86_400
