"""The one FastAPI app of the suite: ``uvicorn apps.server:create_app --factory``.

The lifespan calls the composition root (``apps.composition.build_services``) once and loads the
engine in the background (a worker thread), so the process answers /healthz at once and /readyz
turns 200 when the model is in; until then the model routes answer 503 with Retry-After. Routers
are gathered in ``ROUTERS``; each resource has its own module and reaches the engine and its
service only through the dependencies in ``apps.deps``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import redis
from fastapi import APIRouter, FastAPI

from apps import llm, ops
from apps.composition import Services, build_services
from apps.errors import BodySizeLimitMiddleware, UnhandledErrorMiddleware, install_error_handlers
from apps.http.cors import install_cors
from apps.http.deadline import BodyReadTimeoutMiddleware
from apps.http.logging import configure_logging
from apps.http.middleware import RequestIdMiddleware
from apps.http.security import SecurityHeadersMiddleware
from apps.llm.adapter_set import AdapterSet
from apps.ops_settings import ops_settings
from apps.recommend.routes import router as recommend_router
from apps.replicas import start_heartbeat
from apps.sentiment.routes import router as sentiment_router
from apps.settings import AppSettings, get_settings
from apps.support.inbox_routes import pages as inbox_pages
from apps.support.inbox_routes import router as inbox_router
from apps.support.kb_routes import router as support_kb_router
from apps.support.routes import pages as support_pages
from apps.support.routes import router as support_router
from apps.tenants.routes import router as tenants_router
from apps.tenants.training import router as training_router
from core.config import Settings
from core.interface import Engine

log = logging.getLogger(__name__)

ROUTERS: list[APIRouter] = [
    ops.router,
    tenants_router,
    training_router,
    *llm.routers,
    support_router,
    support_kb_router,
    inbox_router,
    sentiment_router,
    recommend_router,
    support_pages,
    inbox_pages,
]

DESCRIPTION = """
Domain application services on one shared LLM core: one base model, one LoRA adapter per domain.

* **OpenAI-compatible** `/v1/models`, `/v1/chat/completions`, `/v1/completions`: `model` is an
  adapter name or `"base"`; `stream: true` answers with server-sent events. Decoding is greedy
  (temperature 0) unless a temperature is given.
* `/v1/classify` scores texts against labels; `/v1/adapters` loads and unloads adapters at run time
  (admin key: `Authorization: Bearer <key>` or `X-Admin-Key`).
* Every error answers `{"error": {"type": ..., "message": ...}}` with a 4xx/5xx status.
"""

TAGS = [
    {"name": "models", "description": "The base model and the adapters that can be named as `model`."},
    {"name": "generation", "description": "OpenAI-compatible chat and text completions, streamed or not."},
    {"name": "classification", "description": "Label texts by the model's probability for each label."},
    {
        "name": "adapters",
        "description": "LoRA adapters: list (public), load and unload (admin key); a tenant's own versions: train on its data, gate, promote, roll back, pin, split traffic, A/B report.",
    },
    {
        "name": "support",
        "description": "Support bot: chat sessions (JSON or SSE), feedback, handoffs, the knowledge base.",
    },
    {"name": "sentiment", "description": "Financial news monitor: news in, trends, alerts (workers enrich and alert)."},
    {"name": "recommend", "description": "Storefront recommendations: items, events, explained lists."},
    {"name": "operations", "description": "Liveness, readiness and Prometheus metrics."},
    {"name": "tenants", "description": "Tenants (operator key) and each tenant's widget, server and admin keys."},
]


async def _warm_up(app: FastAPI) -> None:
    engine: Engine = app.state.services.engine
    try:
        await asyncio.to_thread(engine.warm_up)
    except Exception as exc:  # keep serving /healthz and say why in /readyz; a restart will not fix a bad path
        log.exception("the engine failed to load")
        app.state.warmup_error = f"{type(exc).__name__} (details in the server log)"  # no paths to clients
        return
    for name, reason in engine.adapter_failures.items():
        log.error("adapter %s was not loaded: %s", name, reason)
    try:
        await asyncio.to_thread(app.state.adapter_set.reconcile, engine)
    except redis.RedisError as exc:  # the listener reconciles once it reaches Redis again
        log.warning("adapters loaded at run time on other replicas not read yet (Redis: %s)", exc)
    log.info("engine ready: %s", ", ".join(m["id"] for m in engine.list_models()))
    await asyncio.to_thread(app.state.services.support.warm_up)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Build every service once (unless the caller gave them), load the engine in the background,
    and on shutdown close what we built."""
    # Routes wait on the engine and Redis in threads (asyncio.to_thread): the default pool (CPUs + 4) would
    # make a few slow answers hold up every other request's thread hop.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=64, thread_name_prefix="route"))
    given: Services | None = app.state.given_services
    services = given or build_services(app.state.settings, app.state.given_engine)
    app.state.services = services
    app.state.started_at = time.time()
    app.state.warmup_error = None
    ops = ops_settings(services.settings)  # this replica's heartbeat: doctor and the KPIs see it live
    heartbeat = start_heartbeat(services.redis.text, "api", period_s=ops.heartbeat_s, namespace=ops.namespace)
    # adapters loaded or unloaded through any replica: this one follows (and catches up once warm)
    app.state.adapter_set = AdapterSet.of(services.settings, services.redis.text)
    following = app.state.adapter_set.follow(services.engine)
    loading = asyncio.create_task(_warm_up(app))
    try:
        yield
    finally:
        following.stop()
        if heartbeat is not None:
            heartbeat.stop()
        await loading  # a loading thread cannot be cancelled; closing under it would leak its batcher
        if given is None:  # ours: close it, and let a next lifespan (a test client re-entered) build anew
            services.close(engine=app.state.given_engine is None)
            app.state.services = None


def create_app(
    settings: Settings | None = None, engine: Engine | None = None, services: Services | None = None
) -> FastAPI:
    """The app. ``engine`` or ``services``: what the caller owns (tests); by default the lifespan
    builds both. A plain core ``Settings`` gets the app sections from the environment."""
    settings = AppSettings.of(settings) if settings is not None else get_settings()
    app = FastAPI(
        title="domainllm",
        version="0.1.0",
        summary="Support, sentiment and recommendation services on one shared LLM core.",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        docs_url="/docs" if settings.expose_docs else None,
        redoc_url="/redoc" if settings.expose_docs else None,
        openapi_url="/openapi.json" if settings.expose_docs else None,
    )
    app.state.settings = settings
    app.state.given_engine = engine
    app.state.given_services = services
    app.state.services = services
    app.state.warmup_error = None
    install_error_handlers(app)
    configure_logging(ops_settings(settings).log_format, role="api", level=settings.log_level)
    # Added innermost first: metrics see every answer, including the 413s and 500s made below them.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(BodyReadTimeoutMiddleware, timeout_s=settings.body_read_timeout_s)  # around the body reader
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(ops.RequestMetricsMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)
    install_cors(app, settings.cors_origins, cache_s=settings.cors_cache_s)
    app.add_middleware(RequestIdMiddleware)  # outermost: every answer carries X-Request-ID, a preflight's too
    for router in ROUTERS:
        app.include_router(router)
    if settings.expose_metrics:
        app.include_router(ops.metrics_router)
    return app
