"""/v1/support: chat sessions (JSON or server-sent events), feedback, handoffs, stats and the
knowledge base; plus the pages a support team embeds: the widget script, the demo help centre at
``/`` and each knowledge-base article at ``/help/{doc_id}``.

Chat routes take the widget's public key in ``X-Support-Key`` (``DOMAINLLM_SUPPORT_PUBLIC_KEYS``);
changing the knowledge base and reading handoffs take the admin key. A message is checked (session,
size, text) before anything is stored or streamed, so bad input gets a 4xx and changes nothing.
When Redis cannot be reached the routes answer 503 rather than 500.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from sse_starlette import EventSourceResponse

from apps.deps import AdminDep, SupportDep
from apps.errors import error_responses, store_guarded_route, stream_error_json
from apps.http.streaming import submit_streaming
from apps.support.answer import Plan, Reply, StreamGuard
from apps.support.documents import Document, InvalidDocumentError, parse_document_report
from apps.support.schemas import (
    DocumentsRequest,
    DocumentsUpserted,
    FeedbackRequest,
    HandoffOpened,
    HandoffRequest,
    MessageReply,
    MessageRequest,
    SearchHit,
    SessionCreated,
    SessionRequest,
)
from apps.support.service import SupportService
from apps.support.settings import PACKAGE_DIR, SupportSettings
from core.errors import (
    AuthenticationError,
    DomainLLMError,
    InputTooLargeError,
    InvalidRequestError,
    NotFoundError,
    StoreUnavailableError,
)

log = logging.getLogger(__name__)
STATIC_DIR = PACKAGE_DIR / "static"

router = APIRouter(
    prefix="/v1/support", tags=["support"], route_class=store_guarded_route("support", (redis.RedisError,))
)
pages = APIRouter(tags=["support"], include_in_schema=False)


def support_settings(request: Request) -> SupportSettings:
    settings: SupportSettings = request.app.state.settings.support
    return settings


ServiceDep = SupportDep


async def require_public_key(
    request: Request, key: Annotated[str | None, Header(alias="X-Support-Key")] = None
) -> None:
    """Admit a widget request by its public key; no keys configured means open."""
    keys = support_settings(request).public_keys
    if not keys:
        return
    if not key:
        raise AuthenticationError("send the widget's public key in an X-Support-Key header")
    if not any(secrets.compare_digest(key.encode("utf-8", "replace"), k.encode("utf-8")) for k in keys):
        raise AuthenticationError("the X-Support-Key is not a known public key")


PublicKeyDep = Annotated[None, Depends(require_public_key)]


@router.post(
    "/sessions",
    status_code=201,
    response_model=SessionCreated,
    summary="Start a chat session",
    responses=error_responses(401, 503),
)
def create_session(_: PublicKeyDep, service: ServiceDep, body: SessionRequest | None = None) -> dict[str, str]:
    return {"session_id": service.create_session(body.metadata if body else None)}


def _events(reply_text: str) -> list[str]:
    """A finished reply (FAQ, canned, handoff) sent as word-sized token events, like a generation."""
    words = reply_text.split(" ")
    return [w if i == 0 else f" {w}" for i, w in enumerate(words)]


async def _stream(service: SupportService, session_id: str, plan: Plan) -> AsyncIterator[dict[str, str]]:
    try:
        if plan.reply is not None:
            reply: Reply = plan.reply
            for piece in _events(reply.answer):
                yield {"event": "token", "data": json.dumps({"text": piece})}
        else:
            assert plan.prompt is not None
            bridge, future = submit_streaming(
                service.engine, plan.prompt, model=service.bot.model, params=service.bot.sampling()
            )
            guard = StreamGuard(service.rules)
            async for delta in bridge.deltas(future):
                if shown := guard.feed(delta):
                    yield {"event": "token", "data": json.dumps({"text": shown})}
            if shown := guard.flush():
                yield {"event": "token", "data": json.dumps({"text": shown})}
            reply = await asyncio.to_thread(service.bot.finish, plan, future.result().text)
        final = await asyncio.to_thread(service.complete, session_id, reply)
        yield {"event": "final", "data": json.dumps(final)}
    except DomainLLMError as exc:
        yield {"event": "error", "data": stream_error_json(exc)}
    except redis.RedisError as exc:
        log.error("support stream: Redis failed: %s", type(exc).__name__)
        unavailable = StoreUnavailableError("the support store (Redis) is unavailable; retry shortly")
        yield {"event": "error", "data": stream_error_json(unavailable)}
    except Exception:
        log.exception("support stream failed")
        yield {"event": "error", "data": stream_error_json(RuntimeError())}


async def _answer(service: SupportService, session_id: str, plan: Plan) -> dict[str, Any]:
    """The whole answer; the generation waits on the engine without holding a worker thread."""
    reply = plan.reply
    if reply is None:
        assert plan.prompt is not None
        future = service.engine.submit_generate(plan.prompt, model=service.bot.model, params=service.bot.sampling())
        completion = await asyncio.wrap_future(future)
        reply = await asyncio.to_thread(service.bot.finish, plan, completion.text)
    result: dict[str, Any] = await asyncio.to_thread(service.complete, session_id, reply)
    return result


@router.post(
    "/sessions/{session_id}/messages",
    response_model=MessageReply,
    summary="Send a customer message; get the answer (JSON) or a stream of it (SSE)",
    description="With `stream: true` the answer comes as server-sent events: `token` events "
    '(`{"text": ...}`), then one `final` event with the same fields as the JSON answer (its `answer` is '
    "authoritative: a generation that ends in a handoff is replaced by the handoff message).",
    responses=error_responses(400, 401, 404, 413, 503),
)
async def post_message(session_id: str, body: MessageRequest, _: PublicKeyDep, service: ServiceDep) -> Any:
    plan = await asyncio.to_thread(service.begin, session_id, body.message)  # 4xx here, before any stream
    if not body.stream:
        return await _answer(service, session_id, plan)
    return EventSourceResponse(_stream(service, session_id, plan), sep="\n")


@router.post(
    "/sessions/{session_id}/handoff",
    response_model=HandoffOpened,
    summary="Hand the conversation to a person (the widget's 'Talk to a person')",
    responses=error_responses(401, 404, 503),
)
def request_handoff(
    session_id: str, _: PublicKeyDep, service: ServiceDep, body: HandoffRequest | None = None
) -> dict[str, Any]:
    return service.request_handoff(session_id, body.reason if body else None)


@router.post(
    "/feedback",
    summary="Thumbs up or down on one answer",
    responses=error_responses(400, 401, 404, 503),
)
def feedback(body: FeedbackRequest, _: PublicKeyDep, service: ServiceDep) -> dict[str, Any]:
    return service.feedback(body.session_id, body.message_id, body.rating, body.comment)


@router.get(
    "/stats",
    summary="Deflection, handoff and thumbs-up rates, top intents, unanswered questions (admin key)",
    responses=error_responses(401, 503),
)
def stats(_: AdminDep, service: ServiceDep) -> dict[str, Any]:
    return service.stats()


@router.get("/handoffs", summary="Conversations handed to a person", responses=error_responses(401, 503))
def handoffs(
    service: ServiceDep,
    _: AdminDep,
    status: Annotated[str | None, Query(pattern="^(open|closed)$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    return {"handoffs": service.handoffs(status, limit)}


# ---- knowledge base ---------------------------------------------------------------------------------


def _refuse_scripts(name: str, data: bytes) -> None:
    lowered = data.lower()
    if name.lower().endswith((".html", ".htm")) and (b"<script" in lowered or b"javascript:" in lowered):
        raise InvalidDocumentError(
            f"{name}: HTML with scripts is refused; remove the <script> elements, or send ?strip_scripts=true "
            "to ingest the text without them"
        )


@router.post(
    "/kb/documents",
    response_model=DocumentsUpserted,
    summary="Add or replace knowledge-base documents (JSON)",
    description="Upsert by `doc_id`: an unchanged document does nothing, a changed one replaces its chunks.",
    responses=error_responses(400, 401, 413, 503),
)
def post_documents(body: DocumentsRequest, service: ServiceDep, _: AdminDep) -> dict[str, Any]:
    docs = []
    for i, d in enumerate(body.documents):
        try:
            doc_id = d.doc_id or "doc-" + hashlib.sha1(d.title.encode("utf-8")).hexdigest()[:12]
            docs.append(Document(doc_id=doc_id, title=d.title, text=d.text, url=d.url))
        except InvalidDocumentError as exc:
            raise InvalidDocumentError(f"documents[{i}]: {exc.message}") from exc
    return {"results": service.add_documents(docs)}


@router.post(
    "/kb/files",
    response_model=DocumentsUpserted,
    summary="Add a document file: markdown, HTML, text, PDF, or an FAQ CSV/JSONL",
    description="The raw file is the body; `name` gives its file name (its type comes from the suffix).",
    responses=error_responses(400, 401, 413, 503),
)
async def post_file(
    request: Request,
    service: ServiceDep,
    _: AdminDep,
    name: Annotated[str, Query(min_length=1, max_length=255, pattern=r"^[^/\\]+$")],
    doc_id: Annotated[str | None, Query(max_length=128)] = None,
    url: Annotated[str | None, Query(max_length=2000)] = None,
    strip_scripts: bool = False,
) -> dict[str, Any]:
    data = await request.body()
    if not data:
        raise InvalidDocumentError(f"{name}: the body is empty")
    if len(data) > service.settings.max_document_bytes:
        limit = service.settings.max_document_bytes
        raise InputTooLargeError(f"{name}: {len(data)} bytes; the limit is {limit}", limit=limit, actual=len(data))
    if not strip_scripts:
        _refuse_scripts(name, data)
    parsed = await asyncio.to_thread(parse_document_report, name, data, doc_id=doc_id, url=url)
    if not parsed.documents:
        raise InvalidDocumentError(
            f"{name}: no usable document: " + "; ".join(f"{e.where}: {e.reason}" for e in parsed.errors)
        )
    results = await asyncio.to_thread(service.add_documents, parsed.documents)
    return {"results": results, "errors": [e.__dict__ for e in parsed.errors]}


@router.delete(
    "/kb/documents/{doc_id:path}", summary="Remove a document and its chunks", responses=error_responses(401, 404, 503)
)
def delete_document(doc_id: str, service: ServiceDep, _: AdminDep) -> dict[str, Any]:
    if not service.kb.delete(doc_id):
        raise NotFoundError(f"no knowledge-base document {doc_id!r}", doc_id=doc_id)
    return {"deleted": doc_id}


@router.get("/kb/search", response_model=list[SearchHit], summary="Search the knowledge base")
def search(
    _: PublicKeyDep,
    service: ServiceDep,
    q: Annotated[str, Query(min_length=1, max_length=1000)],
    k: Annotated[int, Query(ge=1, le=50)] = 5,
    mode: Annotated[str, Query(pattern="^(hybrid|dense|bm25)$")] = "hybrid",
) -> list[dict[str, Any]]:
    if not q.strip():
        raise InvalidRequestError("q must not be blank")
    return [
        {"doc_id": h.doc_id, "title": h.title, "url": h.url, "section": h.section, "text": h.text, "score": h.score}
        for h in service.fresh_kb().search(q, k=k, mode=mode)
    ]


# ---- pages ------------------------------------------------------------------------------------------


def _static(name: str, media_type: str) -> FileResponse:
    path: Path = STATIC_DIR / name
    if not path.is_file():
        raise NotFoundError(f"{name} is not installed")
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})


@pages.get("/", response_class=HTMLResponse)
def demo_page() -> Response:
    return _static("index.html", "text/html; charset=utf-8")


@pages.get("/widget/widget.js")
def widget_js() -> Response:
    response = _static("widget.js", "application/javascript; charset=utf-8")
    response.headers["Access-Control-Allow-Origin"] = "*"  # embedded on the team's own site
    return response


@pages.get("/help/{doc_id:path}", response_class=HTMLResponse)
def help_article(doc_id: str, request: Request, service: ServiceDep) -> HTMLResponse:
    doc = service.fresh_kb().get(doc_id)
    if doc is None:
        raise NotFoundError(f"no help article {doc_id!r}", doc_id=doc_id)
    body = []
    for section in doc.sections or []:
        if section.heading:
            body.append(f"<h2>{html.escape(section.heading)}</h2>")
        body.extend(f"<p>{html.escape(p)}</p>" for p in section.text.split("\n\n") if p.strip())
    if not body:
        body = [f"<p>{html.escape(p)}</p>" for p in doc.text.split("\n\n") if p.strip()]
    title = html.escape(doc.title)
    keys = support_settings(request).public_keys
    widget = f'<script src="/widget/widget.js" data-key="{html.escape(keys[0])}" defer></script>' if keys else ""
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<style>body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;"
        "line-height:1.55;color:#1f2933}a{color:#0b6e4f}</style></head><body>"
        f'<p><a href="/">&larr; Help centre</a></p><h1>{title}</h1>{"".join(body)}'
        f"{widget}</body></html>"
    )
    return HTMLResponse(page)
