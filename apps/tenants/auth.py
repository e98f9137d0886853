"""Who is calling: the key on a request, resolved to a ``Principal`` (tenant and scope).

A key may come as ``Authorization: Bearer <key>`` or in ``X-Api-Key``; ``X-Admin-Key`` and the
widget's ``X-Support-Key`` are read too, as before. What each resolves to:

* the operator key (``DOMAINLLM_OPERATOR_KEY``): every scope, and it alone creates tenants;
* ``DOMAINLLM_ADMIN_KEY``: the ``default`` tenant's admin (single-tenant setups, ``make run``);
* a key of ``DOMAINLLM_SUPPORT_PUBLIC_KEYS``: the ``default`` tenant's widget key (the demo page);
* a key made by ``domainllm keys create`` or ``POST /v1/keys``: its tenant and scope, looked up in
  Redis on every request, so a revoked key fails at once on every replica.

No key, or one that is unknown or revoked: 401. A key whose scope does not admit the route: 403. A
widget key sent from a page whose origin its tenant does not allow: 403.

Every app route serves the data of the key's tenant (``apps.composition.Services.apps_of``): the
key is resolved once per request (:func:`authenticate`), and both the scope check and the
dependencies that hand a route its tenant's service read that one ``Principal``. The operator key
acts for the tenant named in ``X-Tenant`` (``default`` without it); any other key sent with an
``X-Tenant`` that is not its own gets 403. Routes that change what every
tenant shares (loading adapters into the engine) admit only the default tenant's admin and the
operator (``shared=True``) until tenants have adapters of their own.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

import redis
from fastapi import Depends, Header, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from apps.tenants.limits import RateLimits
from apps.tenants.store import DEFAULT_TENANT, SCOPES, TENANT_ID, TenantStore, scope_admits
from core.config import PLACEHOLDER_SECRETS
from core.errors import AuthenticationError, ModelNotReadyError, PermissionDeniedError, StoreUnavailableError

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="Bearer",
    description="An API key as `Authorization: Bearer <key>`: a tenant's widget, server or admin key, "
    "the admin key (DOMAINLLM_ADMIN_KEY) or the operator key.",
)
_api_key = APIKeyHeader(name="X-Api-Key", auto_error=False, scheme_name="ApiKey", description="An API key.")
_admin_header = APIKeyHeader(
    name="X-Admin-Key",
    auto_error=False,
    scheme_name="AdminKey",
    description="The admin key (DOMAINLLM_ADMIN_KEY) or a tenant admin key in an `X-Admin-Key` header.",
)


@dataclass(frozen=True)
class Principal:
    tenant: str
    scope: str  # "widget" | "server" | "admin" | "operator"
    key_id: str | None = None  # None: a key from settings

    @property
    def operator(self) -> bool:
        return self.scope == "operator"

    def admits(self, needed: str) -> bool:
        return self.operator or (needed != "operator" and scope_admits(self.scope, needed))


def _same(given: str, expected: str) -> bool:
    # Headers arrive decoded as latin-1: encoding back gives the client's bytes (UTF-8 for non-ASCII).
    return secrets.compare_digest(given.encode("latin-1", "replace"), expected.encode("utf-8"))


def tenant_services(request: Request) -> Any:
    services = getattr(request.app.state, "services", None)
    if services is None:
        raise ModelNotReadyError("the server is still starting; retry shortly")
    return services


def tenant_store(request: Request) -> TenantStore:
    store: TenantStore = tenant_services(request).tenants
    return store


def services_limits(request: Request) -> RateLimits:
    limits: RateLimits = tenant_services(request).limits
    return limits


def _acting_tenant(request: Request) -> str:
    """The tenant an operator acts for: ``X-Tenant``, which must name an existing tenant."""
    tenant = request.headers.get("X-Tenant") or DEFAULT_TENANT
    if tenant == DEFAULT_TENANT:
        return tenant
    try:
        known = tenant_store(request).get_tenant(tenant) if TENANT_ID.match(tenant) else None
    except redis.RedisError as exc:
        raise StoreUnavailableError(
            f"the key store (Redis) is unavailable: {type(exc).__name__}; retry shortly"
        ) from exc
    if known is None:
        raise PermissionDeniedError(f"X-Tenant names no tenant: {tenant[:64]!r}")
    return tenant


def resolve(request: Request, key: str) -> Principal:
    """The principal behind ``key`` (401 when it is none)."""
    settings = request.app.state.settings
    if key in PLACEHOLDER_SECRETS:
        raise AuthenticationError(
            f"{key!r} is a placeholder, not a key: admin routes stay off until DOMAINLLM_ADMIN_KEY is set to a real secret"
        )
    operator = settings.operator_key.get_secret_value()
    if operator not in PLACEHOLDER_SECRETS and _same(key, operator):
        return Principal(_acting_tenant(request), "operator")
    admin = settings.admin_key.get_secret_value()
    if admin not in PLACEHOLDER_SECRETS and _same(key, admin):
        return Principal(DEFAULT_TENANT, "admin")
    if any(_same(key, k) for k in settings.support.public_keys):
        return Principal(DEFAULT_TENANT, "widget")
    try:
        info = tenant_store(request).authenticate(key)
    except redis.RedisError as exc:
        raise StoreUnavailableError(
            f"the key store (Redis) is unavailable: {type(exc).__name__}; retry shortly"
        ) from exc
    if info is None:
        raise AuthenticationError("the API key is not valid (unknown, mistyped or revoked)")
    return Principal(info.tenant, info.scope, info.id)


def _check_origin(request: Request, principal: Principal) -> None:
    """A tenant's widget key works only from the pages its tenant allows (when it lists any)."""
    origin = request.headers.get("Origin")
    if principal.scope != "widget" or principal.key_id is None or not origin:
        return
    try:
        tenant = tenant_store(request).get_tenant(principal.tenant)
    except redis.RedisError as exc:
        raise StoreUnavailableError(
            f"the key store (Redis) is unavailable: {type(exc).__name__}; retry shortly"
        ) from exc
    allowed = tenant.origins if tenant else []
    if allowed and "*" not in allowed and origin not in allowed:
        raise PermissionDeniedError(f"this widget key is not allowed from {origin}; add it to the tenant's origins")


