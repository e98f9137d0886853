"""Knowledge-base documents, parsed from the files a company already has.

    parse_document(name, data) -> list[Document]
      .md/.markdown   markdown-it-py (``apps.support.markdown_text``): title from front matter or the
                      first ``# `` heading; one section per heading; lists and tables kept as lines
      .html/.htm      scripts, styles and comments dropped by a real parser (``apps.support.html_text``);
                      headings start sections
      .txt            one section; a short first line is the title
      .pdf            pypdf text, one section per page
      .csv/.jsonl     FAQ pairs (question, answer[, doc_id, url, title]) -> one kind="faq" Document each

    read_help_centre(folder) -> list[Document]     a folder laid out as data/samples/support

A bad FAQ row never stops the good ones: ``parse_document_report`` returns the documents with a
``RowError`` per bad row. A file with nothing usable raises ``InvalidDocumentError`` (a 400/422).
Each ``Document`` may carry its ``source`` (a folder, a URL ingest, the API), which a folder sync
uses to delete only what came from that folder.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePath
from typing import Any, Literal

from apps.support.html_text import html_sections
from apps.support.markdown_text import FrontMatterError, markdown_sections
from core.errors import InvalidRequestError

log = logging.getLogger(__name__)

DocKind = Literal["article", "faq"]
DOC_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}$")
ARTICLE_SUFFIXES = {".md", ".markdown", ".html", ".htm", ".txt", ".text", ".pdf"}
FAQ_SUFFIXES = {".csv", ".jsonl", ".ndjson"}
SUPPORTED_SUFFIXES = ARTICLE_SUFFIXES | FAQ_SUFFIXES
SOURCE_FIELDS = ("source", "source_path")


class InvalidDocumentError(InvalidRequestError):
    """A file or document the knowledge base cannot take: no text, not a PDF, bad encoding..."""

    error_type = "invalid_document"


@dataclass(frozen=True)
class Section:
    heading: str | None  # None: text before the first heading
    text: str


@dataclass
class Document:
    doc_id: str
    title: str
    text: str
    url: str | None = None
    sections: list[Section] = field(default_factory=list)  # empty: the whole text is one section
    kind: DocKind = "article"
    question: str | None = None  # kind="faq" only
    answer: str | None = None
    # Where it came from, so a sync replaces exactly its own documents (not part of the content):
    # source "folder:<absolute folder>", "url", "sitemap:<url>", "api"; source_path the file
    # relative to the folder, or the page's URL. None: ingested before sources were tracked.
    source: str | None = None
    source_path: str | None = None

    def __post_init__(self) -> None:
        if not DOC_ID_PATTERN.match(self.doc_id or ""):
            raise InvalidDocumentError(
                f"bad doc_id {self.doc_id!r}: 1-128 letters, digits or _.:@/- starting with a letter or digit",
                doc_id=self.doc_id,
            )
        if self.kind not in ("article", "faq"):
            raise InvalidDocumentError(f"kind must be 'article' or 'faq', not {self.kind!r}", doc_id=self.doc_id)
        if self.kind == "faq" and not ((self.question or "").strip() and (self.answer or "").strip()):
            raise InvalidDocumentError(f"FAQ {self.doc_id!r} needs a question and an answer", doc_id=self.doc_id)
        if not self.text.strip():
            raise InvalidDocumentError(f"document {self.doc_id!r} has no text", doc_id=self.doc_id)
        self.title = self.title.strip() or self.doc_id
        self.sections = [Section(s.heading, s.text) if isinstance(s, Section) else Section(**s) for s in self.sections]

    def content_hash(self) -> str:
        """Changes exactly when anything a search could see changes (not when only its source does)."""
        content = {k: v for k, v in self.to_dict().items() if k not in SOURCE_FIELDS}
        blob = json.dumps(content, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_source(self, source: str | None, source_path: str | None = None) -> Document:
        return replace(self, source=source, source_path=source_path)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Document:
        data = dict(data)
        data["sections"] = [Section(**s) for s in data.get("sections") or []]
        return cls(**data)


@dataclass(frozen=True)
class RowError:
    where: str  # "row 3" / "line 7"
    reason: str


@dataclass
class ParsedFile:
    documents: list[Document]
    errors: list[RowError] = field(default_factory=list)


def parse_document(
    name: str, data: bytes, *, doc_id: str | None = None, url: str | None = None, title: str | None = None
) -> list[Document]:
    """The documents in one file (FAQ files: one per good row; bad rows are logged and skipped)."""
    parsed = parse_document_report(name, data, doc_id=doc_id, url=url, title=title)
    for e in parsed.errors:
        log.warning("%s: skipped %s: %s", name, e.where, e.reason)
    return parsed.documents


def parse_document_report(
    name: str, data: bytes, *, doc_id: str | None = None, url: str | None = None, title: str | None = None
) -> ParsedFile:
    """Like ``parse_document``, with the FAQ rows it skipped and why."""
    suffix = PurePath(name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InvalidDocumentError(
            f"{name}: unsupported file type {suffix or '(none)'}; use one of {', '.join(sorted(SUPPORTED_SUFFIXES))}",
            name=name,
        )
    if suffix == ".pdf":
        return ParsedFile([_parse_pdf(name, data, doc_id or slug_of(name), url, title)])
    text = _decode(name, data)
    if suffix in FAQ_SUFFIXES:
        return _parse_faq(name, text, "csv" if suffix == ".csv" else "jsonl", prefix=doc_id, url=url)
    doc_id = doc_id or slug_of(name)
    if suffix in {".md", ".markdown"}:
        return ParsedFile([_parse_markdown(name, text, doc_id, url, title)])
    if suffix in {".html", ".htm"}:
        return ParsedFile([_parse_html(name, text, doc_id, url, title)])
    return ParsedFile([_parse_text(name, text, doc_id, url, title)])


def read_help_centre(folder: Path) -> list[Document]:
    """The documents of a help centre laid out as the sample one (``data/samples/support``): every
    file under ``articles/`` (served at ``/help/<doc_id>``, as ``make run`` does) and ``faq.csv``."""
    docs = []
    for path in sorted((folder / "articles").glob("*")):
        docs.extend(parse_document_report(path.name, path.read_bytes(), url=f"/help/{slug_of(path.name)}").documents)
    docs.extend(parse_document_report("faq.csv", (folder / "faq.csv").read_bytes()).documents)
    return docs


def slug_of(name: str) -> str:
    """A stable doc_id from a file name: ``Returns & Refunds.md`` -> ``returns-refunds``."""
    stem = PurePath(name).stem.lower()
    slug = re.sub(r"[^a-z0-9]+", "-", stem).strip("-")[:100]
    return slug or "doc-" + hashlib.sha1(name.encode("utf-8")).hexdigest()[:12]


def faq_id(question: str) -> str:
    normal = " ".join(question.lower().split())
    return "faq-" + hashlib.sha1(normal.encode("utf-8")).hexdigest()[:12]


def _title_from_name(name: str) -> str:
    stem = re.sub(r"[-_]+", " ", PurePath(name).stem).strip()
    return stem[:1].upper() + stem[1:] if stem else name


def _decode(name: str, data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise InvalidDocumentError(f"{name}: looks like a binary file, not text", name=name)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidDocumentError(
            f"{name}: not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8", name=name
        ) from None


def _tidy(text: str) -> str:
    """Collapse runs of spaces, keep paragraph breaks."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _article(
    name: str, doc_id: str, title: str, sections: list[Section], url: str | None, kind: DocKind = "article"
) -> Document:
    sections = [Section(s.heading, _tidy(s.text)) for s in sections]
    sections = [s for s in sections if s.text]
    text = "\n\n".join(s.text for s in sections)
    if not text:
        raise InvalidDocumentError(f"{name}: no text in the document", name=name)
    return Document(doc_id=doc_id, title=title, text=text, url=url, sections=sections, kind=kind)


