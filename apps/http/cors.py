"""CORS for the suite: the chat widget (and a storefront's recommendations, with a user token) run on
the customer's own site, so their calls are cross-origin. Admin headers are not allowed, so a browser
page can never use an admin key.

An origin passes when ``DOMAINLLM_CORS_ORIGINS`` lists it, or when some tenant lists it in its
``origins`` (``TenantStore.origin_listed``). A preflight carries no key, so the tenant is unknown at
that point: any tenant's origin passes CORS, and the per-key check (``apps.tenants.auth``) still holds
a widget key to its own tenant's origins on the actual request. A replica keeps each answer from
Redis for ``cache_s`` seconds (``DOMAINLLM_CORS_CACHE_S``); when Redis cannot be reached, only the
settings' origins pass (fail closed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

ALLOWED_HEADERS = ["Content-Type", "X-Support-Key", "X-User-Token"]
ALLOWED_METHODS = ["GET", "POST"]
CACHED_ORIGINS = 1024  # answers kept per replica; past it the table is cleared (any page can send any Origin)

# The app's "does some tenant allow this origin?" (None while the app has no services yet).
OriginLookup = Callable[[str], bool]


def tenants_lookup(app: ASGIApp) -> OriginLookup | None:
    """The tenant store's ``origin_listed`` of the app that the lifespan built services for."""
    services = getattr(getattr(app, "state", None), "services", None)
    return services.tenants.origin_listed if services is not None else None


class TenantOrigins:
    """Which origins some tenant allows, asked of ``lookup`` at most once per ``cache_s`` per origin."""

    def __init__(self, cache_s: float) -> None:
        self.cache_s = cache_s
        self._answers: dict[str, tuple[bool, float]] = {}  # origin -> (listed, good until: monotonic s)

    async def listed(self, origin: str, lookup: OriginLookup) -> bool:
        now = time.monotonic()
        cached = self._answers.get(origin)
        if cached is not None and now < cached[1]:
            return cached[0]
        try:
            answer = await asyncio.to_thread(lookup, origin)
        except Exception as exc:  # Redis down or slow: the settings' origins only, until it is back
            log.warning("CORS: the tenants' origins cannot be read (%s); only DOMAINLLM_CORS_ORIGINS pass", exc)
            answer = False
        if len(self._answers) >= CACHED_ORIGINS:
            self._answers.clear()
        self._answers[origin] = (answer, now + self.cache_s)
        return answer


class TenantCORSMiddleware:
    """Starlette's CORS middleware over the settings' origins, and, for an origin that they do not list
    but a tenant does, the same middleware allowing that origin."""

    def __init__(
        self,
        app: ASGIApp,
        origins: list[str],
        cache_s: float = 5.0,
        lookup: Callable[[ASGIApp], OriginLookup | None] = tenants_lookup,
    ) -> None:
        self.app = app
        self.static = self._cors(origins)
        self.tenant_origins = TenantOrigins(cache_s)
        self.lookup = lookup

    def _cors(self, origins: list[str]) -> CORSMiddleware:
        return CORSMiddleware(
            self.app, allow_origins=origins, allow_methods=ALLOWED_METHODS, allow_headers=ALLOWED_HEADERS
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = Headers(scope=scope).get("origin") if scope["type"] == "http" else None
        if origin is None or self.static.is_allowed_origin(origin):
            await self.static(scope, receive, send)
            return
        lookup = self.lookup(scope["app"]) if "app" in scope else None
        if lookup is not None and await self.tenant_origins.listed(origin, lookup):
            await self._cors([origin])(scope, receive, send)  # a few dicts: cheap per request
            return
        await self.static(scope, receive, send)


def install_cors(app: FastAPI, origins: list[str], cache_s: float = 5.0) -> None:
    app.add_middleware(TenantCORSMiddleware, origins=origins, cache_s=cache_s)
