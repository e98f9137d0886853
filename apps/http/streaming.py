"""Streaming: engine deltas (produced on the engine's worker thread) to server-sent events.

The engine calls ``on_delta`` from its one worker thread, in the middle of a batch that may hold
other clients' rows, so the callback must be quick and must never raise: it only hands the text
to this request's event loop (``call_soon_threadsafe``) and is a no-op once the client has gone.

A stream's 200 goes out only once the engine has started on it (its first delta, or its end):
until then the request waits like any other (``apps.http.deadline.await_engine``), so a full
queue or a passed deadline is a 503 with Retry-After, not an error inside a 200 stream. After that,
a gap of more than the engine deadline between two deltas ends the stream with an in-band error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any

from fastapi import Request
from pydantic import BaseModel
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from apps.errors import stream_error_json
from apps.http.deadline import await_engine, off_loop
from core.errors import DomainLLMError, EngineOverloadedError
from core.interface import Engine, Prompt
from core.sampling import Completion, SamplingParams

log = logging.getLogger(__name__)

_END = object()  # queued after the last delta, once the engine's future has settled


class DeltaBridge:
    """Carries one generation's deltas from the engine thread into the event loop, in order."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._closed = False
        self.started: Future[None] = Future()  # settles at the first delta, or when the job ends without one
        self.pushed = False  # a delta came
        self._job: Future[Completion] | None = None

    def follow(self, future: Future[Completion]) -> None:
        """Tie the bridge to the engine's job: ``started`` settles when it ends, and cancelling
        ``started`` (a client that gave up waiting for the first token) cancels the job."""
        self._job = future
        future.add_done_callback(lambda _: self._start())
        self.started.add_done_callback(lambda s: future.cancel() if s.cancelled() else None)

    def close(self) -> None:
        """The response is over (sent, failed, or its client left, even before the first event was
        read): the job stops at its next step, or never starts; a no-op once it has finished."""
        self._closed = True
        if self._job is not None:
            self._job.cancel()

    def _start(self) -> None:
        with contextlib.suppress(InvalidStateError):  # already started, or cancelled by a client that gave up
            self.started.set_result(None)

    def is_closed(self) -> bool:
        """Polled by the engine each decode step: a closed stream stops generating."""
        return self._closed

    def push(self, text: str) -> None:
        """The engine's ``on_delta``; runs on the engine thread."""
        self._put(text)
        self.pushed = True
        if not self.started.done():
            self._start()

    def _put(self, item: object) -> None:
        if self._closed:
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._closed = True

    async def deltas(self, future: Future[Completion], idle_s: float) -> AsyncIterator[str]:
        """Yield the text pieces as they come; return once ``future`` settled (read its result then).

        If the consumer stops early (the client disconnected), a job still waiting in the engine's
        queue is cancelled; one already running stops at its next decode step (``is_closed``). No
        piece for ``idle_s`` seconds: ``EngineOverloadedError``, and the job is cancelled.
        """
        # Done-callbacks run on the engine thread right after the last on_delta, so _END comes last.
        future.add_done_callback(lambda _: self._put(_END))
        try:
            while True:
                try:
                    item = await asyncio.wait_for(self._queue.get(), timeout=idle_s)
                except TimeoutError:
                    raise EngineOverloadedError(f"the engine sent nothing for {idle_s:g} s; retry shortly") from None
                if item is _END:
                    return
                assert isinstance(item, str)
                yield item
        finally:
            self._closed = True
            future.cancel()


def sse_doc(description: str) -> dict[str, Any]:
    """The OpenAPI entry for a 200 answered as server-sent events (with ``stream: true``)."""
    # the schema of one event (OpenAPI 3.2's reading of an event stream): `data` holds the JSON chunk or [DONE]
    event = {
        "type": "object",
        "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}},
        "required": ["data"],
    }
    return {"description": description, "content": {"text/event-stream": {"schema": event}}}


async def submit_streaming(
    request: Request, engine: Engine, prompt: Prompt, *, model: str, params: SamplingParams
) -> tuple[DeltaBridge, Future[Completion]]:
    """Queue a generation whose deltas flow through a new bridge (it stops if the reader goes away)
    and wait, within the engine deadline, until it has started. A job that failed before its first
    delta raises here, so the caller answers with the error's own status."""
    bridge = DeltaBridge()
    future = await off_loop(
        engine.submit_generate, prompt, model=model, params=params, on_delta=bridge.push, should_stop=bridge.is_closed
    )
    bridge.follow(future)
    await await_engine(request, bridge.started)
    error = future.exception() if future.done() and not future.cancelled() and not bridge.pushed else None
    if error is not None:
        raise error
    return bridge, future


def sse_response(events: AsyncIterator[BaseModel], on_close: Callable[[], None] | None = None) -> EventSourceResponse:
    """An OpenAI-style event stream: one ``data: <json>`` per chunk, then ``data: [DONE]``.

    Status 200 is sent before the first chunk, so a failure after that is reported in-band as
    ``data: {"error": {...}}`` (which the OpenAI clients raise), followed by ``[DONE]``.
    ``on_close`` runs when the response is over, however it ended.
    """

    async def encode() -> AsyncIterator[dict[str, str]]:
        try:
            async for event in events:
                yield {"data": event.model_dump_json()}
        except DomainLLMError as exc:
            yield {"data": stream_error_json(exc)}
        except Exception as exc:
            log.exception("stream failed")
            yield {"data": stream_error_json(exc)}
        yield {"data": "[DONE]"}

    return EventSourceResponse(encode(), sep="\n", background=BackgroundTask(on_close) if on_close else None)