# --- markdown and HTML -------------------------------------------------------------------------


def _parse_markdown(name: str, text: str, doc_id: str, url: str | None, title: str | None) -> Document:
    try:
        parsed = markdown_sections(text)
    except FrontMatterError as exc:
        raise InvalidDocumentError(f"{name}: {exc}", name=name) from None
    meta = parsed.meta
    url = url or (str(meta["url"]) if meta.get("url") else None)
    sections = [Section(heading, body) for heading, body in parsed.sections]
    title = title or (str(meta["title"]) if meta.get("title") else None) or parsed.first_h1 or _title_from_name(name)
    return _article(name, doc_id, title, sections, url)


def _parse_html(name: str, text: str, doc_id: str, url: str | None, title: str | None) -> Document:
    parsed = html_sections(text)
    sections = [Section(heading, body) for heading, body in parsed.sections]
    title = title or parsed.page_title or parsed.first_h1 or _title_from_name(name)
    return _article(name, doc_id, title, sections, url)


# --- plain text and PDF -------------------------------------------------------------------------


def _parse_text(name: str, text: str, doc_id: str, url: str | None, title: str | None) -> Document:
    body = text.strip()
    if not title:
        first, _, rest = body.partition("\n")
        if rest.strip() and 0 < len(first.strip()) <= 100:
            title, body = first.strip(), rest
    return _article(name, doc_id, title or _title_from_name(name), [Section(None, body)], url)


