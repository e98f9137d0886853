"""The intent of each customer message, from the head fitted next to the support adapter.

``finetune`` fits a banking77 logistic-regression head on [MiniLM embedding, mean hidden state with
the adapter on] and saves it as ``intent_head.npz`` in the adapter folder, with a recipe naming its
feature parts in order. This module rebuilds those features through the engine and applies the
head. Without the adapter or its head there is no intent (``None``), and the bot says so in stats.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.heads import LinearHead

log = logging.getLogger(__name__)

HEAD_FILE = "intent_head.npz"


@dataclass(frozen=True)
class Intent:
    name: str
    confidence: float


class IntentClassifier:
    """``classify(texts)`` -> one ``Intent`` per text, or ``None`` per text when no head is loaded."""

    def __init__(self, engine: Any, adapter: str) -> None:
        self._engine = engine
        self._adapter = adapter
        self._head: LinearHead | None = None
        self._loaded = False

    def _load(self) -> LinearHead | None:
        if self._loaded:
            return self._head
        self._loaded = True
        if not self._engine.has_model(self._adapter) or self._engine.registry is None:
            log.warning("no %r adapter: messages get no intent", self._adapter)
            return None
        path: Path = self._engine.registry.info(self._adapter).path / HEAD_FILE
        if not path.is_file():
            log.warning("adapter %r has no %s: messages get no intent", self._adapter, HEAD_FILE)
            return None
        head = LinearHead.load(path)
        parts = [p["name"] for p in head.recipe.get("parts", [])]
        if parts != ["minilm", "hidden"]:
            log.warning("intent head %s wants features %s, which this version cannot build", path, parts)
            return None
        self._head = head
        return head

    @property
    def available(self) -> bool:
        return self._load() is not None

    def classify(self, texts: list[str]) -> list[Intent | None]:
        head = self._load()
        if head is None or not texts:
            return [None] * len(texts)
        minilm = self._engine.embed(texts)  # [n, 384], unit-normalised
        hidden = self._engine.hidden_states(texts, model=self._adapter)  # [n, hidden]
        probs = head.predict_proba(np.concatenate([minilm, hidden], axis=1))  # [n, classes]
        best = probs.argmax(axis=1)
        return [Intent(head.classes[int(i)], float(p[int(i)])) for i, p in zip(best, probs, strict=True)]
