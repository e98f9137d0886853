"""The intent of each customer message, from the head fitted next to the support adapter.

``finetune`` fits a banking77 logistic-regression head on [MiniLM embedding, mean hidden state with
the adapter on] and saves it as ``domains.support.INTENT_HEAD_FILE`` in the adapter folder, with a
recipe naming its feature parts in order (``domains.support.INTENT_FEATURES``). This module finds it
through the engine (``Engine.adapter_file``), rebuilds those features through the engine and applies
the head. Without the adapter or its head there is no intent (``None``), and the bot says so in stats.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from core.heads import LinearHead
from core.interface import Engine
from domains.support import INTENT_FEATURES, INTENT_HEAD_FILE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Intent:
    name: str
    confidence: float


class IntentClassifier:
    """``classify(texts)`` -> one ``Intent`` per text, or ``None`` per text when no head is loaded."""

    def __init__(self, engine: Engine, adapter: str) -> None:
        self._engine = engine
        self._adapter = adapter
        self._head: LinearHead | None = None
        self._loaded = False

    def _load(self) -> LinearHead | None:
        if self._loaded:
            return self._head
        self._loaded = True
        if not self._engine.has_model(self._adapter):
            log.warning("no %r adapter: messages get no intent", self._adapter)
            return None
        path = self._engine.adapter_file(self._adapter, INTENT_HEAD_FILE)
        if path is None:
            log.warning("adapter %r has no %s: messages get no intent", self._adapter, INTENT_HEAD_FILE)
            return None
        head = LinearHead.load(path)
        parts = [p["name"] for p in head.recipe.get("parts", [])]
        if parts != list(INTENT_FEATURES):
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
