"""/v1/tenants (the operator key) and /v1/keys (a tenant's admin key): create tenants, and create,
list, rotate and revoke a tenant's keys. A clear key is in the response that creates it, once; the
store keeps its SHA-256 only. Another tenant's key id answers 404, as an unknown one does."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

import redis
from fastapi import APIRouter, Depends, Path, Request
from pydantic import Field

from apps.errors import error_responses, store_guarded_route
from apps.http.requests import RequestModel
from apps.tenants.auth import AdminDep, OperatorDep, tenant_services, tenant_store
from apps.tenants.delivery import DeliveryTargets
from apps.tenants.store import DEFAULT_TENANT, TENANT_ID, TenantStore
from core.errors import ConflictError, NotFoundError

router = APIRouter(prefix="/v1", tags=["tenants"], route_class=store_guarded_route("tenancy", (redis.RedisError,)))

StoreDep = Annotated[TenantStore, Depends(tenant_store)]
# The store's own check (check_origins), stated in the schema: scheme://host[:port], or "*" for any page.
Origin = Annotated[
    str, Field(pattern=r"^(\*|https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?)$", examples=["https://shop.example"])
]


class TenantRequest(RequestModel):
    id: str = Field(
        pattern=TENANT_ID.pattern,
        description="1-40 lowercase letters, digits and dashes, starting with a letter or digit",
    )
    name: str | None = Field(None, max_length=200)
    origins: list[Origin] = Field(
        default_factory=list, max_length=50, description="Pages allowed to use the tenant's widget keys."
    )


class OriginsRequest(RequestModel):
    origins: list[Origin] = Field(max_length=50)


class KeyRequest(RequestModel):
    scope: Literal["widget", "server", "admin"]
    label: str = Field("", max_length=100)


@router.post(
    "/tenants",
    status_code=201,
    summary="Create a tenant and its first admin key (operator key)",
    responses=error_responses(400, 401, 403, 409, 503),
)
async def create_tenant(body: TenantRequest, _: OperatorDep, store: StoreDep) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        tenant = store.create_tenant(body.id, body.name, body.origins)
        key = store.create_key(tenant.id, "admin", "first admin key")
        return {"tenant": tenant.public(), "admin_key": key.public()}

    return await asyncio.to_thread(run)


@router.get("/tenants", summary="List tenants (operator key)", responses=error_responses(401, 403, 503))
async def list_tenants(_: OperatorDep, store: StoreDep) -> dict[str, Any]:
    return {"tenants": [t.public() for t in await asyncio.to_thread(store.tenants)]}


@router.get("/tenant", summary="This key's tenant", responses=error_responses(401, 403, 503))
async def get_tenant(who: AdminDep, store: StoreDep) -> dict[str, Any]:
    return (await asyncio.to_thread(store.require_tenant, who.tenant)).public()


@router.put(
    "/tenant/origins",
    summary="Set the pages allowed to use this tenant's widget keys",
    responses=error_responses(400, 401, 403, 503),
)
async def set_origins(body: OriginsRequest, who: AdminDep, store: StoreDep) -> dict[str, Any]:
    return (await asyncio.to_thread(store.set_origins, who.tenant, body.origins)).public()


@router.post(
    "/tenant/user-token-secret/rotate",
    summary="Replace the secret that signs this tenant's user tokens; every token minted before stops at once",
    responses=error_responses(401, 403, 503),
)
async def rotate_user_token_secret(who: AdminDep, store: StoreDep) -> dict[str, Any]:
    return {"kid": await asyncio.to_thread(store.rotate_signing_key, who.tenant)}


@router.get("/keys", summary="List this tenant's keys (never their secrets)", responses=error_responses(401, 403, 503))
async def list_keys(who: AdminDep, store: StoreDep) -> dict[str, Any]:
    return {"keys": [k.public() for k in await asyncio.to_thread(store.keys, who.tenant)]}


@router.post(
    "/keys",
    status_code=201,
    summary="Create a key; the response holds it in clear, once",
    responses=error_responses(400, 401, 403, 503),
)
async def create_key(body: KeyRequest, who: AdminDep, store: StoreDep) -> dict[str, Any]:
    return (await asyncio.to_thread(store.create_key, who.tenant, body.scope, body.label)).public()


@router.post(
    "/keys/{key_id}/rotate",
    summary="Replace a key by a new one of the same scope; the old stops at once",
    responses=error_responses(401, 403, 404, 503),
)
async def rotate_key(key_id: str, who: AdminDep, store: StoreDep) -> dict[str, Any]:
    return (await asyncio.to_thread(store.rotate, key_id, who.tenant)).public()


@router.delete(
    "/keys/{key_id}",
    summary="Revoke a key: it stops working at once, on every replica",
    responses=error_responses(401, 403, 404, 503),
)
async def revoke_key(key_id: str, who: AdminDep, store: StoreDep) -> dict[str, Any]:
    info = await asyncio.to_thread(store.revoke, key_id, who.tenant)
    return {"revoked": info.public()}


class WebhookRequest(RequestModel):
    url: str = Field(
        min_length=9,
        max_length=2000,
        pattern=r"^https?://",
        description="Where to POST (https; public addresses only). Never shown back: only its host is.",
    )
    secret: str = Field(min_length=16, max_length=256, description="Signs each body (HMAC-SHA256). Write-only.")


Kind = Annotated[str, Path(pattern="^(alerts|handoffs)$", description="`alerts` (sentiment) or `handoffs` (support)")]


def delivery_targets(request: Request) -> DeliveryTargets:
    targets: DeliveryTargets = tenant_services(request).delivery
    return targets


DeliveryDep = Annotated[DeliveryTargets, Depends(delivery_targets)]


def _own_tenant(tenant: str) -> str:
    if tenant == DEFAULT_TENANT:
        raise ConflictError(
            "the default tenant's webhooks are settings (DOMAINLLM_SENTIMENT_WEBHOOK_URL, DOMAINLLM_SUPPORT_WEBHOOK_URL)"
        )
    return tenant


@router.get(
    "/tenant/delivery",
    summary="Where this tenant's alerts and handoff events go: each webhook's host, never its URL or secret",
    responses=error_responses(401, 403, 503),
)
async def get_delivery(who: AdminDep, targets: DeliveryDep) -> dict[str, Any]:
    return await asyncio.to_thread(targets.public, who.tenant)


@router.put(
    "/tenant/delivery/{kind}",
    summary="Set the webhook this tenant's sentiment alerts or support handoff events go to",
    description="Checked now and before each send: https, no credentials in the URL, and a host that resolves to "
    "public addresses only. Each body is signed with the secret (`X-Domainllm-Signature`).",
    responses=error_responses(400, 401, 403, 409, 503),
)
async def set_delivery(kind: Kind, body: WebhookRequest, who: AdminDep, targets: DeliveryDep) -> dict[str, Any]:
    tenant = _own_tenant(who.tenant)
    return await asyncio.to_thread(targets.set, tenant, kind, body.url, body.secret)


@router.delete(
    "/tenant/delivery/{kind}",
    summary="Stop sending this tenant's alerts or handoff events to a webhook",
    responses=error_responses(401, 403, 404, 409, 503),
)
async def clear_delivery(kind: Kind, who: AdminDep, targets: DeliveryDep) -> dict[str, Any]:
    if not await asyncio.to_thread(targets.clear, _own_tenant(who.tenant), kind):
        raise NotFoundError(f"no {kind} webhook is set")
    return {"cleared": kind}
