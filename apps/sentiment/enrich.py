"""Enrichment: sentiment (adapter label probabilities), entities/tickers, topics, and on request
an explanation by occlusion. One ``Enricher`` per process wraps the already-loaded engine."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from apps.sentiment.config import MonitorConfig
from apps.sentiment.items import NewsItem
from apps.sentiment.store import NewsStore
from apps.sentiment.topics import TopicClassifier
from apps.sentiment.watchlist import Watchlist
from apps.tenants.models import ModelRouter
from core.interface import Engine
from domains import sentiment

log = logging.getLogger(__name__)

ADAPTER = "sentiment"
MAX_EXPLAIN_WORDS = 60


def load_watchlist(config: MonitorConfig) -> Watchlist:
    if config.watchlist_csv is not None:
        return Watchlist.from_csv(config.watchlist_csv)
    if config.watchlist_file is not None:
        return Watchlist.from_yaml(config.watchlist_file)
    return Watchlist.empty()


@dataclass
class EnrichStats:
    counted: int = 0
    already: int = 0
    missing: int = 0
    seconds: float = 0.0


class Enricher:
    def __init__(self, engine: Engine, config: MonitorConfig, watchlist: Watchlist | None = None) -> None:
        self.engine = engine
        self.config = config
        self.watchlist = watchlist if watchlist is not None else load_watchlist(config)
        self.topics = TopicClassifier(config.topics, lambda texts: engine.embed(texts))

    @property
    def model(self) -> str:
        """The sentiment adapter when it is loaded; the base model (said in every answer) until then."""
        return ADAPTER if self.engine.has_model(ADAPTER) else "base"

    def serving(self, model: str | None = None) -> sentiment.SentimentServing:
        """The labels and instruction the model is prompted with: its adapter card's (the domain's defaults
        for the base model)."""
        return sentiment.read_serving(self.engine.serving_config(model or self.model))

    def sentiment(self, texts: list[str], model: str | None = None) -> list[dict[str, float]]:
        """Label probabilities per text, in batches of the engine's per-request limit."""
        model = model or self.model
        serving = self.serving(model)
        labels, step = list(serving.labels), self.engine.max_batch_texts
        out: list[dict[str, float]] = []
        for i in range(0, len(texts), step):
            out += self.engine.score_labels(texts[i : i + step], labels, model=model, instruction=serving.instruction)
        return out

    def _by_model(self, items: list[NewsItem], router: ModelRouter | None) -> tuple[list[dict[str, float]], list[str]]:
        """Scores and the model that gave them, per item: each item goes where the tenant's route
        sends it (sticky by item id: a candidate version under a traffic split), one call per model."""
        if router is None:
            return self.sentiment([i.text for i in items]), [self.model] * len(items)
        routes = [router.route(sticky_key=i.id) for i in items]
        scores: list[dict[str, float]] = [{} for _ in items]
        for model in dict.fromkeys(r.model for r in routes):
            idx = [k for k, r in enumerate(routes) if r.model == model]
            for k, s in zip(idx, self.sentiment([items[k].text for k in idx], model=model), strict=True):
                scores[k] = s
        for route in routes:
            router.served(route)
        return scores, [r.model for r in routes]

    def enrich(self, items: list[NewsItem], router: ModelRouter | None = None) -> list[dict[str, Any]]:
        """One enrichment dict per item, in order; the model work is one batched call per model.
        ``router``: the tenant's adapter route (its own versions); without it, the shared adapter."""
        texts = [i.text for i in items]
        scores, models = self._by_model(items, router)
        topics = self.topics.classify(texts)
        method = self.topics.method
        out = []
        for item, s, tops, model in zip(items, scores, topics, models, strict=True):
            matches = self.watchlist.match(item.title)
            entities = [{"ticker": m.ticker, "name": m.name} for m in matches]
            out.append(
                {
                    "label": max(s, key=s.__getitem__),
                    "scores": {k: round(v, 5) for k, v in s.items()},
                    "model": model,
                    "entities": entities,
                    "entities_keys": list(dict.fromkeys(m.ticker for m in matches)),
                    "topics": [{"topic": t.topic, "score": t.score} for t in tops],
                    "topic_keys": [t.topic for t in tops],
                    "topic_method": method,
                    "enriched_at": time.time(),
                }
            )
        return out

    def explain(self, text: str, model: str | None = None) -> list[dict[str, Any]]:
        """Occlusion: drop each word in turn and see how the predicted label's probability moves.

        A positive weight means the word pushed toward the label. One batched scoring call of
        (words + 1) texts; the first ``MAX_EXPLAIN_WORDS`` words are explained.
        """
        words = text.split()[:MAX_EXPLAIN_WORDS]
        if not words:
            return []
        variants = [" ".join(words[:i] + words[i + 1 :]) or "." for i in range(len(words))]
        scores = self.sentiment([" ".join(words), *variants], model=model)
        full = scores[0]
        label = max(full, key=full.__getitem__)
        return [{"word": w, "weight": round(full[label] - s[label], 5)} for w, s in zip(words, scores[1:], strict=True)]


def enrich_ids(
    store: NewsStore, enricher: Enricher, ids: list[str], delay_s: float = 0.0, router: ModelRouter | None = None
) -> EnrichStats:
    """Enrich and count the given items; items already counted are skipped, so a redelivered or
    duplicated batch changes nothing."""
    started = time.perf_counter()
    stats = EnrichStats()
    todo: list[NewsItem] = []
    for i, record in zip(ids, store.get(ids), strict=True):
        if record is None:
            stats.missing += 1
            log.warning("enrich: item %s is not stored; skipped", i)
        elif record["enrichment"] is not None:
            stats.already += 1
        else:
            record.pop("enrichment")
            todo.append(NewsItem.from_dict(record))
    if todo:
        enrichments = enricher.enrich(todo, router)
        if delay_s:
            time.sleep(delay_s)  # fault injection: hold the batch so a test can kill the worker here
        for item, enrichment in zip(todo, enrichments, strict=True):
            outcome = store.commit_enrichment(item, enrichment, enricher.config.bucket_s)
            if outcome == 1:
                stats.counted += 1
            elif outcome == 0:
                stats.already += 1
            else:
                stats.missing += 1
    stats.seconds = time.perf_counter() - started
    return stats
