"""/v1/support: chat sessions (JSON or server-sent events), feedback, handoffs, stats and the
knowledge base; plus the pages a support team embeds: the widget script, the demo help centre at
``/`` and each knowledge-base article at ``/help/{doc_id}``.

Chat routes take the widget's public key in ``X-Support-Key`` (``DOMAINLLM_SUPPORT_PUBLIC_KEYS``);
changing the knowledge base takes the admin key. The customer's side of a handoff is here (its event
stream, the rating, the e-mail address; a message while a person holds the conversation goes to
them); the agents' side is ``inbox_routes.py``. A message is checked (session, size, text) before
anything is stored or streamed, so bad input gets a 4xx and changes nothing. When Redis cannot be
reached the routes answer 503 rather than 500.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from sse_starlette import EventSourceResponse

from apps.deps import AdminDep, PublicSupportDep, SupportDep, WidgetDep
from apps.errors import error_responses, store_guarded_route, stream_error_json
from apps.support.answer import Plan
from apps.support.live import AfterQuery, LastEventIdHeader, customer_events, resume_cursor
from apps.support.schemas import (
    SSE_RESPONSE,
    ContactRequest,
    ContactSaved,
    CsatRecorded,
    CsatRequest,
    FeedbackRequest,
    HandoffOpened,
    HandoffRequest,
    MessageHeld,
    MessageReply,
    MessageRequest,
    SessionCreated,
    SessionRequest,
)
from apps.support.service import SupportService
from apps.support.settings import PACKAGE_DIR, SupportSettings
from core.errors import (
    DomainLLMError,
    NotFoundError,
    StoreUnavailableError,
)

log = logging.getLogger(__name__)
STATIC_DIR = PACKAGE_DIR / "static"

router = APIRouter(
    prefix="/v1/support", tags=["support"], route_class=store_guarded_route("support", (redis.RedisError,))
)
pages = APIRouter(tags=["support"], include_in_schema=False)


def support_settings(request: Request) -> SupportSettings:
    settings: SupportSettings = request.app.state.settings.support
    return settings


ServiceDep = SupportDep


PublicKeyDep = WidgetDep  # a widget key of the tenant (or a server or admin key)


@router.post(
    "/sessions",
    status_code=201,
    response_model=SessionCreated,
    summary="Start a chat session",
    responses=error_responses(400, 401, 503),
)
def create_session(_: PublicKeyDep, service: ServiceDep, body: SessionRequest | None = None) -> dict[str, str]:
    return {"session_id": service.create_session(body.metadata if body else None)}


def _events(reply_text: str) -> list[str]:
    """A finished reply sent as word-sized token events (widgets render them as they come)."""
    words = reply_text.split(" ")
    return [w if i == 0 else f" {w}" for i, w in enumerate(words)]


async def _stream(service: SupportService, session_id: str, plan: Plan) -> AsyncIterator[dict[str, str]]:
    try:
        for piece in _events(plan.reply.answer):
            yield {"event": "token", "data": json.dumps({"text": piece})}
        final = await asyncio.to_thread(service.complete, session_id, plan.reply)
        yield {"event": "final", "data": json.dumps(final)}
    except DomainLLMError as exc:
        yield {"event": "error", "data": stream_error_json(exc)}
    except redis.RedisError as exc:
        log.error("support stream: Redis failed: %s", type(exc).__name__)
        unavailable = StoreUnavailableError("the support store (Redis) is unavailable; retry shortly")
        yield {"event": "error", "data": stream_error_json(unavailable)}
    except Exception:
        log.exception("support stream failed")
        yield {"event": "error", "data": stream_error_json(RuntimeError())}


@router.post(
    "/sessions/{session_id}/messages",
    response_model=MessageReply,
    summary="Send a customer message; get the answer (JSON) or a stream of it (SSE)",
    description="The answer quotes the knowledge base's own sentences with [n] citations, or hands off "
    "to a person when nothing answers well enough. With `stream: true` it comes as server-sent events: "
    '`token` events (`{"text": ...}`), then one `final` event with the same fields as the JSON answer. While a '
    "handoff is open or taken the bot does not answer: the message is stored, forwarded to the agent, "
    "and the answer is 202 with `held: true` (the agent's replies come on the session's event stream).",
    responses={
        202: {"model": MessageHeld, "description": "A person holds the conversation: the message went to them."},
        **error_responses(400, 401, 404, 413, 503),
    },
)
async def post_message(session_id: str, body: MessageRequest, _: PublicKeyDep, service: ServiceDep) -> Any:
    # While a handoff is open or taken the bot stays silent: the message goes to the person (202).
    held = await asyncio.to_thread(service.inbox.customer_message, session_id, body.message)  # 4xx first
    if held is not None:
        return JSONResponse(
            MessageHeld(message_id=held["id"], handoff_id=held["handoff_id"]).model_dump(), status_code=202
        )
    plan = await asyncio.to_thread(service.begin, session_id, body.message)  # 4xx here, before any stream
    if not body.stream:
        return await asyncio.to_thread(service.complete, session_id, plan.reply)
    return EventSourceResponse(_stream(service, session_id, plan), sep="\n")


@router.post(
    "/sessions/{session_id}/handoff",
    response_model=HandoffOpened,
    summary="Hand the conversation to a person (the widget's 'Talk to a person')",
    responses=error_responses(400, 401, 404, 503),
)
def request_handoff(
    session_id: str, _: PublicKeyDep, service: ServiceDep, body: HandoffRequest | None = None
) -> dict[str, Any]:
    return service.request_handoff(session_id, body.reason if body else None)


@router.post(
    "/feedback",
    summary="Thumbs up or down on one answer",
    responses=error_responses(400, 401, 404, 503),
)
def feedback(body: FeedbackRequest, _: PublicKeyDep, service: ServiceDep) -> dict[str, Any]:
    return service.feedback(body.session_id, body.message_id, body.rating, body.comment)


@router.get(
    "/stats",
    summary="Deflection, handoff and thumbs-up rates, top intents, unanswered questions (admin key)",
    responses=error_responses(401, 503),
)
def stats(_: AdminDep, service: ServiceDep) -> dict[str, Any]:
    return service.stats()


# ---- the customer's side of a handoff (the agents' routes are in inbox_routes.py) ---------------------


@router.get(
    "/sessions/{session_id}/events",
    summary="The customer's live events: agent joined, agent messages, closed (with a rating request), no agent",
    description="Server-sent events. First `state` (`handoff`: the active one or null, `csat_pending`), then "
    "`handoff_opened`, `agent_joined` (`agent`), `agent_message` (`message`), `handoff_closed` (`csat`: "
    "true when a rating is asked for) and `no_agent` (`message`, `ask_email`: nobody took the handoff in "
    "time). Each event's `id` is its position: reconnect with `?after=<id>` to miss nothing. The stream "
    "ends with `end` after DOMAINLLM_SUPPORT_EVENTS_MAX_STREAM_S.",
    responses={200: SSE_RESPONSE, **error_responses(400, 401, 404, 503)},
)
async def session_events(
    session_id: str,
    _: PublicKeyDep,
    service: ServiceDep,
    after: AfterQuery = None,
    last_event_id: LastEventIdHeader = "",
) -> EventSourceResponse:
    cursor = resume_cursor(after, last_event_id)
    state = await asyncio.to_thread(service.inbox.session_state, session_id)  # 404 before the stream
    return EventSourceResponse(customer_events(service.inbox, session_id, state, cursor), sep="\n")


@router.post(
    "/sessions/{session_id}/csat",
    response_model=CsatRecorded,
    summary="The customer's rating (1-5) of the conversation an agent closed",
    description="Asked for by the `handoff_closed` event (`csat: true`); one rating per closed handoff. "
    "409 when there is nothing to rate (not closed by an agent yet, or rated already).",
    responses=error_responses(400, 401, 404, 409, 422, 503),
)
def post_csat(session_id: str, body: CsatRequest, _: PublicKeyDep, service: ServiceDep) -> dict[str, Any]:
    record = service.inbox.csat(session_id, body.rating, body.comment)
    return {"handoff_id": record["id"], "rating": record["csat"]}


@router.post(
    "/sessions/{session_id}/contact",
    response_model=ContactSaved,
    summary="The e-mail address where the team should answer, when no agent is free",
    description="Asked for by the `no_agent` event; attached to the session's open handoff (409 without "
    "one). The address is kept for the agents and the team's webhook, and masked in logs.",
    responses=error_responses(400, 401, 404, 409, 422, 503),
)
def post_contact(session_id: str, body: ContactRequest, _: PublicKeyDep, service: ServiceDep) -> dict[str, Any]:
    record = service.inbox.contact(session_id, body.email)
    return {"handoff_id": record["id"], "message": "Thanks: we'll answer you by e-mail."}


# ---- pages ------------------------------------------------------------------------------------------


def _static(name: str, media_type: str) -> FileResponse:
    path: Path = STATIC_DIR / name
    if not path.is_file():
        raise NotFoundError(f"{name} is not installed")
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})


@pages.get("/", response_class=HTMLResponse)
def demo_page() -> Response:
    return _static("index.html", "text/html; charset=utf-8")


@pages.get("/widget/demo.js")
def demo_js() -> Response:
    return _static("demo.js", "application/javascript; charset=utf-8")


@pages.get("/widget/widget.js")
def widget_js() -> Response:
    response = _static("widget.js", "application/javascript; charset=utf-8")
    response.headers["Access-Control-Allow-Origin"] = "*"  # embedded on the team's own site
    return response


@pages.get("/help/{doc_id:path}", response_class=HTMLResponse)
def help_article(doc_id: str, request: Request, service: PublicSupportDep) -> HTMLResponse:
    doc = service.fresh_kb().get(doc_id)
    if doc is None:
        raise NotFoundError(f"no help article {doc_id!r}", doc_id=doc_id)
    body = []
    for section in doc.sections or []:
        if section.heading:
            body.append(f"<h2>{html.escape(section.heading)}</h2>")
        body.extend(f"<p>{html.escape(p)}</p>" for p in section.text.split("\n\n") if p.strip())
    if not body:
        body = [f"<p>{html.escape(p)}</p>" for p in doc.text.split("\n\n") if p.strip()]
    title = html.escape(doc.title)
    keys = support_settings(request).public_keys
    widget = f'<script src="/widget/widget.js" data-key="{html.escape(keys[0])}" defer></script>' if keys else ""
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<style>body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;"
        "line-height:1.55;color:#1f2933}a{color:#0b6e4f}</style></head><body>"
        f'<p><a href="/">&larr; Help centre</a></p><h1>{title}</h1>{"".join(body)}'
        f"{widget}</body></html>"
    )
    return HTMLResponse(page)