def _parse_pdf(name: str, data: bytes, doc_id: str, url: str | None, title: str | None) -> Document:
    if b"%PDF-" not in data[:1024]:
        raise InvalidDocumentError(f"{name}: not a PDF (no %PDF header)", name=name)
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise InvalidDocumentError(f"{name}: the PDF is password-protected", name=name)
        pages = [page.extract_text() or "" for page in reader.pages]
        meta_title = (reader.metadata.title if reader.metadata else None) or ""
    except InvalidDocumentError:
        raise
    except Exception as exc:  # pypdf raises many types on broken files (zlib, index, attribute errors)
        raise InvalidDocumentError(f"{name}: cannot read the PDF: {type(exc).__name__}: {exc}", name=name) from None
    sections = [Section(f"page {i + 1}" if len(pages) > 1 else None, t) for i, t in enumerate(pages)]
    if not any(t.strip() for t in pages):
        raise InvalidDocumentError(f"{name}: the PDF has no extractable text (a scan?)", name=name)
    return _article(name, doc_id, title or str(meta_title).strip() or _title_from_name(name), sections, url)


# --- FAQ files ----------------------------------------------------------------------------------

_FAQ_FIELDS = ("question", "answer", "doc_id", "url", "title")


def _parse_faq(name: str, text: str, fmt: str, *, prefix: str | None, url: str | None) -> ParsedFile:
    rows: list[tuple[str, dict[str, Any] | None, str]] = []  # (where, row, error)
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        columns = {(c or "").strip().lower() for c in reader.fieldnames or []}
        if not {"question", "answer"} <= columns:
            raise InvalidDocumentError(
                f"{name}: an FAQ CSV needs 'question' and 'answer' columns (found: {', '.join(sorted(columns))})",
                name=name,
            )
        for i, raw in enumerate(reader, start=2):  # row 1 is the header
            cleaned = {(k or "").strip().lower(): v for k, v in raw.items() if k is not None}
            rows.append((f"row {i}", cleaned, ""))
    else:
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.append((f"line {i}", None, f"bad JSON: {exc.msg}"))
                continue
            if not isinstance(obj, dict):
                rows.append((f"line {i}", None, "not a JSON object"))
                continue
            rows.append((f"line {i}", {str(k).lower(): v for k, v in obj.items()}, ""))
    docs: dict[str, Document] = {}
    errors: list[RowError] = []
    for where, row, problem in rows:
        if row is None:
            errors.append(RowError(where, problem))
            continue
        try:
            doc = _faq_document(row, prefix=prefix, url=url)
        except InvalidDocumentError as exc:
            errors.append(RowError(where, exc.message))
            continue
        if doc.doc_id in docs:
            errors.append(RowError(where, f"duplicate doc_id {doc.doc_id!r} (an earlier row has it)"))
            continue
        docs[doc.doc_id] = doc
    if not docs:
        detail = "; ".join(f"{e.where}: {e.reason}" for e in errors[:3]) or "the file is empty"
        raise InvalidDocumentError(f"{name}: no usable FAQ rows ({detail})", name=name)
    return ParsedFile(list(docs.values()), errors)


def _faq_document(row: dict[str, Any], *, prefix: str | None, url: str | None) -> Document:
    def field_of(key: str) -> str:
        value = row.get(key)
        return "" if value is None else str(value).strip()

    question, answer = field_of("question"), field_of("answer")
    if not question or not answer:
        raise InvalidDocumentError("needs a non-empty question and answer")
    doc_id = field_of("doc_id") or faq_id(question)
    if prefix and not field_of("doc_id"):
        doc_id = f"{prefix}-{doc_id}"
    return Document(
        doc_id=doc_id,
        title=field_of("title") or question,
        text=f"{question}\n\n{answer}",
        url=field_of("url") or url,
        sections=[Section(question, answer)],
        kind="faq",
        question=question,
        answer=answer,
    )
