"""The real server: uvicorn in a subprocess on a loopback port, the real SmolLM2 base model, real HTTP.

What a deployment sees and the unit tests cannot: the factory started by uvicorn's own CLI, the
settings read from the environment, SSE over a socket, raw malformed bytes and megabyte bodies.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.doubles.redis import free_port
from tests.doubles.servers import start_process, stop_process, wait_until_ready

pytestmark = pytest.mark.integration

ADMIN_KEY = "integration-admin-key"
STARTUP_TIMEOUT_S = 90
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
CHAT = {"model": "base", "messages": QUESTION, "max_tokens": 24}


@pytest.fixture(scope="module")
def server(real_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a running server with no adapters; its log is printed if it fails to start."""
    tmp = tmp_path_factory.mktemp("http-server")
    (tmp / "adapters").mkdir()
    port = free_port()
    env = {
        **os.environ,
        "DOMAINLLM_ENVIRONMENT": "test",
        "DOMAINLLM_ADMIN_KEY": ADMIN_KEY,
        "DOMAINLLM_BASE_MODEL": str(real_model_dir),
        "DOMAINLLM_ADAPTERS_DIR": str(tmp / "adapters"),
    }
    log_path = tmp / "server.log"
    command = [sys.executable, "-m", "uvicorn", "apps.server:create_app", "--factory"]
    proc = start_process([*command, "--host", "127.0.0.1", "--port", str(port)], env, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, proc, log_path, STARTUP_TIMEOUT_S)
        yield base
    finally:
        stop_process(proc, timeout=20)
    assert "Traceback" not in log_path.read_text(), log_path.read_text()


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=60, headers={"X-Api-Key": ADMIN_KEY}) as client:
        yield client


def test_models_lists_only_base_without_adapters(http: httpx.Client) -> None:
    assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["base"]
    assert http.get("/healthz").json() == {"status": "ok"}


def test_chat_completion_answers_paris(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert "Paris" in body["choices"][0]["message"]["content"]
    assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] > 0


def test_streamed_chat_completion_answers_paris(http: httpx.Client) -> None:
    events: list[str] = []
    with http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert "Paris" in text
    assert len(chunks) > 3  # token by token, not one blob
    assert chunks[-1]["choices"][0]["finish_reason"] in {"stop", "length"}
    plain = http.post("/v1/chat/completions", json=CHAT).json()["choices"][0]["message"]["content"]
    assert text == plain


def test_text_completion_continues_the_prompt(http: httpx.Client) -> None:
    r = http.post("/v1/completions", json={"model": "base", "prompt": "The capital of France is", "max_tokens": 6})
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["choices"][0]["text"]


def test_a_client_leaving_mid_stream_does_not_hurt_the_server(http: httpx.Client, server: str) -> None:
    story = {"model": "base", "messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 48}
    with (
        httpx.Client(base_url=server, timeout=60, headers={"X-Api-Key": ADMIN_KEY}) as leaving,
        leaving.stream("POST", "/v1/chat/completions", json={**story, "stream": True}) as r,
    ):
        next(r.iter_lines())  # the first event arrived; now hang up
    assert "Paris" in http.post("/v1/chat/completions", json=CHAT).json()["choices"][0]["message"]["content"]


def _admin(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


MB = 1_000_000
BAD_REQUESTS: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    ("unknown-adapter", "POST", "/v1/chat/completions", {"json": {**CHAT, "model": "nope"}}, 404, "available: base"),
    ("empty-messages", "POST", "/v1/chat/completions", {"json": {**CHAT, "messages": []}}, 422, "messages"),
    (
        "empty-content",
        "POST",
        "/v1/chat/completions",
        {"json": {**CHAT, "messages": [{"role": "user", "content": ""}]}},
        422,
        "messages[0].content",
    ),
    (
        "1MB-message",
        "POST",
        "/v1/chat/completions",
        {"json": {**CHAT, "messages": [{"role": "user", "content": "x" * MB}]}},
        413,
        "characters",
    ),
    (
        "body-over-2MB",
        "POST",
        "/v1/chat/completions",
        {"json": {**CHAT, "messages": [{"role": "user", "content": "x" * (3 * MB)}]}},
        413,
        "DOMAINLLM_MAX_BODY_BYTES",
    ),
    (
        "malformed-json",
        "POST",
        "/v1/chat/completions",
        {"content": b'{"model": "base", "messages": [{"role": "user"', "headers": {"content-type": "application/json"}},
        400,
        "malformed JSON",
    ),
    (
        "missing-admin-key",
        "POST",
        "/v1/adapters",
        {"json": {"name": "x", "path": "/tmp"}, "headers": {"X-Api-Key": ""}},  # without the client's key
        401,
        "is required",
    ),
    (
        "wrong-admin-key",
        "DELETE",
        "/v1/adapters/x",
        {"headers": _admin("wrong")},
        401,
        "not valid",
    ),
    (
        "broken-adapter-folder",
        "POST",
        "/v1/adapters",
        {"json": {"name": "ghost", "path": "/nonexistent"}, "headers": _admin(ADMIN_KEY)},
        422,
        "does not exist",
    ),
    (
        "one-label",
        "POST",
        "/v1/classify",
        {"json": {"model": "base", "texts": ["Stocks fell."], "labels": ["negative"]}},
        422,
        "labels",
    ),
    ("n=2", "POST", "/v1/chat/completions", {"json": {**CHAT, "n": 2}}, 400, "n=2"),
    (
        "unknown-role",
        "POST",
        "/v1/chat/completions",
        {"json": {**CHAT, "messages": [{"role": "wizard", "content": "hi"}]}},
        422,
        "role",
    ),
    ("negative-max-tokens", "POST", "/v1/chat/completions", {"json": {**CHAT, "max_tokens": -1}}, 422, "max_tokens"),
    ("temperature-9", "POST", "/v1/chat/completions", {"json": {**CHAT, "temperature": 9}}, 422, "temperature"),
    ("prompt-list-of-2", "POST", "/v1/completions", {"json": {"model": "base", "prompt": ["a", "b"]}}, 400, "list"),
    ("unknown-route", "GET", "/v2/everything", {}, 404, "no route"),
    ("wrong-method", "GET", "/v1/chat/completions", {}, 405, "allowed: POST"),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "needle"), [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_requests_get_a_clear_4xx(
    http: httpx.Client, method: str, path: str, kwargs: dict[str, Any], status: int, needle: str
) -> None:
    r = http.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"], error
    assert error["type"]


def test_metrics_after_traffic(http: httpx.Client) -> None:
    http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2})
    text = http.get("/metrics").text
    assert (
        'domainllm_http_request_duration_seconds_count{adapter="base",method="POST",route="/v1/chat/completions"}'
        in (text)
    )
    assert 'domainllm_http_requests_total{method="POST",route="/v1/chat/completions",status="413"}' in text
    assert "domainllm_batch_size_count" in text
    assert 'route="/v2/everything"' not in text
