"""Streaming: engine deltas (produced on the engine's worker thread) to server-sent events.

The engine calls ``on_delta`` from its one worker thread, in the middle of a batch that may hold
other clients' rows, so the callback must be quick and must never raise: it only hands the text
to this request's event loop (``call_soon_threadsafe``) and is a no-op once the client has gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import Future
from typing import Any

from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from apps.errors import stream_error_json
from core.errors import DomainLLMError
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

    def is_closed(self) -> bool:
        """Polled by the engine each decode step: a closed stream stops generating."""
        return self._closed

    def push(self, text: str) -> None:
        """The engine's ``on_delta``; runs on the engine thread."""
        self._put(text)

    def _put(self, item: object) -> None:
        if self._closed:
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._closed = True

    async def deltas(self, future: Future[Completion]) -> AsyncIterator[str]:
        """Yield the text pieces as they come; return once ``future`` settled (read its result then).

        If the consumer stops early (the client disconnected), a job still waiting in the engine's
        queue is cancelled; one already running stops at its next decode step (``is_closed``).
        """
        # Done-callbacks run on the engine thread right after the last on_delta, so _END comes last.
        future.add_done_callback(lambda _: self._put(_END))
        try:
            while (item := await self._queue.get()) is not _END:
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


def submit_streaming(
    engine: Engine, prompt: Prompt, *, model: str, params: SamplingParams
) -> tuple[DeltaBridge, Future[Completion]]:
    """Queue a generation whose deltas flow through a new bridge; it stops if the reader goes away."""
    bridge = DeltaBridge()
    future = engine.submit_generate(
        prompt, model=model, params=params, on_delta=bridge.push, should_stop=bridge.is_closed
    )
    return bridge, future


def sse_response(events: AsyncIterator[BaseModel]) -> EventSourceResponse:
    """An OpenAI-style event stream: one ``data: <json>`` per chunk, then ``data: [DONE]``.

    Status 200 is sent before the first chunk, so a failure after that is reported in-band as
    ``data: {"error": {...}}`` (which the OpenAI clients raise), followed by ``[DONE]``.
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

    return EventSourceResponse(encode(), sep="\n")
