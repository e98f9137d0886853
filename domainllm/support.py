"""``domainllm support ...``: fill the knowledge base from files, folders and web pages, keep it in
step with a folder, and search it.

    domainllm support ingest PATH                 add or update (never deletes)
    domainllm support sync FOLDER                 the KB holds exactly FOLDER's documents afterwards
    domainllm support ingest-url URL... | --sitemap URL [--prune]
    domainllm support search|list|delete

These write the same folder the server reads (DOMAINLLM_SUPPORT_KB_DIR), or a tenant's, and announce
each new generation in Redis, so every running replica reloads it within a second (a folder named
with ``--kb-dir`` is not announced: it is for a KB no server reads). Every document records its
source (the folder and file, or the URL), so a sync deletes only what came from that folder.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from apps.support.documents import SUPPORTED_SUFFIXES, InvalidDocumentError
from apps.support.fetch import FetchPolicy
from apps.support.kb import SEARCH_MODES, KnowledgeBase
from apps.support.kb_sources import FolderScan, ingest_sitemap, ingest_urls, scan_folder, sync_folder
from apps.tenants.store import DEFAULT_TENANT
from core.errors import DomainLLMError, NotFoundError
from domainllm.common import console, err_console, fail, services

app = typer.Typer(help="The customer-support knowledge base.", no_args_is_help=True)

KbDirOption = Annotated[
    Path | None, typer.Option("--kb-dir", help="Knowledge-base folder (default DOMAINLLM_SUPPORT_KB_DIR).")
]
TenantOption = Annotated[
    str | None, typer.Option("--tenant", help="The tenant whose knowledge base this is (default: the default tenant).")
]
UrlPrefixOption = Annotated[str, typer.Option(help="Documents without a url get <prefix><doc_id> ('' for none).")]


def _kb(kb_dir: Path | None, tenant: str | None = None) -> KnowledgeBase:
    """The served knowledge base of a tenant (embedding on the engine's thread; no base model load
    needed), or another folder's, with the same chunking settings."""
    built = services()
    if kb_dir is not None and tenant is not None:
        fail("give --kb-dir or --tenant, not both")
    if tenant is not None:
        if tenant != DEFAULT_TENANT and built.tenants.get_tenant(tenant) is None:
            fail(f"no tenant {tenant!r}: create it with `domainllm tenants create {tenant}`")
        return built.apps_of(tenant).support.kb
    if kb_dir is None:
        return built.support.kb
    settings = built.settings.support
    kb = KnowledgeBase(
        kb_dir, built.engine, chunk_tokens=settings.chunk_tokens, overlap_tokens=settings.chunk_overlap_tokens
    )
    kb.warm_up()
    return kb


def _report_scan(scan: FolderScan) -> None:
    for rel, e in scan.skipped_rows:
        err_console.print(f"[yellow]skipped[/] {rel} {e.where}: {e.reason}", highlight=False)
    for f in scan.failures:
        err_console.print(f"[red]failed[/] {f.path}: {f.reason}", highlight=False)


@app.command()
def ingest(
    path: Annotated[Path, typer.Argument(help="A file, or a folder searched recursively.")],
    kb_dir: KbDirOption = None,
    tenant: TenantOption = None,
    url_prefix: UrlPrefixOption = "/help/",
) -> None:
    """Parse .md/.html/.txt/.pdf articles and .csv/.jsonl FAQ files and upsert them (one index rebuild).
    Unchanged documents are left alone and nothing is deleted (see ``sync``). Exit code 1 if any file
    failed; the good ones are still stored."""
    try:
        scan = scan_folder(path, url_prefix=url_prefix or None)
    except DomainLLMError as exc:
        fail(exc)
    if not scan.files and not scan.failures:
        fail(InvalidDocumentError(f"no supported files under {path} ({', '.join(sorted(SUPPORTED_SUFFIXES))})"))
    _report_scan(scan)
    if scan.documents:
        try:
            kb = _kb(kb_dir, tenant)
            with console.status(f"indexing {len(scan.documents)} documents"):
                results = {r.doc_id: r for r in kb.upsert_many(scan.documents)}
        except DomainLLMError as exc:
            fail(exc)
        for rel, doc_ids in scan.files.items():
            counts = {"added": 0, "updated": 0, "unchanged": 0}
            for doc_id in doc_ids:
                counts[results[doc_id].status] += 1
            console.print(f"{rel}: " + ", ".join(f"{k} {v}" for k, v in counts.items()), highlight=False)
        console.print(f"knowledge base {kb.root}: {len(kb.documents())} documents, {len(kb)} chunks")
    if scan.failures:
        err_console.print(f"[red]{len(scan.failures)} of {len(scan.files) + len(scan.failures)} files failed[/]")
        raise typer.Exit(code=1)


