"""The intent of each customer message, from the head fitted next to the support adapter.

``finetune`` fits a logistic-regression head on [MiniLM embedding, mean hidden state with the
adapter on] and saves it as ``domains.support.INTENT_HEAD_FILE`` in the adapter folder, with a
recipe naming its feature parts in order (``domains.support.INTENT_FEATURES``). The shared adapter's
head names the demo store's intents (``data/samples/train/support_faq.csv``); a tenant's own version
names the tenant's. This module finds the head through the engine (``Engine.adapter_file``),
rebuilds those features through the engine (``domains.support.intent_features``, as the own-data
evaluation does) and applies the head. Without the adapter or its head there is no intent
(``None``), and the bot says so in stats.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from core.heads import LinearHead
from core.interface import Engine
from domains.support import INTENT_FEATURES, INTENT_HEAD_FILE, intent_features

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Intent:
    name: str
    confidence: float


class IntentClassifier:
    """``classify(texts, model)`` -> one ``Intent`` per text, or ``None`` per text when that model has no
    head. ``model``: the served support model (a tenant's ``tenant/support@vN`` carries its own head on
    its own intents); without it, the adapter this classifier was built for. Heads are read once
    per model (a version's files never change) and kept for the few most recent models."""

    MAX_HEADS = 16

    def __init__(self, engine: Engine, adapter: str) -> None:
        self._engine = engine
        self._adapter = adapter
        self._heads: dict[str, LinearHead | None] = {}

    def _load(self, model: str) -> LinearHead | None:
        if model in self._heads:
            return self._heads[model]
        head = self._read(model)
        if len(self._heads) >= self.MAX_HEADS:
            self._heads.pop(next(iter(self._heads)))
        self._heads[model] = head
        return head

    def _read(self, model: str) -> LinearHead | None:
        if not self._engine.has_model(model):
            log.warning("no %r adapter: messages get no intent", model)
            return None
        path = self._engine.adapter_file(model, INTENT_HEAD_FILE)
        if path is None:
            log.warning("adapter %r has no %s: messages get no intent", model, INTENT_HEAD_FILE)
            return None
        head = LinearHead.load(path)
        parts = [p["name"] for p in head.recipe.get("parts", [])]
        if parts != list(INTENT_FEATURES):
            log.warning("intent head %s wants features %s, which this version cannot build", path, parts)
            return None
        return head

    @property
    def available(self) -> bool:
        return self._load(self._adapter) is not None

    def classify(self, texts: list[str], model: str | None = None) -> list[Intent | None]:
        model = model or self._adapter
        head = self._load(model)
        if head is None or not texts:
            return [None] * len(texts)
        probs = head.predict_proba(intent_features(self._engine, texts, model))  # [n, classes]
        best = probs.argmax(axis=1)
        return [Intent(head.classes[int(i)], float(p[int(i)])) for i, p in zip(best, probs, strict=True)]
