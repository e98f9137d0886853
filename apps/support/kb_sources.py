"""Where knowledge-base documents come from, and keeping the knowledge base in step with it.

    scan = scan_folder(folder)                       # every supported file, parsed, tagged with its source
    scan, result = sync_folder(kb, folder)           # the KB now holds exactly the folder's documents
    report = await ingest_urls(kb, urls, policy)     # fetched pages, all or nothing
    report = await ingest_sitemap(kb, url, policy, prune=True)

Each document carries its source (``Document.source``): ``folder:<absolute folder>`` with the
file's path relative to it, ``url`` or ``sitemap:<url>`` with the page's URL, ``api`` for uploads.
A sync replaces one source's documents and never touches another's, so syncing a folder cannot
delete the FAQ CSV ingested by hand, URL ingests or API uploads (a doc_id another source holds is
reported as a failed file). A file that fails to parse keeps its previous documents; a file that
is gone loses them; a renamed file is a delete and an add. The change is one new generation of
the index (``KnowledgeBase.sync_source``): if anything fails on the way, the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from apps.support.documents import (
    DOC_ID_PATTERN,
    SUPPORTED_SUFFIXES,
    Document,
    InvalidDocumentError,
    RowError,
    parse_document_report,
)
from apps.support.fetch import FetchedPage, Fetcher, FetchPolicy, check_url
from apps.support.kb import KnowledgeBase, SyncResult, UpsertResult
from core.errors import DomainLLMError, InvalidRequestError, UpstreamError

MAX_FILE_BYTES = 50_000_000
FETCH_CONCURRENCY = 4
API_SOURCE = "api"
URL_SOURCE = "url"
_PAGE_SUFFIX = {"html": ".html", "markdown": ".md", "text": ".txt", "pdf": ".pdf"}


def folder_source(folder: Path) -> str:
    return f"folder:{folder.resolve()}"


def sitemap_source(url: str) -> str:
    return f"sitemap:{url}"


@dataclass(frozen=True)
class FileFailure:
    path: str  # relative to the folder (or the URL)
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass
class FolderScan:
    folder: Path
    source: str
    documents: list[Document] = field(default_factory=list)
    files: dict[str, list[str]] = field(default_factory=dict)  # relative path -> its doc ids
    failures: list[FileFailure] = field(default_factory=list)
    skipped_rows: list[tuple[str, RowError]] = field(default_factory=list)  # (relative path, bad FAQ row)


def files_under(path: Path) -> list[Path]:
    """``path`` itself, or the supported files below it (recursive, hidden ones skipped), sorted."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InvalidDocumentError(f"no such file or folder: {path}")
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in SUPPORTED_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )


def scan_folder(folder: Path, *, url_prefix: str | None = "/help/", max_file_bytes: int = MAX_FILE_BYTES) -> FolderScan:
    """Parse every supported file under ``folder`` (or one file: its folder is the source). A file
    that cannot be read or parsed, or whose doc_id an earlier file has, is a failure, not an error."""
    folder = Path(folder)
    root = folder.parent if folder.is_file() else folder
    files = files_under(folder)
    real_root = root.resolve()
    scan = FolderScan(root, folder_source(root))
    owner: dict[str, str] = {}
    for file in files:
        rel = file.relative_to(root).as_posix()
        try:
            if not file.resolve().is_relative_to(real_root):
                raise InvalidDocumentError(f"{rel} links outside {root}")
            if file.stat().st_size > max_file_bytes:
                raise InvalidDocumentError(f"{rel}: larger than {max_file_bytes} bytes")
            parsed = parse_document_report(file.name, file.read_bytes())
            clash = next((d.doc_id for d in parsed.documents if d.doc_id in owner), None)
            if clash is not None:
                raise InvalidDocumentError(f"doc_id {clash!r} is already taken by {owner[clash]}; rename one")
        except (DomainLLMError, OSError) as exc:
            scan.failures.append(FileFailure(rel, getattr(exc, "message", None) or str(exc)))
            continue
        scan.skipped_rows.extend((rel, e) for e in parsed.errors)
        docs = []
        for doc in parsed.documents:
            if doc.url is None and url_prefix:
                doc.url = f"{url_prefix}{doc.doc_id}"
            docs.append(doc.with_source(scan.source, rel))
            owner[doc.doc_id] = rel
        scan.documents.extend(docs)
        scan.files[rel] = [d.doc_id for d in docs]
    return scan


