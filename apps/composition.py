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

from pydantic import SecretStr

from apps.recommend.service import RecommendService
from apps.sentiment.dispatch import QUEUE_OF, TRAIN, CeleryDispatcher, Dispatcher, client_app
from apps.sentiment.enrich import ADAPTER as SENTIMENT_ADAPTER
from apps.sentiment.enrich import Enricher
from apps.sentiment.service import SentimentContext
from apps.sentiment.settings import SentimentSettings
from apps.settings import AppSettings
from apps.support.service import SupportService
from apps.support.webhook import CeleryWebhookQueue, WebhookRejectedError, WebhookTarget, target_for
from apps.tenants.delivery import DeliveryTargets
from apps.tenants.limits import RateLimits
from apps.tenants.models import ModelRouter
from apps.tenants.store import DEFAULT_TENANT, TenantStore, tenant_of_namespace
from core.engine import LocalEngine
from core.interface import Engine
from core.jobs import TrainingJobs
from core.redis_client import RedisClients
from core.remote_engine import RemoteEngine
from core.versions import AdapterVersions

log = logging.getLogger(__name__)

BUILDS = {"count": 0}  # services built in this process: a test checks it stays at one per app


def _ready(engine: Engine) -> Engine | None:
    return engine if engine.ready else None


@dataclass(frozen=True)
class TenantApps:
    """One tenant's apps: each on its own Redis prefix (and KB folder), the engine shared."""

    tenant: str
    support: SupportService
    sentiment: SentimentContext
    recommend: RecommendService


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
    delivery: DeliveryTargets
    versions: AdapterVersions
    jobs: TrainingJobs
    _enrichers: dict[str, Enricher] = field(default_factory=dict, repr=False)
    _contexts: dict[tuple[str | None, str | None], SentimentContext] = field(default_factory=dict, repr=False)
    _tenants: dict[str, TenantApps] = field(default_factory=dict, repr=False)
    _webhook_queue: CeleryWebhookQueue | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def ready_engine(self) -> Engine | None:
        """The engine once it can serve, else None (the recommender then ranks without the LLM)."""
        return _ready(self.engine)

    def apps_of(self, tenant: str) -> TenantApps:
        """``tenant``'s apps, built on first use and kept (the default tenant's are the ones above).
        Nothing one tenant's apps store is under another's prefix or folder."""
        if tenant == DEFAULT_TENANT:
            return TenantApps(tenant, self.support, self.sentiment, self.recommend)
        built = self._tenants.get(tenant)  # every request asks: no lock once a tenant's apps exist
        if built is not None:
            return built
        with self._lock:
            if tenant not in self._tenants:
                settings = self.settings
                support = settings.support.for_tenant(tenant)
                sentiment = SentimentContext.build(
                    settings.sentiment.for_tenant(tenant), settings, client=self.redis.text, dispatcher=self.dispatcher
                )
                sentiment.delivery_source = lambda: self._alert_settings(tenant, sentiment.settings)
                self._tenants[tenant] = TenantApps(
                    tenant,
                    SupportService(
                        support,
                        self.redis.raw,
                        self.engine,
                        webhooks=self._support_queue(),
                        tenant=tenant,
                        has_webhook=lambda: self.delivery.get(tenant, "handoffs") is not None,
                    ),
                    sentiment,
                    RecommendService(
                        settings.recommend.for_tenant(tenant), self.redis.raw, self.engine.embed, self.ready_engine
                    ),
                )
                self._attach_routers(self._tenants[tenant])
                log.info("services built for tenant %s", tenant)
            return self._tenants[tenant]

    def _attach_routers(self, apps: TenantApps) -> None:
        """Each app asks its router, per request, which version of the tenant's adapter serves."""
        apps.sentiment.router = self.model_router(apps.tenant, "sentiment")
        apps.support.router = self.model_router(apps.tenant, "support")
        apps.recommend.router = self.model_router(apps.tenant, "recommend")

    def shared_adapter(self, domain: str) -> str:
        """The suite's own adapter for ``domain``: what serves a tenant with no version of its own."""
        shared = {
            "support": self.settings.support.adapter,
            "sentiment": SENTIMENT_ADAPTER,
            "recommend": self.settings.recommend.adapter,
        }
        return shared[domain]

    def model_router(self, tenant: str, domain: str) -> ModelRouter:
        """Which version serves ``tenant`` in ``domain``, read per request (see ``apps.tenants.models``)."""
        return ModelRouter(self.versions, self.engine, tenant, domain, self.shared_adapter(domain))

    @property
    def training_dir(self) -> Path:
        """The artefact store's folder of uploaded training files (``<data_dir>/training/<tenant>/``)."""
        return self.settings.data_dir / "training"

    def queue_training(self, job_id: str) -> None:
        """Hand a training job to the ``train`` queue (a worker consuming it runs one job at a time)."""
        client_app(self.settings.effective_redis_url).send_task(TRAIN, kwargs={"job_id": job_id}, queue=QUEUE_OF[TRAIN])

    def _alert_settings(self, tenant: str, base: SentimentSettings) -> SentimentSettings:
        """A tenant's monitor settings with the alert webhook its admin set (read at each use)."""
        hook = self.delivery.get(tenant, "alerts")
        if hook is None:
            return base
        return base.model_copy(
            update={
                "webhook_url": hook.url,
                "webhook_secret": SecretStr(hook.secret),
                "webhook_public_only": not self.settings.tenant_webhooks_allow_private,
            }
        )

    def _support_queue(self) -> CeleryWebhookQueue:
        """One queue for every tenant's helpdesk events (the worker looks up each tenant's webhook)."""
        if self._webhook_queue is None:
            self._webhook_queue = CeleryWebhookQueue(self.settings.effective_redis_url)
        return self._webhook_queue

    def support_webhook_target(self, tenant: str) -> WebhookTarget | None:
        """Where ``tenant``'s handoff events go now: the settings' webhook for the default tenant, the
        one its admin set for another (public addresses only, checked again here), or None."""
        if tenant == DEFAULT_TENANT:
            return target_for(self.settings.support, tenant)
        hook = self.delivery.get(tenant, "handoffs")
        if hook is None:
            return None
        problem = self.delivery.send_problem(hook.url)
        if problem:
            raise WebhookRejectedError(f"the handoff webhook of tenant {tenant} is refused: {problem}")
        return WebhookTarget(hook.url, hook.secret, self.settings.support.webhook_timeout_s)

    def sentiment_context(self, namespace: str | None = None, config: str | None = None) -> SentimentContext:
        """The live monitor's context (a tenant's, by its namespace), or one for another namespace or
        rules file (a replay, a test): built once each, on the same Redis pool and dispatcher."""
        if namespace in (None, self.sentiment.namespace) and config is None:
            return self.sentiment
        tenant = tenant_of_namespace(self.sentiment.namespace, namespace) if namespace else None
        if tenant is not None and config is None:
            return self.apps_of(tenant).sentiment
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


