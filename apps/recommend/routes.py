"""/v1/recommend: recommendations, events, the catalogue, feedback for attribution, and stats.

Handlers are plain functions (FastAPI runs them on its thread pool): they talk to Redis and may wait
on the engine's LLM scoring. The LLM is used once the engine is ready; until then (and if it fails)
recommendations are served without it and say so (``model: "none"``). When Redis cannot be reached
the routes answer 503 rather than 500.

Every route takes a server key (the catalogue an admin key), except one: a shopper's own list,
``GET /{user_id}``, also takes the tenant's widget key with a user token that the storefront's backend
minted (``POST /user-tokens``; ``apps.tenants.tokens``), so a page can ask for it from the browser.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, Query, Request

from apps.deps import AdminDep, PrincipalDep, RecommendDep, SettingsDep
from apps.errors import ErrorResponse, error_responses, store_guarded_route
from apps.recommend.schemas import (
    ID_SCHEMA,
    EventsAccepted,
    EventsRequest,
    FeedbackRequest,
    FeedbackResponse,
    ImpressionsRequest,
    ImpressionsResponse,
    ItemsDeleted,
    ItemsRequest,
    ItemsUpserted,
    RecommendResponse,
    StatsResponse,
    UserTokenRequest,
    UserTokenResponse,
)
from apps.tenants import tokens
from apps.tenants.auth import requirement, tenant_store
from apps.tenants.store import TenantStore
from apps.tenants.tokens import UserReaderDep
from core.errors import InvalidRequestError

GUARDED = store_guarded_route("recommendation", (redis.RedisError,))
# What the app includes: ``backend``'s routes, then the per-user read (a server key, or a widget key
# with a user token: ``apps.tenants.tokens.user_reader``).
router = APIRouter(prefix="/v1/recommend", tags=["recommend"], route_class=GUARDED)
backend = APIRouter(
    route_class=GUARDED,
    dependencies=[Depends(requirement("server"))],  # the storefront's backend; the catalogue takes admin
)


ServiceDep = RecommendDep
FILE_TYPES = {
    "text/csv": "csv",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/json": "json",
}

# The file as the body. Its rows are checked one by one (bad ones come back in `errors`), so any JSON
# document is taken: the schema says so rather than promise a shape the route does not enforce.
FILE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A CSV file with a header line, JSON lines, or a JSON array of rows (an object: one row).",
        "content": {ct: {"schema": {} if fmt == "json" else {"type": "string"}} for ct, fmt in FILE_TYPES.items()},
    }
}


def _file_format(request: Request) -> str:
    content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if content_type not in FILE_TYPES:
        raise InvalidRequestError(
            f"send the file as text/csv, application/x-ndjson (JSON lines) or application/json, not {content_type or 'nothing'!r}"
        )
    return FILE_TYPES[content_type]


def _utf8(body: bytes) -> str:
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidRequestError("the file must be UTF-8 text") from None


async def _load_file(request: Request, load: Callable[[str, str], dict[str, Any]]) -> dict[str, Any]:
    """An uploaded file: its format from the Content-Type, its UTF-8 text handed to ``load(text, format)``
    on a worker thread (parsing and storing a large file must not hold up the event loop)."""
    fmt = _file_format(request)
    text = _utf8(await request.body())
    result: dict[str, Any] = await _in_thread(load, text, fmt)
    return result


@backend.get(
    "/stats",
    response_model=StatsResponse,
    summary="Click-through rate by recommendation source",
    responses=error_responses(503),
)
def stats(service: ServiceDep) -> dict[str, Any]:
    return service.stats()


@backend.post(
    "/events",
    response_model=EventsAccepted,
    summary="Record user events",
    description='One event, or `{"events": [...]}`. Every event must name a catalogue item; a batch '
    "with any bad event is refused whole, so nothing of it is stored.",
    responses=error_responses(400, 404, 413, 422, 503),
)
def post_events(body: EventsRequest, service: ServiceDep) -> dict[str, Any]:
    return service.add_events([e.model_dump() for e in body.events])


@backend.post(
    "/events/bulk",
    summary="Record a file of events",
    openapi_extra=FILE_BODY,
    description="A CSV, JSON lines or JSON file as the body. Good rows are stored; bad rows come back in `errors`.",
    responses=error_responses(400, 413, 503),
)
async def post_events_file(request: Request, service: ServiceDep) -> dict[str, Any]:
    return await _load_file(request, service.add_events_text)


@backend.post(
    "/items",
    response_model=ItemsUpserted,
    summary="Add or update catalogue items",
    description="New items are embedded and become candidates as soon as this returns. All or nothing.",
    responses=error_responses(400, 401, 413, 422, 503),
)
def post_items(body: ItemsRequest, service: ServiceDep, _: AdminDep) -> dict[str, Any]:
    return service.upsert_items([i.model_dump() for i in body.items])


@backend.post(
    "/items/bulk",
    response_model=ItemsUpserted,
    summary="Add or update catalogue items from a file",
    openapi_extra=FILE_BODY,
    description="A CSV, JSON lines or JSON file as the body. Good rows are upserted; bad rows come back in `errors`.",
    responses=error_responses(400, 401, 413, 503),
)
async def post_items_file(request: Request, service: ServiceDep, _: AdminDep) -> dict[str, Any]:
    return await _load_file(request, service.upsert_items_text)


@backend.delete(
    "/items",
    response_model=ItemsDeleted,
    summary="Delete catalogue items",
    responses=error_responses(400, 401, 422, 503),
)
def delete_items(
    service: ServiceDep,
    _: AdminDep,
    ids: Annotated[
        list[str],
        Query(min_length=1, description="Item ids.", json_schema_extra={"items": {"type": "string", **ID_SCHEMA}}),
    ],
) -> dict[str, Any]:
    return service.delete_items(ids)


@backend.post(
    "/feedback",
    response_model=FeedbackResponse,
    summary="Attribute a click, cart or purchase to a recommendation",
    responses=error_responses(400, 404, 422, 503),
)
def feedback(body: FeedbackRequest, service: ServiceDep) -> dict[str, Any]:
    return service.feedback(body.recommendation_id, body.item_id, body.type, body.ts)


@backend.post(
    "/impressions",
    response_model=ImpressionsResponse,
    summary="Record that the storefront showed a recommendation's items",
    description="Counts each item's impression once (the CTR's denominator) and keeps the items off the "
    "user's lists for DOMAINLLM_RECOMMEND_SHOWN_TTL_S. `GET /{user_id}` records nothing of the kind, so "
    "asking twice gives the same answer.",
    responses=error_responses(400, 404, 422, 503),
)
def impressions(body: ImpressionsRequest, service: ServiceDep) -> dict[str, Any]:
    return service.impressions(body.recommendation_id, body.item_ids)


@backend.post(
    "/user-tokens",
    response_model=UserTokenResponse,
    summary="Mint a user token: one shopper's recommendations, readable from their browser",
    description="The storefront's backend (a server key) mints a short-lived token for the signed-in "
    "shopper and hands it to the page, which reads `GET /v1/recommend/{user_id}` with the tenant's widget "
    "key (`X-Support-Key`) and the token (`X-User-Token`): that user only, until `expires_at`. Nothing is "
    "stored per token; rotating the tenant's signing secret (`POST /v1/tenant/user-token-secret/rotate`) "
    "retires every token minted before.",
    responses=error_responses(400, 422, 503),
)
async def mint_user_token(
    body: UserTokenRequest,
    who: PrincipalDep,  # a server key: the router's requirement
    settings: SettingsDep,
    store: Annotated[TenantStore, Depends(tenant_store)],
) -> dict[str, Any]:
    ttl_s = settings.user_token_ttl_s if body.ttl_s is None else body.ttl_s
    return await _in_thread(tokens.mint, store, who.tenant, body.user_id, ttl_s, settings.user_token_max_ttl_s)


router.include_router(backend)  # before the per-user read, so that /stats is not read as a user id

_USER_READ_REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorResponse,
        "description": "Missing, wrong or revoked API key; or an `X-User-Token` that is malformed, altered, "
        "expired or signed with a rotated secret.",
    },
    403: {
        "model": ErrorResponse,
        "description": "A widget key without an `X-User-Token`, from an origin its tenant does not allow, or "
        "with a token minted for another user or another tenant.",
    },
}


@router.get(
    "/{user_id}",
    response_model=RecommendResponse,
    summary="Recommendations for a user",
    description="A ranked, filtered, explained list. Unknown users get a cold-start list (popular, "
    "diversified, around `context_item` or `category` when given). Never returns out-of-stock items, "
    "items the user bought, or items recorded as shown (`POST /impressions`) in the last half hour. "
    "Reading changes nothing: the same request gives the same list. Takes a server key, or (from the "
    "shopper's browser) a widget key with an `X-User-Token` minted for this `user_id` "
    "(`POST /user-tokens`).",
    responses={**error_responses(400, 404, 422, 503), **_USER_READ_REFUSALS},
)
def recommend(
    user_id: str,
    _: UserReaderDep,
    service: ServiceDep,
    k: Annotated[int, Query(description="How many items (1 to DOMAINLLM_RECOMMEND_MAX_K).")] = 10,
    context_item: Annotated[str | None, Query(description="The item on the page, if any.")] = None,
    category: Annotated[str | None, Query(max_length=200)] = None,
    exclude: Annotated[
        list[str] | None, Query(description="Item ids not to return (repeat or comma-separate).")
    ] = None,
    price_min: Annotated[float | None, Query(ge=0)] = None,
    price_max: Annotated[float | None, Query(ge=0)] = None,
    mmr_lambda: Annotated[float | None, Query(ge=0, le=1, description="Diversity: 1 relevance only.")] = None,
) -> dict[str, Any]:
    excluded = [x.strip() for raw in exclude or [] for x in raw.split(",") if x.strip()]
    return service.recommend(
        user_id,
        k=k,
        context_item=context_item or None,
        category=category or None,
        exclude=excluded,
        price_min=price_min,
        price_max=price_max,
        mmr_lambda=mmr_lambda,
    )


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    import asyncio

    return await asyncio.to_thread(fn, *args)
