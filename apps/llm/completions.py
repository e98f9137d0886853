"""POST /v1/completions: OpenAI (legacy) text completions: the prompt is continued as is."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from apps.deps import EngineDep, SettingsDep
from apps.errors import error_responses
from apps.http.streaming import sse_doc
from apps.llm.generation import ChunkFormat, generate
from apps.llm.schemas import CompletionChoice, CompletionRequest, FinishReason, TextCompletion
from apps.tenants.auth import requirement

router = APIRouter(prefix="/v1", tags=["generation"], dependencies=[Depends(requirement("server"))])

SSE_DOC = sse_doc(
    "With `stream: true`: server-sent events, each `data:` a `text_completion` chunk "
    "holding the new text (the last one with `finish_reason`), then `data: [DONE]`."
)


def _choice(text: str | None, finish: FinishReason | None) -> CompletionChoice:
    return CompletionChoice(index=0, text=text or "", finish_reason=finish)


CHUNKS = ChunkFormat(chunk=TextCompletion, id_prefix="cmpl", choice=_choice)


@router.post(
    "/completions",
    response_model=TextCompletion,
    summary="Text completion",
    description="Continue a raw prompt (no chat template) with the base model or an adapter. "
    "Greedy by default (temperature 0); `stream: true` streams the text as it is generated.",
    responses={200: SSE_DOC, **error_responses(400, 404, 413, 422, 429, 503)},
)
async def create_completion(
    body: CompletionRequest, request: Request, engine: EngineDep, settings: SettingsDep
) -> TextCompletion | Response:
    done = await generate(body, body.single_prompt, CHUNKS, request, engine, settings)
    if isinstance(done, Response):
        return done
    choice = CompletionChoice(index=0, text=done.text, finish_reason=done.finish_reason)
    return TextCompletion(id=done.id, created=done.created, model=done.model, choices=[choice], usage=done.usage)