def default_engine(settings: AppSettings) -> Engine:
    """The engine the settings choose (DOMAINLLM_ENGINE_BACKEND): the model in this process, or a
    remote OpenAI-compatible server (DOMAINLLM_REMOTE_*). Cheap: nothing loads before warm_up."""
    if settings.engine_backend == "remote":
        return RemoteEngine(settings)
    return LocalEngine(settings)


def build_services(
    settings: AppSettings,
    engine: Engine | None = None,
    *,
    dispatcher: Dispatcher | None = None,
) -> Services:
    """Every app's service, once. ``engine``: one the caller owns (tests, a remote engine); by
    default the one the settings choose (``default_engine``; the caller warms it up). ``dispatcher``:
    how new news items reach the enrich queue (default: Celery on the settings' Redis)."""
    engine = engine if engine is not None else default_engine(settings)
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
        delivery=DeliveryTargets(
            clients.text, settings.tenancy_namespace, allow_private=settings.tenant_webhooks_allow_private
        ),
        versions=AdapterVersions(clients.text, f"{settings.tenancy_namespace}:adapters"),
        jobs=TrainingJobs(clients.text, f"{settings.tenancy_namespace}:train"),
    )
    services._attach_routers(services.apps_of(DEFAULT_TENANT))
    BUILDS["count"] += 1
    log.info("services built (build %d in this process)", BUILDS["count"])
    return services
