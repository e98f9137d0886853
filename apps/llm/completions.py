"""POST /v1/completions: OpenAI (legacy) text completions: the prompt is continued as is."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import Future

from fastapi import APIRouter, Request
from fastapi.responses import Response

from apps.deps import EngineDep, SettingsDep, select_model
from apps.errors import error_responses
from apps.http.streaming import DeltaBridge, sse_response, submit_streaming
from apps.llm.schemas import (
    CompletionChoice,
    CompletionRequest,
    FinishReason,
    TextCompletion,
    Usage,
    finish_reason,
    new_id,
    now,
)
from core.sampling import Completion

router = APIRouter(prefix="/v1", tags=["generation"])

SSE_DOC = {
    "description": "With `stream: true`: server-sent events, each `data:` a `text_completion` chunk "
    "holding the new text (the last one with `finish_reason`), then `data: [DONE]`.",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


@router.post(
    "/completions",
    response_model=TextCompletion,
    summary="Text completion",
    description="Continue a raw prompt (no chat template) with the base model or an adapter. "
    "Greedy by default (temperature 0); `stream: true` streams the text as it is generated.",
    responses={200: SSE_DOC, **error_responses(400, 404, 413, 422, 503)},
)
async def create_completion(
    body: CompletionRequest, request: Request, engine: EngineDep, settings: SettingsDep
) -> TextCompletion | Response:
    model = select_model(request, engine, body.model)
    params = body.sampling_params(settings)
    prompt = body.single_prompt()
    if body.stream:
        bridge, future = submit_streaming(engine, prompt, model=model, params=params)
        return sse_response(_chunks(bridge, future, model, body.include_usage))
    completion = await asyncio.wrap_future(engine.submit_generate(prompt, model=model, params=params))
    choice = CompletionChoice(index=0, text=completion.text, finish_reason=finish_reason(completion.finish_reason))
    return TextCompletion(id=new_id("cmpl"), created=now(), model=model, choices=[choice], usage=Usage.of(completion))


async def _chunks(
    bridge: DeltaBridge, future: Future[Completion], model: str, include_usage: bool
) -> AsyncIterator[TextCompletion]:
    chunk_id, created = new_id("cmpl"), now()

    def chunk(text: str, finish: FinishReason | None) -> TextCompletion:
        choice = CompletionChoice(index=0, text=text, finish_reason=finish)
        return TextCompletion(id=chunk_id, created=created, model=model, choices=[choice])

    async for text in bridge.deltas(future):
        yield chunk(text, None)
    completion = future.result()  # settled: raises the engine's error, if any
    yield chunk("", finish_reason(completion.finish_reason))
    if include_usage:
        yield TextCompletion(id=chunk_id, created=created, model=model, choices=[], usage=Usage.of(completion))
