"""POST /v1/chat/completions: OpenAI chat completions on the base model or any adapter."""

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
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    FinishReason,
    Usage,
    finish_reason,
    new_id,
    now,
)
from core.sampling import Completion

router = APIRouter(prefix="/v1", tags=["generation"])

SSE_DOC = {
    "description": "With `stream: true`: server-sent events, each `data:` a `chat.completion.chunk` "
    "(first the role, then content deltas, then one with `finish_reason`), then `data: [DONE]`.",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    summary="Chat completion",
    description="Answer a conversation with the base model or an adapter (`model`). Greedy by default "
    "(temperature 0); `stream: true` streams the answer as it is generated.",
    responses={200: SSE_DOC, **error_responses(400, 404, 413, 422, 503)},
)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, engine: EngineDep, settings: SettingsDep
) -> ChatCompletion | Response:
    model = select_model(request, engine, body.model)
    params = body.sampling_params(settings)
    messages = body.engine_messages()
    if body.stream:
        bridge, future = submit_streaming(engine, messages, model=model, params=params)
        return sse_response(_chunks(bridge, future, model, body.include_usage))
    completion = await asyncio.wrap_future(engine.submit_generate(messages, model=model, params=params))
    return ChatCompletion(
        id=new_id("chatcmpl"),
        created=now(),
        model=model,
        choices=[
            ChatChoice(
                index=0,
                message=AssistantMessage(content=completion.text),
                finish_reason=finish_reason(completion.finish_reason),
            )
        ],
        usage=Usage.of(completion),
    )


async def _chunks(
    bridge: DeltaBridge, future: Future[Completion], model: str, include_usage: bool
) -> AsyncIterator[ChatCompletionChunk]:
    chunk_id, created = new_id("chatcmpl"), now()

    def chunk(delta: ChatDelta, finish: FinishReason | None) -> ChatCompletionChunk:
        choice = ChatChunkChoice(index=0, delta=delta, finish_reason=finish)
        return ChatCompletionChunk(id=chunk_id, created=created, model=model, choices=[choice])

    yield chunk(ChatDelta(role="assistant", content=""), None)
    async for text in bridge.deltas(future):
        yield chunk(ChatDelta(content=text), None)
    completion = future.result()  # settled: raises the engine's error, if any
    yield chunk(ChatDelta(), finish_reason(completion.finish_reason))
    if include_usage:
        yield ChatCompletionChunk(id=chunk_id, created=created, model=model, choices=[], usage=Usage.of(completion))