async def authenticate(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
    admin_key: Annotated[str | None, Depends(_admin_header)],
    support_key: Annotated[str | None, Header(alias="X-Support-Key", include_in_schema=False)] = None,
) -> Principal:
    """The caller, once per request (FastAPI caches it): counted against the address's and the key's
    rate limits, refused with 401 when there is no valid key."""
    limits = services_limits(request)
    limits.hit_ip(request.client.host if request.client else "")  # refused keys count too: no guessing
    given = (bearer.credentials if bearer is not None else None) or api_key or admin_key or support_key
    if not given:
        raise AuthenticationError("an API key is required: send 'Authorization: Bearer <key>' (or X-Api-Key)")
    principal = resolve(request, given)
    limits.hit_key(f"{principal.tenant}:{principal.key_id or principal.scope}")
    named = request.headers.get("X-Tenant")
    if named and not principal.operator and named != principal.tenant:
        raise PermissionDeniedError(f"this key belongs to another tenant than {named[:64]!r}")
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticate)]


def requirement(needed: str, *, shared: bool = False) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency admitting keys whose scope admits ``needed`` (an operator key admits all).
    ``shared``: the route changes what every tenant shares, so only the default tenant (or the
    operator) may call it."""
    if needed not in (*SCOPES, "operator"):
        raise ValueError(f"unknown scope {needed!r}")

    async def require(request: Request, principal: PrincipalDep) -> Principal:
        if needed in ("admin", "operator") and not request.app.state.settings.expose_admin:
            raise PermissionDeniedError(
                "admin routes are off on this server (DOMAINLLM_EXPOSE_ADMIN=false): call the internal instance"
            )
        if not principal.admits(needed):
            raise PermissionDeniedError(f"this key has the {principal.scope!r} scope; this route needs {needed!r}")
        _check_origin(request, principal)
        if shared and not principal.operator and principal.tenant != DEFAULT_TENANT:
            raise PermissionDeniedError(
                "this route changes what every tenant shares (the engine's adapters): only the operator may call it"
            )
        return principal

    require.needed = needed  # type: ignore[attr-defined]  # read by route_scope (the route-by-key tests)
    return require


def route_scope(route: Any) -> str | None:
    """The scope a FastAPI route needs (its key requirement, on it or its router), or None: public."""
    stack = [route.dependant]
    while stack:
        dep = stack.pop()
        needed = getattr(dep.call, "needed", None)
        if needed is not None:
            return str(needed)
        stack.extend(dep.dependencies)
    return None


WidgetDep = Annotated[Principal, Depends(requirement("widget"))]
ServerDep = Annotated[Principal, Depends(requirement("server"))]
AdminDep = Annotated[Principal, Depends(requirement("admin"))]
SharedAdminDep = Annotated[Principal, Depends(requirement("admin", shared=True))]
OperatorDep = Annotated[Principal, Depends(requirement("operator"))]
