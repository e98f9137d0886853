"""Dependencies that routes declare with the ``Annotated`` aliases below.

The lifespan puts the ``Services`` that ``apps.composition.build_services`` made on ``app.state``;
routes get the engine, the settings and each app's service only through these functions, never by
building them, so a test can swap any of them with ``app.dependency_overrides``. They are
``async`` because they never block: FastAPI would run plain functions on a thread-pool hop.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request

from apps.composition import Services
from apps.recommend.service import RecommendService
from apps.sentiment.service import SentimentContext
from apps.settings import AppSettings
from apps.support.service import SupportService
from apps.tenants.auth import AdminDep as AdminDep  # the key requirements, with the other dependencies
from apps.tenants.auth import PrincipalDep as PrincipalDep
from apps.tenants.auth import ServerDep as ServerDep
from apps.tenants.auth import WidgetDep as WidgetDep
from core.adapters import parse_adapter_name
from core.errors import AdapterNotFoundError, ModelNotReadyError
from core.interface import Engine

# Key in ``request.state`` naming the model a request ran on; the metrics middleware labels with it.
ADAPTER_STATE_KEY = "adapter"


async def get_settings(request: Request) -> AppSettings:
    settings: AppSettings = request.app.state.settings
    return settings


def services_of(app: FastAPI) -> Services:
    services: Services | None = getattr(app.state, "services", None)
    if services is None:
        raise ModelNotReadyError("the server is still starting; retry shortly")
    return services


async def get_services(request: Request) -> Services:
    return services_of(request.app)


def not_ready_reason(app: FastAPI) -> str | None:
    """Why the engine cannot serve yet, or None when it can (base, adapters and batch worker up)."""
    services: Services | None = getattr(app.state, "services", None)
    engine = services.engine if services is not None else None
    if engine is not None and engine.ready:
        return None
    failure = getattr(app.state, "warmup_error", None)
    if failure:
        return f"the engine failed to start: {failure}"
    return "the engine is still loading the base model; retry shortly"


async def get_engine(request: Request) -> Engine:
    """The engine, once it can serve (503 with a reason until then)."""
    reason = not_ready_reason(request.app)
    if reason is not None:
        raise ModelNotReadyError(reason)
    return services_of(request.app).engine


async def get_support_service(
    request: Request, engine: Annotated[Engine, Depends(get_engine)], principal: PrincipalDep
) -> SupportService:
    """The support bot of the key's tenant: it answers with the engine, so it waits for it (503 until
    ready)."""
    return services_of(request.app).apps_of(principal.tenant).support


async def get_public_support_service(
    request: Request, engine: Annotated[Engine, Depends(get_engine)]
) -> SupportService:
    """The default tenant's bot, for the pages that need no key (the demo help centre)."""
    return services_of(request.app).support


async def get_sentiment_context(request: Request, principal: PrincipalDep) -> SentimentContext:
    """The key's tenant's monitor (Redis and the queues only: news is stored and queued while the
    model loads)."""
    return services_of(request.app).apps_of(principal.tenant).sentiment


async def get_recommend_service(request: Request, principal: PrincipalDep) -> RecommendService:
    """The key's tenant's recommender: it serves without the LLM until the engine is ready, and says so."""
    return services_of(request.app).apps_of(principal.tenant).recommend


def select_model(request: Request, engine: Engine, name: str) -> str:
    """Check that ``name`` (an adapter or "base") is served, and label this request's metrics with it.

    Only served names become label values, so a client cannot grow the metrics without bound.
    """
    if not visible_to(request, name) or not engine.has_model(name):
        raise AdapterNotFoundError(name, [m["id"] for m in engine.list_models() if visible_to(request, m["id"])])
    setattr(request.state, ADAPTER_STATE_KEY, name)
    return name


def visible_to(request: Request, name: str) -> bool:
    """A tenant's own adapter versions (``tenant/name@vN``) are its own: another tenant's key sees no
    such model (404, as for a name that does not exist); the shared adapters and the base are for all."""
    ref = parse_adapter_name(name)
    if ref is None or ref.tenant is None:
        return True
    principal = getattr(request.state, "principal", None)
    return principal is not None and (principal.operator or principal.tenant == ref.tenant)


SettingsDep = Annotated[AppSettings, Depends(get_settings)]
ServicesDep = Annotated[Services, Depends(get_services)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SupportDep = Annotated[SupportService, Depends(get_support_service)]
PublicSupportDep = Annotated[SupportService, Depends(get_public_support_service)]
SentimentDep = Annotated[SentimentContext, Depends(get_sentiment_context)]
RecommendDep = Annotated[RecommendService, Depends(get_recommend_service)]
