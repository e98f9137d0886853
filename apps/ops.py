"""Operations: liveness, readiness, Prometheus metrics, and the middleware that measures requests.

/healthz answers as long as the process serves HTTP (restart me if not); /readyz answers 200 only
once the engine has loaded (send me traffic). The base model loads in the background after start,
so the two differ for the first seconds, and for good if loading failed.

/metrics: this process's metrics (HTTP, engine, model versions) and the KPIs kept in Redis
(``apps.kpis``, read at scrape time, the same on every replica). Every metric is explained in
docs/operations.md.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, Field
from starlette.types import Message, Receive, Scope, Send

from apps.deps import ADAPTER_STATE_KEY, not_ready_reason
from apps.errors import error_responses
from apps.http.middleware import HTTPMiddleware
from apps.kpis import KpiCollector
from apps.ops_settings import ops_settings
from core.errors import ModelNotReadyError

UNMATCHED_ROUTE = "unmatched"  # every unknown path shares one label value
NO_ADAPTER = "none"
KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

HTTP_REQUEST_SECONDS = Histogram(
    "domainllm_http_request_duration_seconds",
    "HTTP request latency until the last body byte (streams included), by route template and adapter",
    ["method", "route", "adapter"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
HTTP_REQUESTS = Counter(
    "domainllm_http_requests_total", "HTTP requests by route template and status", ["method", "route", "status"]
)
HTTP_IN_FLIGHT = Gauge("domainllm_http_requests_in_flight", "HTTP requests being served")

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: str = "ok"


class Readiness(BaseModel):
    status: str = "ready"
    base_model: str = Field(description="Name of the loaded base model folder.")
    models: list[str] = Field(description='What `model` may name: "base" and the loaded adapters.')
    load_seconds: float = Field(description="How long loading the engine took.")


@router.get("/healthz", response_model=Health, summary="Liveness", description="200 while the process serves HTTP.")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness",
    description="200 once the engine has loaded the base model and adapters; 503 (with why) before, "
    "or for good if loading failed.",
    responses=error_responses(503),
)
async def readyz(request: Request) -> Readiness:
    reason = not_ready_reason(request.app)
    if reason is not None:
        raise ModelNotReadyError(reason)
    engine = request.app.state.services.engine
    return Readiness(
        base_model=engine.base_model_name,
        models=[m["id"] for m in engine.list_models()],
        load_seconds=round(engine.load_seconds, 3),
    )


metrics_router = APIRouter(tags=["operations"])  # mounted unless DOMAINLLM_EXPOSE_METRICS=false


def kpi_registry(app: FastAPI) -> CollectorRegistry | None:
    """The app's registry of KPIs read from Redis, made on the first scrape once the services exist;
    None while they do not, or when ``DOMAINLLM_OPS_KPI_METRICS`` is off."""
    registry: CollectorRegistry | None = getattr(app.state, "kpi_registry", None)
    services = getattr(app.state, "services", None)
    if registry is not None and getattr(app.state, "kpi_services", None) is services:
        return registry
    ops = ops_settings(app.state.settings)
    if services is None or not ops.kpi_metrics:
        return None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KpiCollector(services.redis.text, services.settings, ops))
    app.state.kpi_registry, app.state.kpi_services = registry, services
    return registry


@metrics_router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="HTTP latency/requests by route and adapter; the engine's batch sizes, queue wait, tokens "
    "generated and adapters; responses and feedback by model version; and the KPIs kept in Redis (support "
    "deflection and thumbs, alerts and dead letters, recommendation clicks, Celery queues, live replicas), "
    "in the Prometheus text format. docs/operations.md explains each.",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    body = generate_latest()
    registry = kpi_registry(request.app)
    if registry is not None:  # Redis reads: off the event loop
        body += await asyncio.to_thread(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


class RequestMetricsMiddleware(HTTPMiddleware):
    """Time every HTTP request and count it by route template, never by raw path.

    Labels by template ("/v1/adapters/{name}") keep the series few whatever paths clients send;
    the adapter label is what the handler put in ``request.state`` (only served model names).
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: dict[str, Any] = scope.setdefault("state", {})
        status = 500  # if the app fails before answering, the server answers 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        HTTP_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            HTTP_IN_FLIGHT.dec()
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            method = scope.get("method", "") if scope.get("method") in KNOWN_METHODS else "OTHER"
            adapter = str(state.get(ADAPTER_STATE_KEY, NO_ADAPTER))
            HTTP_REQUEST_SECONDS.labels(method, route, adapter).observe(time.perf_counter() - started)
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
