"""Zero-shot topics by embedding similarity (all-MiniLM-L6-v2 through ``Engine.embed``).

Each topic is described by a few short phrases; a headline gets the topics whose best phrase is at
least ``threshold`` cosine-similar, best first, at most ``max_topics``. Chosen over asking the
adapter because it needs no training, costs one small encoder pass per batch (not a forward of the
LLM per topic), and a new topic is one line of YAML. Its accuracy on the project's hand-labelled
headlines is measured by ``evaluate_topics`` (see tests/unit/test_sentiment_enrich.py and README).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apps.sentiment.config import TopicConfig

EmbedFn = Callable[[list[str]], np.ndarray]  # texts -> [n, dim], unit rows


@dataclass(frozen=True)
class TopicScore:
    topic: str
    score: float


class TopicClassifier:
    method = "embedding:all-MiniLM-L6-v2"

    def __init__(self, config: TopicConfig, embed: EmbedFn) -> None:
        self.config = config
        self._embed = embed
        self._phrases: list[str] = []
        self._owner: list[int] = []  # phrase index -> topic index
        self.topics = list(config.labels)
        for t, phrases in enumerate(config.labels.values()):
            self._phrases += phrases
            self._owner += [t] * len(phrases)
        self._matrix: np.ndarray | None = None  # [phrases, dim]
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        with self._lock:
            if self._matrix is None:
                self._matrix = self._embed(self._phrases)

    def similarities(self, texts: list[str]) -> np.ndarray:
        """[texts, topics]: each topic's best phrase similarity."""
        self.warm_up()
        assert self._matrix is not None
        sims = self._embed(texts) @ self._matrix.T  # [texts, phrases]
        owner = np.asarray(self._owner)
        return np.stack([sims[:, owner == t].max(axis=1) for t in range(len(self.topics))], axis=1)

    def classify(self, texts: list[str]) -> list[list[TopicScore]]:
        if not texts:
            return []
        out = []
        for row in self.similarities(texts):
            order = np.argsort(-row)[: self.config.max_topics]
            out.append([TopicScore(self.topics[i], round(float(row[i]), 4)) for i in order
                        if row[i] >= self.config.threshold])  # fmt: skip
        return out


def evaluate_topics(classifier: TopicClassifier, labelled: Path) -> dict[str, float]:
    """Top-1 accuracy (and coverage: share given any topic) on a JSONL of {title, topic}."""
    rows = [json.loads(line) for line in labelled.read_text(encoding="utf-8").splitlines() if line.strip()]
    sims = classifier.similarities([r["title"] for r in rows])
    top1 = [classifier.topics[int(i)] for i in sims.argmax(axis=1)]
    predicted = classifier.classify([r["title"] for r in rows])
    hits = sum(p == r["topic"] for p, r in zip(top1, rows, strict=True))
    thresholded = sum(bool(p) and p[0].topic == r["topic"] for p, r in zip(predicted, rows, strict=True))
    return {
        "n": len(rows),
        "top1_accuracy": hits / len(rows),
        "accuracy_at_threshold": thresholded / len(rows),
        "coverage": sum(bool(p) for p in predicted) / len(rows),
    }
