"""The live parts over server-sent events: the agent inbox's stream and each customer's stream.

Both follow a Redis stream (``handoffs.py``) from a position, polling it every ``events_poll_s``
(a quick non-blocking XREAD on a worker thread, so no connection or thread is held while waiting),
which makes them work behind any number of API replicas: the event a replica writes, every other
replica's streams read. Each SSE event carries its stream id, and a client that reconnects sends
the last one back (``?after=`` or ``Last-Event-ID``) to miss nothing. A stream ends after
``events_max_stream_s`` with an ``end`` event, so connections do not live forever behind proxies.

The customer's stream is also where the no-agent timer runs: while its handoff is open and untaken
past ``handoff_timeout_s``, the stream asks the desk to tell the customer (once per handoff, whichever
replica asks first), and the ``no_agent`` event then arrives like any other.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import redis
from fastapi import Header, Query

from apps.errors import stream_error_json
from apps.support.handoffs import StreamEvent, check_cursor
from apps.support.inbox import Inbox
from apps.support.schemas import CURSOR_SCHEMA, HEADER_CURSOR_SCHEMA
from core.errors import DomainLLMError, StoreUnavailableError

# The two ways a client says where to resume: ``?after=`` and the browser's ``Last-Event-ID``.
# "" for an absent header, not None: a header cannot be null, and a nullable schema would say it could.
AfterQuery = Annotated[
    str | None, Query(max_length=41, description="The last event id seen.", json_schema_extra=CURSOR_SCHEMA)
]
LastEventIdHeader = Annotated[str, Header(alias="Last-Event-ID", max_length=41, json_schema_extra=HEADER_CURSOR_SCHEMA)]


def resume_cursor(after: str | None, last_event_id: str) -> str | None:
    """Where a stream resumes: ``after`` when given (an empty one is a bad cursor, not none), else the
    header; both are checked when sent. None: from now."""
    if last_event_id:
        check_cursor(last_event_id)
    cursor = after if after is not None else (last_event_id or None)
    return check_cursor(cursor) if cursor is not None else None


log = logging.getLogger(__name__)

Reader = Callable[[str], list[StreamEvent]]


class NoAgentTimer:
    """Follows the customer's active handoff through its events: due once it has stayed open and
    untaken for the timeout, and the customer has not been told yet."""

    def __init__(self, handoff: dict[str, Any] | None, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.handoff_id: str | None = None
        self.open_since = 0.0
        self.told = False
        if handoff is not None and handoff["status"] == "open":
            self.handoff_id, self.open_since = handoff["id"], handoff["created_at"]
            self.told = handoff.get("no_agent_at") is not None

    def see(self, event: StreamEvent) -> None:
        if event.type == "handoff_opened":
            self.handoff_id, self.open_since, self.told = event.data["handoff_id"], event.data["created_at"], False
        elif event.type in ("agent_joined", "handoff_closed"):
            self.handoff_id = None
        elif event.type == "no_agent":
            self.told = True

    def due(self, now: float) -> str | None:
        if self.handoff_id and not self.told and now - self.open_since >= self.timeout_s:
            return self.handoff_id
        return None


async def _follow(
    read: Reader,
    cursor: str,
    *,
    poll_s: float,
    max_s: float,
    each_poll: Callable[[list[StreamEvent]], Awaitable[None]] | None = None,
) -> AsyncIterator[dict[str, str]]:
    """SSE events for every stream entry after ``cursor``, until ``max_s`` has passed."""
    deadline = time.monotonic() + max_s
    try:
        while time.monotonic() < deadline:
            events = await asyncio.to_thread(read, cursor)
            for event in events:
                cursor = event.id
                yield event.sse()
            if each_poll is not None:
                await each_poll(events)
            if len(events) < 100:  # a full batch means more are waiting: read on at once
                await asyncio.sleep(poll_s)
        yield {"event": "end", "data": json.dumps({"cursor": cursor, "reason": "reconnect with ?after=cursor"})}
    except DomainLLMError as exc:
        yield {"event": "error", "data": stream_error_json(exc)}
    except redis.RedisError as exc:
        log.error("support event stream: Redis failed: %s", type(exc).__name__)
        yield {"event": "error", "data": stream_error_json(StoreUnavailableError("the support store is unavailable"))}


async def customer_events(
    inbox: Inbox, session_id: str, state: dict[str, Any], after: str | None
) -> AsyncIterator[dict[str, str]]:
    """A customer's stream: first a ``state`` event (the active handoff, a pending rating), then
    handoff_opened, agent_joined, agent_message, handoff_closed (``csat``: a rating is asked for)
    and no_agent (``ask_email``) as they happen."""
    settings = inbox.settings
    yield {"event": "state", "data": json.dumps({k: v for k, v in state.items() if k != "cursor"})}
    timer = NoAgentTimer(state["handoff"], settings.handoff_timeout_s)

    async def check_timer(events: list[StreamEvent]) -> None:
        for event in events:
            timer.see(event)
        handoff_id = timer.due(inbox.clock())
        if handoff_id is not None:
            await asyncio.to_thread(inbox.check_no_agent, handoff_id)
            timer.told = True  # told now, by another replica, or it was taken meanwhile: ask once

    await check_timer([])  # a customer who comes back late is told at once

    def read(cursor: str) -> list[StreamEvent]:
        return inbox.desk.session_events(session_id, cursor)

    async for event in _follow(
        read,
        after or state["cursor"],
        poll_s=settings.events_poll_s,
        max_s=settings.events_max_stream_s,
        each_poll=check_timer,
    ):
        yield event


async def inbox_events(inbox: Inbox, cursor: str) -> AsyncIterator[dict[str, str]]:
    """The agents' stream: handoff_opened, handoff_taken, customer_message, agent_message,
    handoff_closed, no_agent, contact_left and csat_recorded, each with the handoff id."""
    settings = inbox.settings
    yield {"event": "ready", "data": json.dumps({"cursor": cursor})}
    async for event in _follow(
        inbox.desk.inbox_events, cursor, poll_s=settings.events_poll_s, max_s=settings.events_max_stream_s
    ):
        yield event
