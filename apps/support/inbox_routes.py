"""The agents' side of a handoff: the inbox API under /v1/support, its live stream, the daily
analytics, and the inbox page at ``/inbox``.

    GET  /v1/support/handoffs?status=open|taken|closed   the list (newest first) and a stream cursor
    GET  /v1/support/handoffs/{id}                       one, with its conversation, passages, reason
    POST /v1/support/handoffs/{id}/take      {agent}         409 when another agent holds it
    POST /v1/support/handoffs/{id}/messages  {agent, text}   only the taker; the customer's widget gets it
    POST /v1/support/handoffs/{id}/close     {agent}         only the taker; asks the customer for a rating
    GET  /v1/support/inbox/events?after=     server-sent events: every change, live
    GET  /v1/support/analytics?days=N        per-day deflection, handoffs, CSAT, top unanswered questions

Every route takes ``AgentKeyDep``, a tenant's admin key, and serves that tenant's inbox. The agent
names themself in the body, and the desk holds them to it.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse, Response
from sse_starlette import EventSourceResponse

from apps.deps import AdminDep, SupportDep
from apps.errors import error_responses, store_guarded_route
from apps.support.inbox import Inbox
from apps.support.live import AfterQuery, LastEventIdHeader, inbox_events, resume_cursor
from apps.support.schemas import (
    SSE_RESPONSE,
    AgentMessage,
    AgentReplyRequest,
    AgentRequest,
    HandoffList,
    HandoffRecord,
)
from apps.support.settings import PACKAGE_DIR
from core.errors import NotFoundError

STATIC_DIR = PACKAGE_DIR / "static"

router = APIRouter(
    prefix="/v1/support",
    tags=["support inbox"],
    route_class=store_guarded_route("support", (redis.RedisError,)),
)
pages = APIRouter(tags=["support inbox"], include_in_schema=False)

# Who may act as an agent: a tenant's admin key (the tenant's inbox is the key's).
AgentKeyDep = AdminDep


async def agent_inbox(service: SupportDep) -> Inbox:
    """The inbox of the agent's key's tenant."""
    return service.inbox


InboxDep = Annotated[Inbox, Depends(agent_inbox)]


@router.get(
    "/handoffs",
    response_model=HandoffList,
    summary="Handoffs to a person, newest first: open, taken or closed",
    responses=error_responses(401, 422, 503),
)
def list_handoffs(
    _: AgentKeyDep,
    inbox: InboxDep,
    status: Annotated[str | None, Query(pattern="^(open|taken|closed)$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    return inbox.list_handoffs(status, limit)


@router.get(
    "/handoffs/{handoff_id}",
    response_model=HandoffRecord,
    summary="One handoff: its conversation, the passages the bot had, the reason, the contact and rating",
    responses=error_responses(401, 404, 503),
)
def get_handoff(handoff_id: str, _: AgentKeyDep, inbox: InboxDep) -> dict[str, Any]:
    return inbox.get(handoff_id)


@router.post(
    "/handoffs/{handoff_id}/take",
    response_model=HandoffRecord,
    summary="Take the conversation: the customer is told the agent joined, and the bot stays silent",
    description="Taking one you hold already changes nothing; one another agent holds, or a closed one, is 409.",
    responses=error_responses(400, 401, 404, 409, 422, 503),
)
def take_handoff(handoff_id: str, body: AgentRequest, _: AgentKeyDep, inbox: InboxDep) -> dict[str, Any]:
    return inbox.take(handoff_id, body.agent)


@router.post(
    "/handoffs/{handoff_id}/messages",
    status_code=201,
    response_model=AgentMessage,
    summary="Reply to the customer: only the agent who took the conversation",
    responses=error_responses(400, 401, 404, 409, 413, 422, 503),
)
def reply_to_handoff(handoff_id: str, body: AgentReplyRequest, _: AgentKeyDep, inbox: InboxDep) -> dict[str, Any]:
    return inbox.reply(handoff_id, body.agent, body.text)


@router.post(
    "/handoffs/{handoff_id}/close",
    response_model=HandoffRecord,
    summary="Close the conversation; the customer is asked for a rating (1-5)",
    description="Only the agent who took it may close a taken conversation (409 otherwise); an open one "
    "anyone may close (no rating is asked for: nobody talked to the customer). Closing twice is a no-op.",
    responses=error_responses(400, 401, 404, 409, 422, 503),
)
def close_handoff(handoff_id: str, body: AgentRequest, _: AgentKeyDep, inbox: InboxDep) -> dict[str, Any]:
    return inbox.close(handoff_id, body.agent)


@router.get(
    "/inbox/events",
    summary="The inbox live: every handoff opened, taken, written to, closed, rated",
    description="Server-sent events: `ready` (`cursor`), then `handoff_opened` (`handoff`), `handoff_taken`, "
    "`customer_message`, `agent_message`, `handoff_closed`, `no_agent`, `contact_left`, `csat_recorded`, "
    "each with `handoff_id`. Follow from the `cursor` of GET /handoffs (`?after=`) to miss nothing; the "
    "stream ends with `end` after DOMAINLLM_SUPPORT_EVENTS_MAX_STREAM_S: reconnect from its cursor.",
    responses={200: SSE_RESPONSE, **error_responses(400, 401, 503)},
)
async def follow_inbox(
    _: AgentKeyDep,
    inbox: InboxDep,
    after: AfterQuery = None,
    last_event_id: LastEventIdHeader = "",
) -> EventSourceResponse:
    cursor = resume_cursor(after, last_event_id)
    if cursor is None:
        cursor = await asyncio.to_thread(inbox.desk.inbox_cursor)
    return EventSourceResponse(inbox_events(inbox, cursor), sep="\n")


@router.get(
    "/analytics",
    summary="Per-day deflection, handoff rate, CSAT and the top unanswered questions",
    description="The last `days` UTC days, oldest first. Deflection: the share of a day's conversations "
    "(sessions with a bot turn or a handoff) that no handoff followed. `top_unanswered`: the questions the "
    "bot handed off over the window (PII-masked, normalised), most frequent first.",
    responses=error_responses(401, 422, 503),
)
def analytics(
    _: AgentKeyDep,
    inbox: InboxDep,
    days: Annotated[int, Query(ge=1, le=90)] = 14,
    top: Annotated[int, Query(ge=1, le=100)] = 10,
) -> dict[str, Any]:
    return inbox.report(days, top)


# ---- the page ---------------------------------------------------------------------------------------


def _static(name: str, media_type: str) -> FileResponse:
    path = STATIC_DIR / name
    if not path.is_file():
        raise NotFoundError(f"{name} is not installed")
    headers = {"Cache-Control": "no-cache", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}
    return FileResponse(path, media_type=media_type, headers=headers)


@pages.get("/inbox")
def inbox_page() -> Response:
    """The agents' inbox: the admin key is typed once and kept in the tab's sessionStorage."""
    return _static("inbox.html", "text/html; charset=utf-8")


@pages.get("/inbox/inbox.js")
def inbox_js() -> Response:
    return _static("inbox.js", "application/javascript; charset=utf-8")
