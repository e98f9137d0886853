"""Small stand-ins for the recommend tests and bench: a bag-of-words embedder (no model to load) (the embedded Redis is tests.doubles.redis)."""

from __future__ import annotations

import hashlib
import re

import numpy as np


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
