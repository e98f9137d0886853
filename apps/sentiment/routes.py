"""/v1/sentiment: news in, ad-hoc classification, trends (JSON and PNG), alerts and their resending.

Redis holds the monitor's state; when it cannot be reached the routes answer 503 (``StoreUnavailable``)
rather than 500. Items are enriched by the Celery workers; this process only stores and queues them,
except for ``/classify``, which runs on the server's own engine.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Body, Depends, Query, Request, Response
from kombu.exceptions import OperationalError

from apps.deps import AdminDep, EngineDep, SentimentDep, ServicesDep
from apps.errors import error_responses, store_guarded_route
from apps.sentiment.config import parse_duration
from apps.sentiment.ingest import IngestResult
from apps.sentiment.items import parse_time
from apps.sentiment.schemas import (
    AlertsResponse,
    FeedbackRecorded,
    LabelFeedback,
    NewsAccepted,
    ResendResponse,
    SentimentClassifyRequest,
    SentimentClassifyResponse,
    SentimentResult,
    TrendsResponse,
)
from apps.sentiment.service import SentimentContext
from apps.sentiment.trends import chart_png, pick_step, scope_of, series
from apps.tenants.auth import requirement
from core.errors import InputTooLargeError, InvalidRequestError, NotFoundError

router = APIRouter(
    prefix="/v1/sentiment",
    tags=["sentiment"],
    route_class=store_guarded_route("sentiment", (redis.RedisError, OperationalError)),
    dependencies=[Depends(requirement("server"))],  # the tenant's backend and analysts; changes take admin
)


MAX_EXPLAINED_TEXTS = 8
ContextDep = SentimentDep

NEWS_EXAMPLE = {
    "items": [
        {
            "title": "Globex shares plunge 18% after regulator opens accounting fraud probe",
            "url": "https://news.example.com/globex-probe",
            "source": "Sample Wire",
            "published_at": "2026-11-21T10:02:00Z",
        }
    ]
}


@router.post(
    "/news",
    response_model=NewsAccepted,
    summary="Push news items",
    description="One item (`{title, body?, url?, source?, published_at?, id?}`) or a batch (`{items: [...]}`). "
    "Each gets a stable id (URL, else source + headline + time); an item already stored counts as a duplicate. "
    "A bad item refuses the whole request, naming it; nothing is stored then.",
    responses=error_responses(400, 413, 422, 503),
)
async def push_news(
    ctx: ContextDep, body: Annotated[dict[str, Any], Body(openapi_examples={"batch": {"value": NEWS_EXAMPLE}})]
) -> NewsAccepted:
    if "items" in body:
        raw = body["items"]
        if not isinstance(raw, list) or not raw:
            raise InvalidRequestError("items must be a non-empty list of news items")
        where = [f"items[{i}]" for i in range(len(raw))]
    else:
        raw, where = [body], ["item"]
    limit = ctx.settings.max_items_per_request
    if len(raw) > limit:
        raise InputTooLargeError(f"{len(raw)} items in one request; the limit is {limit}", limit=limit, actual=len(raw))
    records = list(zip(where, raw, strict=True))
    result: IngestResult = await asyncio.to_thread(ctx.ingest_records, records, via="api", source="api", strict=True)
    return NewsAccepted(accepted=result.accepted, duplicates=result.duplicates, ids=result.ids)


@router.post(
    "/classify",
    response_model=SentimentClassifyResponse,
    summary="Classify headlines",
    description="Sentiment (the `sentiment` adapter, or the base model while it is missing: see `model`), "
    "entities from the watchlist, topics by embedding similarity; with `explain`, per-word weights by occlusion.",
    responses=error_responses(400, 413, 422, 503),
)
async def classify(
    request: Request, body: SentimentClassifyRequest, engine: EngineDep, ctx: ContextDep, services: ServicesDep
) -> SentimentClassifyResponse:
    enricher = services.enricher(ctx)
    if body.explain and len(body.texts) > MAX_EXPLAINED_TEXTS:
        raise InvalidRequestError(
            f"explain costs one model pass per word: send at most {MAX_EXPLAINED_TEXTS} texts with explain=true"
        )
    for text in body.texts:
        if not text.strip():
            raise InvalidRequestError("each text must be a non-empty string")

    def run() -> list[SentimentResult]:
        from apps.sentiment.items import NewsItem

        # sticky by the text: under a traffic split, the same headline always meets the same version
        items = [
            NewsItem(id=hashlib.sha256(t.encode()).hexdigest()[:16], title=t, published_at=time.time())
            for t in body.texts
        ]
        results = []
        for item, e in zip(items, enricher.enrich(items, ctx.router), strict=True):
            explanation = enricher.explain(item.title, model=e["model"]) if body.explain else None
            results.append(
                SentimentResult(
                    label=e["label"],
                    scores=e["scores"],
                    model=e["model"],
                    entities=e["entities"],
                    topics=e["topics"],
                    explanation=explanation,
                )
            )
        return results

    results = await asyncio.to_thread(run)
    models = list(dict.fromkeys(r.model for r in results))
    request.state.adapter = models[0] if len(models) == 1 else "mixed"
    return SentimentClassifyResponse(
        model=models[0] if len(models) == 1 else "mixed",
        topic_method=enricher.topics.method,
        results=results,
    )


@router.post(
    "/feedback",
    response_model=FeedbackRecorded,
    summary="An analyst's right label for an item or a classified text",
    description="Counts as correct or incorrect for the model version that gave the label (the A/B report, "
    "`/v1/tenants/{t}/adapters/sentiment/ab`) and keeps the labelled row for the next training "
    "(`GET /v1/sentiment/feedback.csv`).",
    responses=error_responses(400, 404, 409, 422, 503),
)
async def label_feedback(body: LabelFeedback, ctx: ContextDep) -> FeedbackRecorded:
    result = await asyncio.to_thread(
        lambda: ctx.label_feedback(
            label=body.label,
            item_id=body.item_id,
            text=body.text,
            model=body.model,
            given=body.given,
            entity=body.entity,
        )
    )
    return FeedbackRecorded(**result)


@router.get(
    "/feedback.csv",
    summary="The analysts' labelled rows, as a training file (admin)",
    description="text,label,entity: the format `POST /v1/tenants/{t}/adapters/sentiment/train` reads.",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}, **error_responses(401, 403, 503)},
)
async def feedback_csv(ctx: ContextDep, _admin: AdminDep) -> Response:
    text = await asyncio.to_thread(ctx.corrections_csv)
    return Response(text, media_type="text/csv; charset=utf-8")


def _range(window: str, end: str | None, step: str | None, bucket_s: int) -> tuple[int, float, int]:
    try:
        window_s = parse_duration(window)
        step_s = parse_duration(step) if step else None
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from None
    if window_s > 400 * 86400:
        raise InvalidRequestError("window may be at most 400 days")
    end_t = parse_time(float(end) if end and end.replace(".", "", 1).isdigit() else end) if end else time.time()
    return window_s, end_t, pick_step(window_s, bucket_s, step_s)


TopicQuery = Annotated[str | None, Query(max_length=64, description="A topic from the config, e.g. earnings.")]
EntityQuery = Annotated[str | None, Query(max_length=64, description="A ticker from the watchlist, e.g. GLBX.")]
WindowQuery = Annotated[str, Query(max_length=16, description="Duration: 90m, 24h, 7d.")]
EndQuery = Annotated[str | None, Query(max_length=40, description="End: ISO 8601 or epoch seconds; default now.")]
StepQuery = Annotated[
    str | None, Query(max_length=16, description="Point spacing (a multiple of the bucket); default auto.")
]


def _trends(ctx: SentimentContext, topic: str | None, entity: str | None, window: str, end: str | None,
            step: str | None) -> TrendsResponse:  # fmt: skip
    scope = scope_of(topic, entity)
    window_s, end_t, step_s = _range(window, end, step, ctx.config.bucket_s)
    points = series(ctx.store, scope, end_t, window_s, ctx.config.bucket_s, step_s)
    start = points[0]["t"] if points else int(end_t - window_s)
    alerts = ctx.alerts.recent(scope=scope, since=start, until=end_t + step_s, limit=200)
    return TrendsResponse(scope=scope, start=start, end=end_t, step_s=step_s, series=points,
                          alerts=[a.to_dict() for a in alerts])  # fmt: skip


@router.get(
    "/trends",
    response_model=TrendsResponse,
    summary="Sentiment trend",
    description="Counts per label and the negative share per step over `window` (e.g. 24h, 7d) ending at `end` "
    "(default now), for a topic, an entity, or everything; with the alerts of that scope in the range.",
    responses=error_responses(400, 503),
)
async def trends(
    ctx: ContextDep,
    topic: TopicQuery = None,
    entity: EntityQuery = None,
    window: WindowQuery = "24h",
    end: EndQuery = None,
    step: StepQuery = None,
) -> TrendsResponse:
    return await asyncio.to_thread(_trends, ctx, topic, entity, window, end, step)


@router.get(
    "/trends.png",
    summary="Sentiment trend chart",
    description="The same trend as a PNG: negative share over item counts, each alert marked in its severity colour.",
    responses={200: {"content": {"image/png": {}}}, **error_responses(400, 503)},
    response_class=Response,
)
async def trends_png(
    ctx: ContextDep,
    topic: TopicQuery = None,
    entity: EntityQuery = None,
    window: WindowQuery = "24h",
    end: EndQuery = None,
    step: StepQuery = None,
) -> Response:
    data = await asyncio.to_thread(_trends, ctx, topic, entity, window, end, step)
    from apps.sentiment.alerts import Alert

    png = await asyncio.to_thread(
        chart_png, [p.model_dump() for p in data.series], [Alert.from_dict(a) for a in data.alerts], data.scope
    )
    return Response(png, media_type="image/png")


@router.get(
    "/alerts",
    response_model=AlertsResponse,
    summary="Alert history",
    description="Alerts newest first, each with what fired, on which numbers, the items behind it and where it was delivered.",
    responses=error_responses(400, 503),
)
async def list_alerts(
    ctx: ContextDep,
    topic: TopicQuery = None,
    entity: EntityQuery = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> AlertsResponse:
    def run() -> AlertsResponse:
        scope = scope_of(topic, entity) if topic or entity else None
        alerts = ctx.alerts.recent(scope=scope, limit=limit)
        return AlertsResponse(alerts=[{**a.to_dict(), "deliveries": ctx.alerts.delivery(a.id)} for a in alerts])

    return await asyncio.to_thread(run)


@router.get("/alerts/{alert_id}", summary="One alert", responses=error_responses(404, 503))
async def get_alert(ctx: ContextDep, alert_id: str) -> dict[str, Any]:
    alert = await asyncio.to_thread(ctx.alerts.get, alert_id)
    if alert is None:
        raise NotFoundError(f"no alert {alert_id!r}")
    return {**alert.to_dict(), "deliveries": ctx.alerts.delivery(alert_id)}


@router.post(
    "/alerts/{alert_id}/resend",
    response_model=ResendResponse,
    summary="Resend an alert",
    description="Queue again every delivery of this alert that has not succeeded (dead-lettered or failed). Admin key.",
    responses=error_responses(401, 404, 503),
)
async def resend(ctx: ContextDep, alert_id: str, _: AdminDep) -> ResendResponse:
    if await asyncio.to_thread(ctx.alerts.get, alert_id) is None:
        raise NotFoundError(f"no alert {alert_id!r}")
    pairs = await asyncio.to_thread(ctx.resend, alert_id)
    return ResendResponse(queued=[{"alert_id": a, "target": t} for a, t in pairs])


@router.get(
    "/items/{item_id}", summary="One stored item, with its enrichment once done", responses=error_responses(404, 503)
)
async def get_item(ctx: ContextDep, item_id: str) -> dict[str, Any]:
    record = (await asyncio.to_thread(ctx.store.get, [item_id]))[0]
    if record is None:
        raise NotFoundError(f"no item {item_id!r}")
    return record


@router.get("/stats", summary="Counters: accepted, duplicates, rejected, enriched, pending; dead letters")
async def stats(ctx: ContextDep) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        return {
            **ctx.store.stats(),
            "dead_letters": [{"alert_id": a, "target": t} for a, t in ctx.alerts.dead_letters()],
        }

    return await asyncio.to_thread(run)
