"""/v1/support/kb: the knowledge base the support bot answers from (admin key to change it; the
widget's public key to search it).

Every write is checked (size, type, text) before anything is indexed, so bad input gets a 4xx and
the served index does not change.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Query, Request

from apps.deps import AdminDep, SupportDep
from apps.errors import error_responses, store_guarded_route
from apps.http.bodies import file_body
from apps.support.documents import Document, InvalidDocumentError, parse_document_report
from apps.support.routes import PublicKeyDep
from apps.support.schemas import DocumentsRequest, DocumentsUpserted, SearchHit
from core.errors import InputTooLargeError, InvalidRequestError, NotFoundError

router = APIRouter(
    prefix="/v1/support/kb", tags=["support"], route_class=store_guarded_route("support", (redis.RedisError,))
)
ServiceDep = SupportDep


def _refuse_scripts(name: str, data: bytes) -> None:
    lowered = data.lower()
    if name.lower().endswith((".html", ".htm")) and (b"<script" in lowered or b"javascript:" in lowered):
        raise InvalidDocumentError(
            f"{name}: HTML with scripts is refused; remove the <script> elements, or send ?strip_scripts=true "
            "to ingest the text without them"
        )


@router.post(
    "/documents",
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
    "/files",
    response_model=DocumentsUpserted,
    summary="Add a document file: markdown, HTML, text, PDF, or an FAQ CSV/JSONL",
    description="The raw file is the body; `name` gives its file name (its type comes from the suffix).",
    responses=error_responses(400, 401, 413, 503),
    openapi_extra=file_body(
        "text/markdown",
        "text/html",
        "text/plain",
        "text/csv",
        "application/pdf",
        "application/x-ndjson",
        "application/octet-stream",
        description="The file's bytes, as they are on disk (up to DOMAINLLM_SUPPORT_MAX_DOCUMENT_BYTES).",
    ),
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
    "/documents/{doc_id:path}", summary="Remove a document and its chunks", responses=error_responses(401, 404, 503)
)
def delete_document(doc_id: str, service: ServiceDep, _: AdminDep) -> dict[str, Any]:
    if not service.kb.delete(doc_id):
        raise NotFoundError(f"no knowledge-base document {doc_id!r}", doc_id=doc_id)
    return {"deleted": doc_id}


@router.get("/search", response_model=list[SearchHit], summary="Search the knowledge base")
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
