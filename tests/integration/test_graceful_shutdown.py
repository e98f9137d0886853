"""Graceful shutdown of the real API: ``domainllm serve`` in a subprocess, SIGTERM while requests
are running and queued in the engine. What a rolling restart under systemd does to a replica.

The engine runs one row at a time (``DOMAINLLM_MAX_BATCH_SIZE=1``), so of three slow completions one
is decoding and two wait in the batcher's queue when the signal lands: all three must still answer
200 in full, while a new connection is refused at once (the load balancer sends it elsewhere).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.doubles.redis import free_port
from tests.doubles.servers import start_process, stop_process, wait_until_ready

pytestmark = pytest.mark.integration

ADMIN_KEY = "graceful-admin-key"
STARTUP_TIMEOUT_S = 60
EXIT_TIMEOUT_S = 45  # the server's grace (30 s) and the engine's close, with room to spare
SLOW_REQUEST_S = 2.0  # about how long each completion should decode
REQUESTS = 3


@dataclass
class Server:
    base: str
    proc: subprocess.Popen[bytes]
    log: Path


@pytest.fixture
def server(tiny_model_dir: Path, redis_url: str, tmp_path: Path) -> Iterator[Server]:
    """``domainllm serve`` on the tiny model, one engine row at a time, a roomy deadline and queue bound."""
    (tmp_path / "adapters").mkdir()
    port = free_port()
    env = {
        **os.environ,
        "DOMAINLLM_ENVIRONMENT": "test",
        "DOMAINLLM_ADMIN_KEY": ADMIN_KEY,
        "DOMAINLLM_BASE_MODEL": str(tiny_model_dir),
        "DOMAINLLM_ADAPTERS_DIR": str(tmp_path / "adapters"),
        "DOMAINLLM_DATA_DIR": str(tmp_path / "data"),
        "DOMAINLLM_REDIS_URL": redis_url,
        "DOMAINLLM_MAX_BATCH_SIZE": "1",
        "DOMAINLLM_ENGINE_DEADLINE_S": "120",
        "DOMAINLLM_ENGINE_MAX_QUEUE_S": "600",
        "DOMAINLLM_SHUTDOWN_GRACE_S": "30",
    }
    log = tmp_path / "server.log"
    console_script = Path(sys.executable).parent / "domainllm"
    proc = start_process([str(console_script), "serve", "--host", "127.0.0.1", "--port", str(port)], env, log)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", proc, log, STARTUP_TIMEOUT_S)
        yield Server(f"http://127.0.0.1:{port}", proc, log)
    finally:
        if proc.poll() is None:
            stop_process(proc, timeout=5)


def _completion(tokens: int) -> dict[str, object]:
    return {"model": "base", "prompt": "Once upon a time", "max_tokens": tokens, "ignore_eos": True}


def _tokens_for(base: str, seconds: float) -> int:
    """How many tokens the tiny model decodes in about ``seconds`` on this machine."""
    probe = 64
    with httpx.Client(base_url=base, timeout=60, headers={"X-Api-Key": ADMIN_KEY}) as http:
        http.post("/v1/completions", json=_completion(probe)).raise_for_status()  # the first pays one-off costs
        started = time.perf_counter()
        http.post("/v1/completions", json=_completion(probe)).raise_for_status()
        per_token = (time.perf_counter() - started) / probe
    return max(16, min(900, int(seconds / per_token)))  # the tiny model holds 1024 positions


def _queue_depth(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    match = re.search(r"^domainllm_queue_depth (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_sigterm_finishes_running_and_queued_requests_and_refuses_new_ones(server: Server) -> None:
    tokens = _tokens_for(server.base, SLOW_REQUEST_S)
    answers: dict[int, httpx.Response | BaseException] = {}

    def send(i: int) -> None:
        try:
            with httpx.Client(base_url=server.base, timeout=120, headers={"X-Api-Key": ADMIN_KEY}) as http:
                answers[i] = http.post("/v1/completions", json=_completion(tokens))
        except BaseException as exc:  # reported below, with the server's log
            answers[i] = exc

    senders = [threading.Thread(target=send, args=(i,)) for i in range(REQUESTS)]
    for sender in senders:
        sender.start()
    deadline = time.monotonic() + 10
    while _queue_depth(server.base) < REQUESTS - 1:  # one decoding, the rest queued behind it
        assert time.monotonic() < deadline, "the requests never queued in the engine"
        time.sleep(0.02)
    assert not answers, "a request finished before the signal: the test would prove nothing"

    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)

    refused_after = None
    while time.monotonic() - signalled < 5:
        try:
            with httpx.Client(timeout=2) as fresh:
                fresh.get(f"{server.base}/healthz")
        except httpx.ConnectError:
            refused_after = time.monotonic() - signalled
            break
        time.sleep(0.05)
    assert refused_after is not None, "new connections were still accepted 5 s after SIGTERM"
    assert len(answers) < REQUESTS, "every request finished before the listener closed: nothing was in flight"

    for sender in senders:
        sender.join(timeout=EXIT_TIMEOUT_S)
    log = server.log.read_text()
    for i in range(REQUESTS):
        answer = answers.get(i)
        assert isinstance(answer, httpx.Response), f"request {i}: {answer!r}\n{log[-5000:]}"
        assert answer.status_code == 200, f"request {i}: {answer.status_code} {answer.text}\n{log[-5000:]}"
        assert answer.json()["usage"]["completion_tokens"] == tokens  # decoded in full, not cut short

    # uvicorn re-raises the signal it caught once it is done: a clean stop to systemd (SuccessExitStatus)
    assert server.proc.wait(timeout=EXIT_TIMEOUT_S) in (0, -signal.SIGTERM), log[-5000:]
    log = server.log.read_text()
    assert "Waiting for connections to close" in log, log[-5000:]
    assert "Application shutdown complete" in log, log[-5000:]  # the lifespan closed the engine after the drain
    assert "Traceback" not in log, log[-5000:]
