"""``domainllm support ...``: fill the knowledge base from files and search it.

These write the same folder the server reads (DOMAINLLM_SUPPORT_KB_DIR); a running server picks
the change up on its next ``KnowledgeBase.refresh()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from apps.support.documents import SUPPORTED_SUFFIXES, Document, InvalidDocumentError, parse_document_report
from apps.support.kb import SEARCH_MODES, KnowledgeBase
from core.errors import DomainLLMError, NotFoundError
from domainllm.common import console, err_console, fail, services

app = typer.Typer(help="The customer-support knowledge base.", no_args_is_help=True)
MAX_FILE_BYTES = 50_000_000

KbDirOption = Annotated[
    Path | None, typer.Option("--kb-dir", help="Knowledge-base folder (default DOMAINLLM_SUPPORT_KB_DIR).")
]


def _kb(kb_dir: Path | None) -> KnowledgeBase:
    """The served knowledge base (embedding on the engine's thread; no base model load needed),
    or another folder's."""
    built = services()
    if kb_dir is None:
        return built.support.kb
    kb = KnowledgeBase(kb_dir, built.engine)
    kb.warm_up()
    return kb


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


@app.command()
def ingest(
    path: Annotated[Path, typer.Argument(help="A file, or a folder searched recursively.")],
    kb_dir: KbDirOption = None,
    url_prefix: Annotated[
        str, typer.Option(help="Documents without a url get <prefix><doc_id> ('' for none).")
    ] = "/help/",
) -> None:
    """Parse .md/.html/.txt/.pdf articles and .csv/.jsonl FAQ files and upsert them (one index rebuild).
    Unchanged documents are left alone. Exit code 1 if any file failed; the good ones are still stored."""
    try:
        files = files_under(path)
    except DomainLLMError as exc:
        fail(exc)
    if not files:
        fail(InvalidDocumentError(f"no supported files under {path} ({', '.join(sorted(SUPPORTED_SUFFIXES))})"))

    def shown(file: Path) -> str:
        return str(file.relative_to(path)) if path.is_dir() else str(file)

    per_file: dict[Path, list[Document]] = {}
    owner: dict[str, Path] = {}
    failed = 0
    for file in files:
        try:
            if file.stat().st_size > MAX_FILE_BYTES:
                raise InvalidDocumentError(f"{file.name}: larger than {MAX_FILE_BYTES} bytes")
            parsed = parse_document_report(file.name, file.read_bytes())
            clash = next((d.doc_id for d in parsed.documents if d.doc_id in owner), None)
            if clash is not None:
                raise InvalidDocumentError(f"doc_id {clash!r} is already taken by {shown(owner[clash])}; rename one")
        except (DomainLLMError, OSError) as exc:
            failed += 1
            err_console.print(f"[red]failed[/] {shown(file)}: {exc}", highlight=False)
            continue
        for e in parsed.errors:
            err_console.print(f"[yellow]skipped[/] {shown(file)} {e.where}: {e.reason}", highlight=False)
        for doc in parsed.documents:
            if doc.url is None and url_prefix:
                doc.url = f"{url_prefix}{doc.doc_id}"
            owner[doc.doc_id] = file
        per_file[file] = parsed.documents
    if per_file:
        try:
            kb = _kb(kb_dir)
            with console.status(f"indexing {sum(len(d) for d in per_file.values())} documents"):
                results = {r.doc_id: r for r in kb.upsert_many(d for docs in per_file.values() for d in docs)}
        except DomainLLMError as exc:
            fail(exc)
        for file, docs in per_file.items():
            counts = {"added": 0, "updated": 0, "unchanged": 0}
            for doc in docs:
                counts[results[doc.doc_id].status] += 1
            console.print(f"{shown(file)}: " + ", ".join(f"{k} {v}" for k, v in counts.items()), highlight=False)
        console.print(f"knowledge base {kb.root}: {len(kb.documents())} documents, {len(kb)} chunks")
    if failed:
        err_console.print(f"[red]{failed} of {len(files)} files failed[/]")
        raise typer.Exit(code=1)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What a customer would ask.")],
    k: Annotated[int, typer.Option(help="How many passages.")] = 5,
    mode: Annotated[str, typer.Option(help=f"One of {', '.join(SEARCH_MODES)}.")] = "hybrid",
    kb_dir: KbDirOption = None,
) -> None:
    """Print the best passages for a query with their scores."""
    try:
        kb = _kb(kb_dir)
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
def list_documents(kb_dir: KbDirOption = None) -> None:
    """The documents in the knowledge base."""
    kb = _kb(kb_dir)
    table = Table(title=f"{kb.root}: {len(kb)} chunks")
    for column in ("doc_id", "kind", "chunks", "title", "url"):
        table.add_column(column)
    for info in sorted(kb.documents(), key=lambda i: i.doc_id):
        table.add_row(info.doc_id, info.kind, str(info.chunks), info.title, info.url or "")
    console.print(table)


@app.command()
def delete(doc_id: Annotated[str, typer.Argument(help="The document to remove.")], kb_dir: KbDirOption = None) -> None:
    """Remove a document and its chunks."""
    if not _kb(kb_dir).delete(doc_id):
        fail(NotFoundError(f"no document {doc_id!r} in the knowledge base"))
    console.print(f"deleted {doc_id}")