@app.command()
def sync(
    folder: Annotated[Path, typer.Argument(help="The folder whose files the knowledge base should hold.")],
    kb_dir: KbDirOption = None,
    tenant: TenantOption = None,
    url_prefix: UrlPrefixOption = "/help/",
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="Let a folder with no files delete all of its documents.")
    ] = False,
) -> None:
    """Make the knowledge base hold exactly FOLDER's documents: add new files, update changed ones,
    delete the documents of files that are gone (a rename is a delete and an add). Documents from
    other sources (other folders, URLs, API uploads) are not touched. One new index generation: a
    failure leaves the old one serving. Exit code 1 if any file failed (its old documents are kept)."""
    try:
        kb = _kb(kb_dir, tenant)
        with console.status(f"syncing {folder}"):
            scan, result = sync_folder(kb, folder, url_prefix=url_prefix or None, allow_empty=allow_empty)
    except DomainLLMError as exc:
        fail(exc)
    _report_scan(scan)
    for status in ("added", "updated", "deleted", "kept"):
        for doc_id in getattr(result, status):
            console.print(f"{status:>9} {doc_id}", highlight=False)
    console.print(
        f"{result.source}: added {len(result.added)}, updated {len(result.updated)}, unchanged "
        f"{len(result.unchanged)}, deleted {len(result.deleted)}; knowledge base {kb.root}: "
        f"{len(kb.documents())} documents, {len(kb)} chunks",
        highlight=False,
    )
    if scan.failures:
        raise typer.Exit(code=1)


@app.command("ingest-url")
def ingest_url(
    urls: Annotated[list[str] | None, typer.Argument(help="Pages to ingest (all or nothing).")] = None,
    sitemap: Annotated[str | None, typer.Option(help="A sitemap or sitemap index URL instead.")] = None,
    prune: Annotated[bool, typer.Option(help="With --sitemap: delete pages it gave before and lists no more.")] = False,
    kb_dir: KbDirOption = None,
    tenant: TenantOption = None,
) -> None:
    """Fetch web pages into the knowledge base, within DOMAINLLM_SUPPORT_FETCH_* (allowed hosts,
    public addresses only, size and time limits). Exit code 1 if a sitemap page failed."""
    if bool(urls) == bool(sitemap):
        fail("give page URLs or --sitemap URL, not both or neither")
    if prune and not sitemap:
        fail("--prune applies to --sitemap only")
    try:
        kb = _kb(kb_dir, tenant)
        policy = FetchPolicy.from_settings(services().settings.support)
        with console.status("fetching"):
            if sitemap:
                done = asyncio.run(ingest_sitemap(kb, sitemap, policy, prune=prune))
            else:
                done = asyncio.run(ingest_urls(kb, list(urls or []), policy))
    except DomainLLMError as exc:
        fail(exc)
    for r in done.to_dict()["results"]:
        console.print(f"{r['status']:>9} {r['doc_id']}", highlight=False)
    for doc_id in done.sync.deleted if done.sync else []:
        console.print(f"{'deleted':>9} {doc_id}", highlight=False)
    for e in done.errors:
        err_console.print(f"[red]failed[/] {e.path}: {e.reason}", highlight=False)
    if done.truncated:
        err_console.print(f"[yellow]the sitemap lists more than {policy.max_urls} pages; the rest were not fetched[/]")
    console.print(f"knowledge base {kb.root}: {len(kb.documents())} documents, {len(kb)} chunks")
    if done.errors:
        raise typer.Exit(code=1)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What a customer would ask.")],
    k: Annotated[int, typer.Option(help="How many passages.")] = 5,
    mode: Annotated[str, typer.Option(help=f"One of {', '.join(SEARCH_MODES)}.")] = "hybrid",
    kb_dir: KbDirOption = None,
    tenant: TenantOption = None,
) -> None:
    """Print the best passages for a query with their scores."""
    try:
        kb = _kb(kb_dir, tenant)
        hits = kb.search(query, k=k, mode=mode)
    except DomainLLMError as exc:
        fail(exc)
    if not hits:
        console.print("no results (is the knowledge base empty?)")
        return
    table = Table(title=f"{mode}: {query}")
    for column in ("#", "score", "dense", "bm25", "doc", "section", "text"):
        table.add_column(column, justify="right" if column in {"#", "score", "dense", "bm25"} else "left")
    for h in hits:
        table.add_row(
            str(h.rank),
            f"{h.score:.3f}",
            "" if h.dense_score is None else f"{h.dense_score:.3f}",
            "" if h.bm25_score is None else f"{h.bm25_score:.2f}",
            f"{h.title}\n[dim]{h.doc_id}[/]",
            h.section or "",
            h.text if len(h.text) <= 160 else h.text[:157] + "...",
        )
    console.print(table)


@app.command("list")
def list_documents(kb_dir: KbDirOption = None, tenant: TenantOption = None) -> None:
    """The documents in the knowledge base."""
    kb = _kb(kb_dir, tenant)
    table = Table(title=f"{kb.root}: {len(kb)} chunks")
    for column in ("doc_id", "kind", "chunks", "title", "url", "source"):
        table.add_column(column)
    for info in sorted(kb.documents(), key=lambda i: i.doc_id):
        source = f"{info.source} {info.source_path or ''}".strip() if info.source else ""
        table.add_row(info.doc_id, info.kind, str(info.chunks), info.title, info.url or "", source)
    console.print(table)


@app.command()
def delete(
    doc_id: Annotated[str, typer.Argument(help="The document to remove.")],
    kb_dir: KbDirOption = None,
    tenant: TenantOption = None,
) -> None:
    """Remove a document and its chunks."""
    if not _kb(kb_dir, tenant).delete(doc_id):
        fail(NotFoundError(f"no document {doc_id!r} in the knowledge base"))
    console.print(f"deleted {doc_id}")