def sync_folder(
    kb: KnowledgeBase, folder: Path, *, url_prefix: str | None = "/help/", allow_empty: bool = False
) -> tuple[FolderScan, SyncResult]:
    """Make the knowledge base hold exactly the documents of ``folder``'s files (see the module)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidDocumentError(f"no such folder: {folder}")
    scan = scan_folder(folder, url_prefix=url_prefix)
    held = {info.doc_id: info.source for info in kb.documents()}
    mine = [d for d, src in held.items() if src == scan.source]
    if not scan.documents and not scan.failures and mine and not allow_empty:
        raise InvalidRequestError(
            f"{folder} has no supported files: syncing would delete all {len(mine)} of its documents; "
            "allow an empty folder to do that (--allow-empty, or allow_empty: true)"
        )
    taken: dict[str, tuple[str, str | None]] = {}
    for doc in scan.documents:
        other = held.get(doc.doc_id, scan.source)
        if other not in (None, scan.source):
            taken.setdefault(doc.source_path or "", (doc.doc_id, other))
    if taken:  # those files' documents belong to another source: report them, sync the rest
        scan.failures.extend(
            FileFailure(path, f"doc_id {doc_id!r} is held by {other}; rename the file or delete that document")
            for path, (doc_id, other) in taken.items()
        )
        scan.documents = [d for d in scan.documents if d.source_path not in taken]
        for path in taken:
            scan.files.pop(path, None)
    result = kb.sync_source(scan.source, scan.documents, keep_paths=[f.path for f in scan.failures])
    return scan, result


# ---- URLs -----------------------------------------------------------------------------------------


def url_doc_id(url: str) -> str:
    """A stable doc_id for a page: ``https://help.example.com/en/returns/`` -> ``help.example.com/en/returns``."""
    parsed = check_url_syntax(url)
    path = parsed.path.strip("/")
    base = parsed.raw_host.decode("ascii").lower() + (f"/{path}" if path else "")
    base = re.sub(r"[^A-Za-z0-9_.:@/-]+", "-", base).strip("-/")
    if parsed.query:
        base += "-" + hashlib.sha1(parsed.query.encode("utf-8")).hexdigest()[:8]
    if len(base) > 128 or not DOC_ID_PATTERN.match(base):
        base = base[:115].rstrip("-/") + "-" + hashlib.sha1(url.encode("utf-8")).hexdigest()[:12]
    return base


def check_url_syntax(url: str) -> Any:
    """The parsed URL (scheme and host checked, no policy), for naming documents."""
    return check_url(url, FetchPolicy(allow_hosts=("*",)))


def page_document(page: FetchedPage, source: str) -> Document:
    """The document of one fetched page, named after the URL asked for (stable across redirects)."""
    name = PurePosixPath(page.final_url.split("?", 1)[0]).name or "index"
    name = PurePosixPath(name).stem + _PAGE_SUFFIX[page.kind]
    parsed = parse_document_report(name, page.data, doc_id=url_doc_id(page.url), url=page.final_url)
    if not parsed.documents:
        raise InvalidDocumentError(f"{page.url}: no usable text")
    return parsed.documents[0].with_source(source, page.url)


