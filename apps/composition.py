"""The composition root: every app's service, built once per process from the settings.

    services = build_services(get_settings())          # the API lifespan, the worker, the CLI
    services.support.answer(...); services.sentiment.ingest_records(...); services.recommend.recommend(...)

One engine handle (every torch call, embeddings included, runs on its thread), one pair of Redis
pools (``core.redis_client``), one service per app. Routes reach them through ``apps.deps``; the
worker through ``workers.runtime``; the CLI through ``domainllm.cli``. Building is cheap: nothing
here loads the model (``engine.warm_up()`` does, in the lifespan's background or on a worker's
first model task), and Redis clients connect on first use.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from apps.recommend.service import RecommendService
from apps.sentiment.dispatch import CeleryDispatcher, Dispatcher, client_app
from apps.sentiment.enrich import Enricher
from apps.sentiment.service import SentimentContext
from apps.settings import AppSettings
from apps.support.service import SupportService
from apps.support.webhook import CeleryWebhookQueue
from apps.tenants.limits import RateLimits
from apps.tenants.store import TenantStore
from core.engine import LocalEngine
from core.interface import Engine
from core.redis_client import RedisClients

log = logging.getLogger(__name__)

BUILDS = {"count": 0}  # services built in this process: a test checks it stays at one per app


def _ready(engine: Engine) -> Engine | None:
    return engine if engine.ready else None


@dataclass
class Services:
    settings: AppSettings
    engine: Engine
    redis: RedisClients
    support: SupportService
    sentiment: SentimentContext
    recommend: RecommendService
    dispatcher: Dispatcher | None
    tenants: TenantStore
    limits: RateLimits
    _enrichers: dict[str, Enricher] = field(default_factory=dict, repr=False)
    _contexts: dict[tuple[str | None, str | None], SentimentContext] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def ready_engine(self) -> Engine | None:
        """The engine once it can serve, else None (the recommender then ranks without the LLM)."""
        return _ready(self.engine)

    def sentiment_context(self, namespace: str | None = None, config: str | None = None) -> SentimentContext:
        """The live monitor's context, or one for another namespace/rules file (a replay, a test):
        built once each, on the same Redis pool and dispatcher."""
        if namespace in (None, self.sentiment.namespace) and config is None:
            return self.sentiment
        key = (namespace, config)
        with self._lock:
            if key not in self._contexts:
                self._contexts[key] = SentimentContext.build(
                    self.settings.sentiment,
                    self.settings,
                    namespace=namespace,
                    config_path=Path(config) if config else None,
                    client=self.redis.text,
                    dispatcher=self.dispatcher,
                )
            return self._contexts[key]

    def enricher(self, context: SentimentContext | None = None) -> Enricher:
        """The enricher for a context's rules (topics, watchlist), built once per rules file."""
        ctx = context or self.sentiment
        key = str(ctx.config.source)
        with self._lock:
            if key not in self._enrichers:
                self._enrichers[key] = Enricher(self.engine, ctx.config)
            return self._enrichers[key]

    def close(self, *, engine: bool = True) -> None:
        if engine:
            self.engine.close()
        self.redis.close()


def support_webhooks(settings: AppSettings) -> CeleryWebhookQueue | None:
    """The queue of the support team's handoff webhook (delivered by the worker), when one is set."""
    return CeleryWebhookQueue(settings.effective_redis_url) if settings.support.webhook_url else None


def build_services(
    settings: AppSettings,
    engine: Engine | None = None,
    *,
    dispatcher: Dispatcher | None = None,
) -> Services:
    """Every app's service, once. ``engine``: one the caller owns (tests, a remote engine); by
    default a ``LocalEngine`` that the caller warms up. ``dispatcher``: how new news items reach
    the enrich queue (default: Celery on the settings' Redis)."""
    engine = engine if engine is not None else LocalEngine(settings)
    clients = RedisClients(settings.effective_redis_url)
    if dispatcher is None:
        dispatcher = CeleryDispatcher(client_app(settings.effective_redis_url), settings.sentiment.enrich_batch_size)
    services = Services(
        settings=settings,
        engine=engine,
        redis=clients,
        support=SupportService(settings.support, clients.raw, engine, webhooks=support_webhooks(settings)),
        sentiment=SentimentContext.build(settings.sentiment, settings, client=clients.text, dispatcher=dispatcher),
        recommend=RecommendService(settings.recommend, clients.raw, engine.embed, lambda: _ready(engine)),
        dispatcher=dispatcher,
        tenants=TenantStore(clients.text, settings.tenancy_namespace),
        limits=RateLimits(settings.effective_redis_url, settings.rate_limit_per_key, settings.rate_limit_per_ip),
    )
    BUILDS["count"] += 1
    log.info("services built (build %d in this process)", BUILDS["count"])
    return services
