"""POST /v1/completions: OpenAI (legacy) text completions: the prompt is continued as is.

With vLLM's extensions, so that this server can stand in for vLLM as the remote of a
``core.remote_engine.RemoteEngine`` (and answer lm-eval-style scoring requests): ``logprobs``
(with ``echo``, over the prompt too), ``prompt_logprobs``, ``return_token_ids``,
``return_tokens_as_token_ids``, ``ignore_eos``, and prompts of token ids, one or several, which are
scored (``echo: true, max_tokens: 0``). The shapes are vLLM's (``vllm/entrypoints/openai/protocol.py``:
``CompletionLogProbs``; ``CompletionResponseChoice.prompt_logprobs``, a list of ``{token id: Logprob}``;
``serving_completion.py``: the top-logprobs dicts hold the token itself and then the most likely
ones, and log-probabilities are clamped at -9999.0).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from apps.deps import EngineDep, SettingsDep, select_model
from apps.errors import error_responses
from apps.http.deadline import await_engine, off_loop
from apps.http.streaming import sse_doc, sse_response, submit_streaming
from apps.llm.generation import ChunkFormat, Generated, generate
from apps.llm.schemas import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    FinishReason,
    PromptLogprob,
    TextCompletion,
    Usage,
    finish_reason,
    new_id,
    now,
)
from apps.tenants.auth import requirement
from apps.tenants.budget import charge_when_done, check_budget
from core.config import Settings
from core.errors import InvalidRequestError
from core.interface import Engine
from core.logprobs import RowLogprobs, TokenScorer

router = APIRouter(prefix="/v1", tags=["generation"], dependencies=[Depends(requirement("server"))])

SSE_DOC = sse_doc(
    "With `stream: true`: server-sent events, each `data:` a `text_completion` chunk "
    "holding the new text (the last one with `finish_reason`), then `data: [DONE]`."
)
LOGPROB_FLOOR = -9999.0  # vLLM's (and OpenAI's) JSON stand-in for -inf


def _choice(text: str | None, finish: FinishReason | None) -> CompletionChoice:
    return CompletionChoice(index=0, text=text or "", finish_reason=finish)


CHUNKS = ChunkFormat(chunk=TextCompletion, id_prefix="cmpl", choice=_choice)


@router.post(
    "/completions",
    response_model=TextCompletion,
    summary="Text completion",
    description="Continue a raw prompt (no chat template) with the base model or an adapter. "
    "Greedy by default (temperature 0); `stream: true` streams the text as it is generated. "
    "`logprobs`, `echo`, `prompt_logprobs` and `return_token_ids` as in OpenAI's and vLLM's API; "
    "`echo: true` with `max_tokens: 0` scores prompts (text, or token ids: one list or a list of lists) "
    "without generating.",
    responses={200: SSE_DOC, **error_responses(400, 404, 413, 422, 429, 503)},
)
async def create_completion(
    body: CompletionRequest, request: Request, engine: EngineDep, settings: SettingsDep
) -> TextCompletion | Response:
    if body.scores_only:
        return await _score_prompts(body, request, engine)
    if body.stream and body.return_token_ids:
        return await _stream_with_ids(body, request, engine, settings)
    done = await generate(body, body.single_prompt, CHUNKS, request, engine, settings)
    if isinstance(done, Response):
        return done
    choice = CompletionChoice(index=0, text=done.text, finish_reason=done.finish_reason)
    if body.wants_logprobs or body.return_token_ids:
        choice = await _with_logprobs(choice, body, request, engine, done)
    return TextCompletion(id=done.id, created=done.created, model=done.model, choices=[choice], usage=done.usage)


def _scorer(engine: Engine) -> TokenScorer:
    if not isinstance(engine, TokenScorer):
        raise InvalidRequestError("this server's engine cannot return token ids or log-probabilities")
    return engine


async def _tokenize(scorer: TokenScorer, text: str) -> list[int]:
    if not text.strip():
        raise InvalidRequestError("prompt must be a non-empty string")
    return await off_loop(scorer.tokenize, text)


async def _logprobs_of(
    request: Request, scorer: TokenScorer, rows: list[list[int]], model: str, body: CompletionRequest
) -> list[RowLogprobs]:
    top = max(body.logprobs or 0, body.prompt_top or 0)
    future = await off_loop(scorer.submit_prompt_logprobs, rows, model=model, top_k=top)
    return await await_engine(request, future)


async def _score_prompts(body: CompletionRequest, request: Request, engine: Engine) -> TextCompletion:
    """``echo`` with ``max_tokens: 0``: each prompt scored, nothing generated (one choice per prompt)."""
    model = select_model(request, engine, body.model)
    scorer = _scorer(engine)
    rows = body.token_rows()
    if rows is None:
        rows = [await _tokenize(scorer, body.single_prompt())]
    scored = await _logprobs_of(request, scorer, rows, model, body)
    choices = []
    for i, row in enumerate(scored):
        choice = CompletionChoice(index=i, text=row.text, finish_reason="length")
        if body.logprobs is not None:
            choice.logprobs = _completion_logprobs(row, 0, body)
        if body.prompt_top is not None:
            choice.prompt_logprobs = _prompt_logprobs(row, body.prompt_top, len(row.token_ids))
        if body.return_token_ids:
            choice.prompt_token_ids, choice.token_ids = row.token_ids, []
        choices.append(choice)
    prompt_tokens = sum(len(r) for r in rows)
    usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=0, total_tokens=prompt_tokens)
    return TextCompletion(id=new_id("cmpl"), created=now(), model=model, choices=choices, usage=usage)


async def _with_logprobs(
    choice: CompletionChoice, body: CompletionRequest, request: Request, engine: Engine, done: Generated
) -> CompletionChoice:
    """A generated choice with what ``echo``, ``logprobs``, ``prompt_logprobs`` and
    ``return_token_ids`` ask for: the prompt and its completion are scored in one more pass."""
    scorer = _scorer(engine)
    prompt = body.single_prompt()
    prompt_ids = await _tokenize(scorer, prompt)
    generated = done.completion.token_ids
    if body.return_token_ids:
        choice.prompt_token_ids, choice.token_ids = prompt_ids, list(generated)
    if not body.wants_logprobs:
        return choice
    (row,) = await _logprobs_of(request, scorer, [prompt_ids + generated], done.model, body)
    if body.logprobs is not None:
        choice.logprobs = _completion_logprobs(row, 0 if body.echo else len(prompt_ids), body)
    if body.prompt_top is not None:
        choice.prompt_logprobs = _prompt_logprobs(row, body.prompt_top, len(prompt_ids))
    if body.echo:
        choice.text = prompt + choice.text
    return choice


def _clamped(logprob: float) -> float:
    return max(logprob, LOGPROB_FLOOR)


def _completion_logprobs(row: RowLogprobs, start: int, body: CompletionRequest) -> CompletionLogprobs:
    """OpenAI's ``logprobs`` for the row's tokens from ``start`` on: per token its text, its
    log-probability, and a dict of itself and the ``body.logprobs`` most likely tokens there."""
    k = body.logprobs or 0

    def name(token_id: int) -> str:
        return f"token_id:{token_id}" if body.return_tokens_as_token_ids else row.pieces.get(token_id, "")

    out = CompletionLogprobs(text_offset=[], token_logprobs=[], tokens=[], top_logprobs=[])
    offset = 0
    for p in range(start, len(row.token_ids)):
        token = name(row.token_ids[p])
        position = row.positions[p]
        out.tokens.append(token)
        out.text_offset.append(offset)
        offset += len(token)
        if position is None:
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
            continue
        out.token_logprobs.append(_clamped(position.token.logprob))
        top = {token: _clamped(position.token.logprob)}
        for alt in position.top[:k]:
            top[name(alt.token_id)] = _clamped(alt.logprob)
        out.top_logprobs.append(top)
    return out


def _prompt_logprobs(row: RowLogprobs, k: int, stop: int) -> list[dict[str, PromptLogprob] | None]:
    """vLLM's ``prompt_logprobs`` for the row's first ``stop`` tokens: per position, keyed by token id,
    the token itself and the ``k`` most likely tokens there; None for the first."""
    out: list[dict[str, PromptLogprob] | None] = []
    for position in row.positions[:stop]:
        if position is None:
            out.append(None)
            continue
        entries: dict[str, PromptLogprob] = {}
        for t in [position.token, *position.top[:k]]:
            entries.setdefault(
                str(t.token_id),
                PromptLogprob(logprob=_clamped(t.logprob), rank=t.rank, decoded_token=row.pieces.get(t.token_id)),
            )
        out.append(entries)
    return out


async def _stream_with_ids(body: CompletionRequest, request: Request, engine: Engine, settings: Settings) -> Response:
    """A streamed completion with ``return_token_ids``: ``prompt_token_ids`` in the first chunk and the
    completion's ``token_ids`` in the last (the engine streams text; its ids are known at the end)."""
    model = select_model(request, engine, body.model)
    params = body.sampling_params(settings)
    prompt = body.single_prompt()
    prompt_ids = await _tokenize(_scorer(engine), prompt)
    await check_budget(request)
    bridge, future = await submit_streaming(request, engine, prompt, model=model, params=params)
    charge_when_done(request, future)
    chunk_id, created = new_id("cmpl"), now()

    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> TextCompletion:
        return TextCompletion(id=chunk_id, created=created, model=model, choices=choices, usage=usage)

    async def chunks() -> AsyncIterator[TextCompletion]:
        first = True
        async for text in bridge.deltas(future, settings.engine_deadline_s):
            yield chunk(
                [
                    CompletionChoice(
                        index=0, text=text, finish_reason=None, prompt_token_ids=prompt_ids if first else None
                    )
                ]
            )
            first = False
        completion = future.result()  # settled: raises the engine's error, if any
        last = CompletionChoice(
            index=0,
            text="",
            finish_reason=finish_reason(completion.finish_reason),
            prompt_token_ids=prompt_ids if first else None,
            token_ids=list(completion.token_ids),
        )
        yield chunk([last])
        if body.include_usage:
            yield chunk([], Usage.of(completion))

    return sse_response(chunks(), on_close=bridge.close)
