"""The request path shared by the OpenAI generation routes (chat and text completions).

Each route says how its chunks look (:class:`ChunkFormat`); :func:`generate` then either waits for
the completion or streams it as server-sent events: optionally an opening chunk, one chunk per
text delta, one closing chunk with ``finish_reason``, and (with ``include_usage``) a last chunk
with ``usage`` and no choices.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from apps.deps import select_model
from apps.http.deadline import await_engine, off_loop
from apps.http.streaming import DeltaBridge, sse_response, submit_streaming
from apps.llm.schemas import FinishReason, SamplingRequest, Usage, finish_reason, new_id, now
from apps.tenants.budget import charge_when_done, check_budget
from core.config import Settings
from core.interface import Engine, Prompt
from core.sampling import Completion


class ChunkModel(Protocol):
    def __call__(self, *, id: str, created: int, model: str, choices: list[Any], usage: Usage | None) -> BaseModel: ...


@dataclass(frozen=True)
class ChunkFormat:
    """How one route's streamed chunks look."""

    chunk: ChunkModel  # the chunk model (id, created, model, choices, usage)
    id_prefix: str
    # one choice: (text delta, None) while streaming; (None, finish reason) to close
    choice: Callable[[str | None, FinishReason | None], BaseModel]
    opening: BaseModel | None = None  # a choice sent before the first delta, if any


@dataclass(frozen=True)
class Generated:
    """A finished (not streamed) generation, with what every response body reports of it."""

    id: str
    created: int
    model: str
    completion: Completion

    @property
    def text(self) -> str:
        return self.completion.text

    @property
    def finish_reason(self) -> FinishReason:
        return finish_reason(self.completion.finish_reason)

    @property
    def usage(self) -> Usage:
        return Usage.of(self.completion)


async def generate(
    body: SamplingRequest,
    prompt: Callable[[], Prompt],
    fmt: ChunkFormat,
    request: Request,
    engine: Engine,
    settings: Settings,
) -> Generated | Response:
    """The finished generation, or (with ``stream: true``) the event-stream response.

    ``prompt`` reads the body's prompt; it is called after the model and sampling checks (so a
    request wrong in several ways is refused for the first of them). A tenant whose daily token
    budget is spent gets a 429 before anything is queued; what each generation used is counted."""
    model = select_model(request, engine, body.model)
    params = body.sampling_params(settings)
    the_prompt = prompt()
    await check_budget(request)
    if body.stream:
        bridge, future = await submit_streaming(request, engine, the_prompt, model=model, params=params)
        charge_when_done(request, future)
        chunks = _chunks(fmt, bridge, future, model, body.include_usage, settings.engine_deadline_s)
        return sse_response(chunks, on_close=bridge.close)
    future = await off_loop(engine.submit_generate, the_prompt, model=model, params=params)
    charge_when_done(request, future)
    completion = await await_engine(request, future)
    return Generated(new_id(fmt.id_prefix), now(), model, completion)


async def _chunks(
    fmt: ChunkFormat,
    bridge: DeltaBridge,
    future: Future[Completion],
    model: str,
    include_usage: bool,
    idle_s: float,
) -> AsyncIterator[BaseModel]:
    chunk_id, created = new_id(fmt.id_prefix), now()

    def chunk(choices: list[Any], usage: Usage | None = None) -> BaseModel:
        return fmt.chunk(id=chunk_id, created=created, model=model, choices=choices, usage=usage)

    if fmt.opening is not None:
        yield chunk([fmt.opening])
    async for text in bridge.deltas(future, idle_s):
        yield chunk([fmt.choice(text, None)])
    completion = future.result()  # settled: raises the engine's error, if any
    yield chunk([fmt.choice(None, finish_reason(completion.finish_reason))])
    if include_usage:
        yield chunk([], Usage.of(completion))
