"""Per-process state of a worker: the engine (loaded once, on first need or at worker start), the
enrichers and the per-namespace contexts. Tasks reach them through these functions only."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from apps.sentiment.dispatch import CeleryDispatcher
from apps.sentiment.enrich import Enricher
from apps.sentiment.service import SentimentContext
from apps.sentiment.settings import get_sentiment_settings
from apps.sentiment.store import connect
from core.config import get_settings
from core.engine import Engine

log = logging.getLogger(__name__)
_lock = threading.Lock()
_engine: Engine | None = None
_enrichers: dict[str, Enricher] = {}
_contexts: dict[tuple[str | None, str | None], SentimentContext] = {}


def engine() -> Engine:
    """The process's one engine; the first caller loads it, the others wait for it."""
    global _engine
    with _lock:
        if _engine is None:
            candidate = Engine(get_settings())
            candidate.warm_up()
            _engine = candidate
            log.info("worker engine ready: %s", ", ".join(m["id"] for m in candidate.list_models()))
        return _engine


def context(namespace: str | None = None, config: str | None = None) -> SentimentContext:
    from workers.celery_app import app

    key = (namespace, config)
    with _lock:
        if key not in _contexts:
            settings = get_sentiment_settings()
            if not _contexts:
                client = connect(get_settings().effective_redis_url)
            else:
                client = next(iter(_contexts.values())).store.r
            _contexts[key] = SentimentContext.build(
                settings,
                get_settings(),
                namespace=namespace,
                config_path=Path(config) if config else None,
                client=client,
                dispatcher=CeleryDispatcher(app, settings.enrich_batch_size),
            )
        return _contexts[key]


def enricher(namespace: str | None = None, config: str | None = None) -> Enricher:
    ctx = context(namespace, config)
    key = str(ctx.config.source)
    eng = engine()
    with _lock:
        if key not in _enrichers:
            _enrichers[key] = Enricher(eng, ctx.config)
            _enrichers[key].topics.warm_up()
        return _enrichers[key]
