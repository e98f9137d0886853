"""Servers for the tests: start a subprocess with its output in a log, wait until a server in it
answers ``/readyz``, and stop it (terminate, then kill if it lingers); wait for an in-process app."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from core.config import PROJECT_ROOT

# Default headers of an in-process client: the tests' admin key (DOMAINLLM_ADMIN_KEY in conftest), which
# admits every scope of the default tenant. A test of the refusals overrides it ("X-Api-Key": "").
KEYED = {"X-Api-Key": "test-admin-key"}


def start_process(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Run ``cmd`` from the project root, its stdout and stderr appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """Terminate ``proc``; kill it if it has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until_ready(base: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float, every: float = 0.2) -> None:
    """Poll ``{base}/readyz`` until it answers 200; fail the test (with the log) if ``proc`` exits
    or ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"server not ready in {timeout_s}s:\n{log.read_text()[-5000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(every)


def wait_ready(client: TestClient, timeout: float = 30.0) -> None:
    """Wait until the app behind ``client`` answers ``/readyz`` with 200 (its engine has loaded)."""
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.02)


def bearer(key: str) -> dict[str, str]:
    """The ``Authorization`` header for an API key."""
    return {"Authorization": f"Bearer {key}"}


def new_key(client: Any, admin: str, scope: str) -> str:
    """A fresh key of ``scope`` for the tenant of the ``admin`` key (POST /v1/keys)."""
    r = client.post("/v1/keys", json={"scope": scope}, headers=bearer(admin))
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def answer_problem(status: str, retry_after: bool) -> str | None:
    """Why an HTTP answer under load breaks the API's promise (a 2xx, or a 429/503 that says when to
    come back with ``Retry-After``), or None when it keeps it. ``status`` is the code as text; a
    request that got no answer is the caller's to judge."""
    if status.startswith("2"):
        return None
    if status in {"429", "503"}:
        return None if retry_after else f"{status} without Retry-After"
    if status.startswith("5"):
        return f"{status} (5xx)"
    return f"{status} (unexpected 4xx)"
