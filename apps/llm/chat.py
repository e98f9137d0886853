"""POST /v1/chat/completions: OpenAI chat completions on the base model or any adapter."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from apps.deps import EngineDep, SettingsDep
from apps.errors import error_responses
from apps.http.streaming import sse_doc
from apps.llm.generation import ChunkFormat, generate
from apps.llm.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    FinishReason,
)
from apps.tenants.auth import requirement

router = APIRouter(prefix="/v1", tags=["generation"], dependencies=[Depends(requirement("server"))])

SSE_DOC = sse_doc(
    "With `stream: true`: server-sent events, each `data:` a `chat.completion.chunk` "
    "(first the role, then content deltas, then one with `finish_reason`), then `data: [DONE]`."
)


def _choice(text: str | None, finish: FinishReason | None) -> ChatChunkChoice:
    delta = ChatDelta() if text is None else ChatDelta(content=text)
    return ChatChunkChoice(index=0, delta=delta, finish_reason=finish)


CHUNKS = ChunkFormat(
    chunk=ChatCompletionChunk,
    id_prefix="chatcmpl",
    choice=_choice,
    opening=ChatChunkChoice(index=0, delta=ChatDelta(role="assistant", content=""), finish_reason=None),
)


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    summary="Chat completion",
    description="Answer a conversation with the base model or an adapter (`model`). Greedy by default "
    "(temperature 0); `stream: true` streams the answer as it is generated.",
    responses={200: SSE_DOC, **error_responses(400, 404, 413, 422, 429, 503)},
)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, engine: EngineDep, settings: SettingsDep
) -> ChatCompletion | Response:
    done = await generate(body, body.engine_messages, CHUNKS, request, engine, settings)
    if isinstance(done, Response):
        return done
    message = AssistantMessage(content=done.text)
    return ChatCompletion(
        id=done.id,
        created=done.created,
        model=done.model,
        choices=[ChatChoice(index=0, message=message, finish_reason=done.finish_reason)],
        usage=done.usage,
    )
