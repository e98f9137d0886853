"""Deadlines at the HTTP edge: how long an async route waits on the engine, and how long a client
may take to send its body.

    future = await off_loop(engine.submit_score_labels, texts, labels, model=model)  # tokenises off the loop
    scores = await await_engine(request, future)  # 503 past the deadline; cancelled if the client leaves

``await_engine`` is the one way an async route waits on an engine future. It gives up after
``DOMAINLLM_ENGINE_DEADLINE_S`` (503 with Retry-After) and watches the connection meanwhile; in both
cases it cancels the future, so a queued job never runs and a running generation stops at its next
decode step (``core.batching``). Sync code waiting on the engine (in a worker thread) has the same
deadline through the engine's own blocking calls.

``BodyReadTimeoutMiddleware`` answers 408 when a request's body has not fully arrived within
``DOMAINLLM_BODY_READ_TIMEOUT_S``: a client that sends half a body and stalls holds nothing for long.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future
from typing import ParamSpec, TypeVar

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apps.errors import error_response
from apps.http.middleware import HTTPMiddleware, TrackedSend
from core.errors import ClientGoneError, EngineOverloadedError

T = TypeVar("T")
P = ParamSpec("P")

DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is still there


async def off_loop(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` on a worker thread: an engine's ``submit_*`` validates and tokenises
    on the caller's thread, which must not be the event loop (32,000 characters take milliseconds
    that every other request would wait)."""
    return await run_in_threadpool(fn, *args, **kwargs)


def deadline_error(request: Request) -> EngineOverloadedError:
    settings = request.app.state.settings
    return EngineOverloadedError(
        f"the engine did not answer within {settings.engine_deadline_s:g} s; retry shortly",
        retry_after_s=settings.engine_max_queue_s,  # by then the queue, bounded at that much work, has drained
    )


async def await_engine(request: Request, future: Future[T]) -> T:
    """The engine's result for ``future`` within the engine deadline, while the client waits for it.

    Past the deadline: ``EngineOverloadedError`` (503, Retry-After). The client gone: ``ClientGoneError``.
    Either way (and if this task is cancelled) the future is cancelled before this returns."""
    waiter = asyncio.wrap_future(future)
    loop = asyncio.get_running_loop()
    give_up = loop.time() + request.app.state.settings.engine_deadline_s
    try:
        while True:
            left = give_up - loop.time()
            if left <= 0:
                raise deadline_error(request)
            done, _ = await asyncio.wait({waiter}, timeout=min(DISCONNECT_POLL_S, left))
            if done:
                return waiter.result()
            if await request.is_disconnected():
                raise ClientGoneError("the client closed the connection before the engine answered")
    finally:
        if not future.done():
            future.cancel()  # here, not only through the waiter's callback: its rows leave the batch now
        waiter.cancel()


# ---- the body read timeout ---------------------------------------------------------------------


class _BodyTimedOut(Exception):
    """Raised out of ``receive`` into the body reader (``BodySizeLimitMiddleware``) and caught here."""


class BodyReadTimeoutMiddleware(HTTPMiddleware):
    """408 when the request body is not complete ``timeout_s`` after the request started.

    Added around ``apps.errors.BodySizeLimitMiddleware``, which reads the whole body before the app
    sees it: a stalled ``receive`` raises out of that reader straight to here. Waits on ``receive``
    after the body (a streaming response listening for the disconnect) are not timed.
    """

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        super().__init__(app)
        self.timeout_s = timeout_s

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        give_up = asyncio.get_running_loop().time() + self.timeout_s
        body_done = False
        tracked = TrackedSend(send)

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(give_up):
                    message = await receive()
            except TimeoutError:
                raise _BodyTimedOut from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        try:
            await self.app(scope, timed_receive, tracked)
        except _BodyTimedOut:
            if tracked.started:
                raise
            message = f"the request body was not received within {self.timeout_s:g} s (DOMAINLLM_BODY_READ_TIMEOUT_S)"
            # the rest of the body may still come: the connection cannot carry a next request
            response = error_response(408, "request_timeout", message, {"Connection": "close"})
            await response(scope, receive, send)