@dataclass
class UrlIngest:
    results: list[UpsertResult | dict[str, Any]]
    errors: list[FileFailure]
    sync: SyncResult | None = None
    truncated: bool = False  # the sitemap listed more than fetch_max_urls

    def to_dict(self) -> dict[str, Any]:
        return {
            "results": [r if isinstance(r, dict) else r.to_dict() for r in self.results],
            "errors": [e.to_dict() for e in self.errors],
            "sync": self.sync.to_dict() if self.sync else None,
            "truncated": self.truncated,
        }


def check_urls(urls: list[str], policy: FetchPolicy) -> list[str]:
    """Every URL checked against the policy before any is fetched; duplicates dropped."""
    if not urls:
        raise InvalidRequestError("no URLs given")
    for url in urls:
        check_url(url, policy)
    return list(dict.fromkeys(urls))


async def _fetch_documents(
    fetcher: Fetcher, urls: list[str], source: str
) -> list[tuple[str, Document | DomainLLMError]]:
    gate = asyncio.Semaphore(FETCH_CONCURRENCY)

    async def one(url: str) -> tuple[str, Document | DomainLLMError]:
        async with gate:
            try:
                page = await fetcher.page(url)
                return url, await asyncio.to_thread(page_document, page, source)
            except DomainLLMError as exc:
                return url, exc

    return list(await asyncio.gather(*(one(u) for u in urls)))


async def ingest_urls(
    kb: KnowledgeBase, urls: list[str], policy: FetchPolicy, fetcher: Fetcher | None = None
) -> UrlIngest:
    """Fetch and upsert pages, all or nothing: the first page that is refused or fails raises, and
    nothing is stored."""
    urls = check_urls(urls, policy)
    async with fetcher or Fetcher(policy) as f:
        fetched = await _fetch_documents(f, urls, URL_SOURCE)
    for _url, got in fetched:
        if isinstance(got, DomainLLMError):
            raise got
    docs = [got for _, got in fetched if isinstance(got, Document)]
    results = await asyncio.to_thread(kb.upsert_many, docs)
    return UrlIngest(list(results), [])


async def ingest_sitemap(
    kb: KnowledgeBase, sitemap_url: str, policy: FetchPolicy, *, prune: bool = False, fetcher: Fetcher | None = None
) -> UrlIngest:
    """Fetch the pages a sitemap lists and upsert those that work; the others are reported. With
    ``prune``, pages this sitemap gave before and lists no more are deleted (those that failed
    this time are kept). A sitemap that is refused, fails, or yields no page raises."""
    check_url(sitemap_url, policy)
    async with fetcher or Fetcher(policy) as f:
        urls = await f.sitemap(sitemap_url)
        truncated = len(urls) >= policy.max_urls
        errors: list[FileFailure] = []
        allowed = []
        for url in urls:
            try:
                check_url(url, policy)
                allowed.append(url)
            except DomainLLMError as exc:
                errors.append(FileFailure(url, exc.message))
        fetched = await _fetch_documents(f, allowed, sitemap_source(sitemap_url))
    docs = []
    for url, got in fetched:
        if isinstance(got, DomainLLMError):
            errors.append(FileFailure(url, got.message))
        else:
            docs.append(got)
    if not docs:
        detail = "; ".join(f"{e.path}: {e.reason}" for e in errors[:3])
        raise UpstreamError(f"{sitemap_url}: no page of the sitemap could be ingested ({detail})", url=sitemap_url)
    if prune:
        sync = await asyncio.to_thread(
            kb.sync_source,
            sitemap_source(sitemap_url),
            docs,
            keep_paths=[e.path for e in errors],
            adopt=(URL_SOURCE,),  # pages ingested one by one before become the sitemap's
        )
        by_status = {d: s for s in ("added", "updated", "unchanged") for d in getattr(sync, s)}
        results: list[UpsertResult | dict[str, Any]] = [
            {"doc_id": d.doc_id, "status": by_status[d.doc_id]} for d in docs
        ]
        return UrlIngest(results, errors, sync, truncated)
    return UrlIngest(list(await asyncio.to_thread(kb.upsert_many, docs)), errors, None, truncated)
