"""/v1/support/kb: the knowledge base the support bot answers from (admin key to change it; the
widget's public key to search it).

    POST   /documents          JSON documents                       source "api"
    POST   /files?name=...     one file as the body                 source "api"
    POST   /urls               {"urls": [...]} or {"sitemap": url}  source "url" / "sitemap:<url>"
    POST   /sync               {"folder": path} under DOMAINLLM_SUPPORT_SYNC_ROOTS: add, update, delete
    DELETE /documents/{doc_id}
    GET    /search?q=...

Every write is checked (size, type, text, URL policy) before anything is indexed, and lands as one
new generation of the index, so bad input gets a 4xx and the served index does not change. URL
fetching and its refusals are in ``apps.support.fetch``; sources and sync in ``apps.support.kb_sources``.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from apps.deps import AdminDep, SupportDep
from apps.errors import error_responses, store_guarded_route
from apps.http.bodies import file_body
from apps.support.documents import Document, InvalidDocumentError, parse_document_report
from apps.support.fetch import FetchPolicy
from apps.support.kb_sources import API_SOURCE, ingest_sitemap, ingest_urls, sync_folder
from apps.support.routes import PublicKeyDep
from apps.support.schemas import DocumentsRequest, DocumentsUpserted, SearchHit
from core.errors import InputTooLargeError, InvalidRequestError, NotFoundError


class UrlsRequest(BaseModel):
    # _one's rule, stated for clients: "urls" (no "prune") or "sitemap", exactly one of them
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {"required": ["urls"], "properties": {"urls": {"type": "array"}, "prune": {"const": False}}},
                {"required": ["sitemap"], "properties": {"sitemap": {"type": "string"}}},
            ]
        },
    )
    urls: list[Annotated[str, Field(max_length=2000)]] | None = Field(
        None, min_length=1, max_length=50, description="Pages to ingest; all or nothing: one failure stores none."
    )
    sitemap: str | None = Field(
        None, max_length=2000, description="A sitemap (or sitemap index) URL: its pages that fetch are stored."
    )
    prune: StrictBool = Field(
        False, description="sitemap only: delete pages this sitemap gave before and lists no more."
    )

    @model_validator(mode="after")
    def _one(self) -> UrlsRequest:
        if (self.urls is None) == (self.sitemap is None):
            raise ValueError('send either "urls" or "sitemap", not both or neither')
        if self.prune and self.sitemap is None:
            raise ValueError('"prune" applies to a "sitemap" only')
        if any(len(u) > 2000 for u in self.urls or []):
            raise ValueError("a URL is at most 2000 characters")
        return self


class UrlsIngested(BaseModel):
    results: list[dict[str, Any]]
    errors: list[dict[str, str]] = Field(default_factory=list, description="Sitemap pages skipped, and why.")
    sync: dict[str, Any] | None = Field(None, description="With prune: added, updated, unchanged, deleted doc ids.")
    truncated: bool = Field(False, description="The sitemap listed more pages than DOMAINLLM_SUPPORT_FETCH_MAX_URLS.")


class SyncRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    folder: str = Field(..., min_length=1, max_length=4096, description="A folder under DOMAINLLM_SUPPORT_SYNC_ROOTS.")
    allow_empty: StrictBool = Field(False, description="Let a folder with no files delete all of its documents.")


class SyncDone(BaseModel):
    source: str
    added: list[str]
    updated: list[str]
    unchanged: list[str]
    deleted: list[str]
    kept: list[str] = Field(description="Documents of files that failed to parse this time, left as they were.")
    failed: list[dict[str, str]] = Field(description="Files that could not be used, and why.")
    generation: int


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
            docs.append(Document(doc_id=doc_id, title=d.title, text=d.text, url=d.url, source=API_SOURCE))
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
    docs = [d.with_source(API_SOURCE, name) for d in parsed.documents]
    results = await asyncio.to_thread(service.add_documents, docs)
    return {"results": results, "errors": [e.__dict__ for e in parsed.errors]}


@router.delete(
    "/documents/{doc_id:path}", summary="Remove a document and its chunks", responses=error_responses(401, 404, 503)
)
def delete_document(doc_id: str, service: ServiceDep, _: AdminDep) -> dict[str, Any]:
    if not service.kb.delete(doc_id):
        raise NotFoundError(f"no knowledge-base document {doc_id!r}", doc_id=doc_id)
    return {"deleted": doc_id}


@router.get(
    "/search",
    response_model=list[SearchHit],
    summary="Search the knowledge base",
    responses=error_responses(400, 401, 403, 429),
)
def search(
    _: PublicKeyDep,
    service: ServiceDep,
    q: Annotated[
        str,
        Query(min_length=1, max_length=1000, json_schema_extra={"pattern": r"\S"}, description="Not only whitespace."),
    ],
    k: Annotated[int, Query(ge=1, le=50)] = 5,
    mode: Annotated[str, Query(pattern="^(hybrid|dense|bm25)$")] = "hybrid",
) -> list[dict[str, Any]]:
    if not q.strip():
        raise InvalidRequestError("q must not be blank")
    return [
        {"doc_id": h.doc_id, "title": h.title, "url": h.url, "section": h.section, "text": h.text, "score": h.score}
        for h in service.fresh_kb().search(q, k=k, mode=mode)
    ]


@router.post(
    "/urls",
    response_model=UrlsIngested,
    summary="Fetch web pages or a sitemap's pages into the knowledge base",
    description="Only hosts in `DOMAINLLM_SUPPORT_FETCH_ALLOW_HOSTS`, only public addresses (unless "
    "`DOMAINLLM_SUPPORT_FETCH_ALLOW_PRIVATE`), at most `FETCH_MAX_BYTES` a page and `FETCH_TIMEOUT_S` a fetch. "
    "A refused URL is a 400 (`url_refused`), a page too big a 413, a page that fails, is too slow "
    "(`upstream_timeout`) or is not HTML/Markdown/text/PDF a 422. `urls` are all or nothing; a sitemap "
    "stores the pages that work and lists the others in `errors`.",
    responses=error_responses(400, 401, 409, 413, 422, 503),
)
async def post_urls(body: UrlsRequest, service: ServiceDep, _: AdminDep) -> dict[str, Any]:
    policy = FetchPolicy.from_settings(service.settings)
    if body.sitemap is not None:
        done = await ingest_sitemap(service.kb, body.sitemap, policy, prune=body.prune)
    else:
        done = await ingest_urls(service.kb, body.urls or [], policy)
    return done.to_dict()


@router.post(
    "/sync",
    response_model=SyncDone,
    summary="Make the knowledge base hold exactly a server folder's documents",
    description="New files are added, changed ones replaced, the folder's documents whose files are gone deleted "
    "(a rename is a delete and an add); documents from other sources are not touched. The folder must be under "
    "`DOMAINLLM_SUPPORT_SYNC_ROOTS`. The same as `domainllm support sync FOLDER`.",
    responses=error_responses(400, 401, 409, 503),
)
async def post_sync(body: SyncRequest, service: ServiceDep, _: AdminDep) -> dict[str, Any]:
    roots = [Path(r).resolve() for r in service.settings.sync_roots]
    if not roots:
        raise InvalidRequestError("folder sync over the API is off: set DOMAINLLM_SUPPORT_SYNC_ROOTS")
    folder = Path(body.folder).resolve()
    if not any(folder.is_relative_to(r) for r in roots):
        raise InvalidRequestError(f"{body.folder} is not under DOMAINLLM_SUPPORT_SYNC_ROOTS", folder=body.folder)
    if not folder.is_dir():
        raise InvalidRequestError(f"{body.folder} is not a folder", folder=body.folder)
    scan, result = await asyncio.to_thread(sync_folder, service.kb, folder, allow_empty=body.allow_empty)
    return {**result.to_dict(), "failed": [f.to_dict() for f in scan.failures]}
