"""Per-process state of a worker: the services from the composition root (built once, on the first
task), the engine loaded on first need or at worker start. Tasks reach them through these functions
only."""

from __future__ import annotations

import logging
import threading

from apps.composition import Services, build_services
from apps.sentiment.dispatch import CeleryDispatcher
from apps.sentiment.enrich import Enricher
from apps.sentiment.service import SentimentContext
from apps.settings import AppSettings, batch_settings, get_settings
from apps.support.webhook import WebhookTarget
from core.interface import Engine

log = logging.getLogger(__name__)
_lock = threading.Lock()
_services: Services | None = None


def worker_settings(settings: AppSettings) -> AppSettings:
    """A worker's engine serves only its own tasks, queued in Celery: it does not refuse them for an
    interactive caller's queue bound or deadline; the tasks' own time limits bound them instead."""
    return batch_settings(settings, min(3600.0, float(settings.sentiment.enrich_soft_time_limit_s)))


def services() -> Services:
    """The process's one set of services; the first caller builds it (cheap: no model load)."""
    global _services
    with _lock:
        if _services is None:
            from workers.celery_app import app

            settings = worker_settings(get_settings())
            _services = build_services(settings, dispatcher=CeleryDispatcher(app, settings.sentiment.enrich_batch_size))
        return _services


def engine() -> Engine:
    """The process's one engine, loaded by the first caller (``warm_up`` is safe to call twice)."""
    eng = services().engine
    if not eng.ready:
        eng.warm_up()
        log.info("worker engine ready: %s", ", ".join(m["id"] for m in eng.list_models()))
    return eng


def support_webhook_target(tenant: str) -> WebhookTarget | None:
    return services().support_webhook_target(tenant)


def context(namespace: str | None = None, config: str | None = None) -> SentimentContext:
    return services().sentiment_context(namespace, config)


def enricher(namespace: str | None = None, config: str | None = None) -> Enricher:
    engine()
    enricher = services().enricher(context(namespace, config))
    enricher.topics.warm_up()
    return enricher
