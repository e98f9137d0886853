"""Knowledge-base documents, parsed from the files a company already has.

    parse_document(name, data) -> list[Document]
      .md/.markdown   title from front matter or the first ``# `` heading; one section per heading
      .html/.htm      scripts, styles and comments dropped by a real parser; headings start sections
      .txt            one section; a short first line is the title
      .pdf            pypdf text, one section per page
      .csv/.jsonl     FAQ pairs (question, answer[, doc_id, url, title]) -> one kind="faq" Document each

A bad FAQ row never stops the good ones: ``parse_document_report`` returns the documents with a
``RowError`` per bad row. A file with nothing usable raises ``InvalidDocumentError`` (a 400/422).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from pathlib import PurePath
from typing import Any, Literal

import yaml

from core.errors import InvalidRequestError

log = logging.getLogger(__name__)

DocKind = Literal["article", "faq"]
DOC_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}$")
ARTICLE_SUFFIXES = {".md", ".markdown", ".html", ".htm", ".txt", ".text", ".pdf"}
FAQ_SUFFIXES = {".csv", ".jsonl", ".ndjson"}
SUPPORTED_SUFFIXES = ARTICLE_SUFFIXES | FAQ_SUFFIXES


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
        """Changes exactly when anything a search could see changes."""
        blob = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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


# --- markdown -----------------------------------------------------------------------------------

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _parse_markdown(name: str, text: str, doc_id: str, url: str | None, title: str | None) -> Document:
    meta, body = _front_matter(name, text)
    url = url or (str(meta["url"]) if meta.get("url") else None)
    sections: list[Section] = []
    heading: str | None = None
    lines: list[str] = []
    first_h1: str | None = None
    in_fence = False
    for line in body.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match:
            sections.append(Section(heading, _markdown_to_text("\n".join(lines))))
            heading, lines = _markdown_to_text(match.group(2)), []
            if match.group(1) == "#" and first_h1 is None:
                first_h1 = heading
        else:
            lines.append(line)
    sections.append(Section(heading, _markdown_to_text("\n".join(lines))))
    # a heading with no text under it still says what the text after it is about
    title = title or (str(meta["title"]) if meta.get("title") else None) or first_h1 or _title_from_name(name)
    return _article(name, doc_id, title, sections, url)


def _front_matter(name: str, text: str) -> tuple[dict[str, Any], str]:
    if not text.startswith("---"):
        return {}, text
    end = re.search(r"^---\s*$", text[3:], flags=re.MULTILINE)
    if end is None:
        return {}, text
    try:
        meta = yaml.safe_load(text[3 : 3 + end.start()]) or {}
    except yaml.YAMLError as exc:
        raise InvalidDocumentError(f"{name}: bad front matter: {exc}", name=name) from None
    if not isinstance(meta, dict):
        return {}, text
    return meta, text[3 + end.end() :]


def _markdown_to_text(md: str) -> str:
    """Drop the markup a reader does not see: images, link targets, emphasis, HTML comments."""
    md = re.sub(r"<!--.*?-->", "", md, flags=re.DOTALL)
    md = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", md)
    md = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", md)
    md = re.sub(r"(\*\*|__|\*|`)", "", md)
    md = re.sub(r"^\s*(```|~~~).*$", "", md, flags=re.MULTILINE)
    return md


# --- HTML ---------------------------------------------------------------------------------------

_SKIP_TAGS = {"script", "style", "noscript", "template", "svg", "iframe", "object", "head"}
_BLOCK_TAGS = {
    "p",
    "div",
    "br",
    "li",
    "ul",
    "ol",
    "tr",
    "td",
    "th",
    "table",
    "section",
    "article",
    "pre",
    "blockquote",
    "dd",
    "dt",
    "hr",
    "main",
    "header",
    "footer",
    "nav",
    "form",
    "figure",
    "figcaption",
}
_HEADING_TAGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_VOID_TAGS = {"br", "hr", "img", "input", "meta", "link", "source", "area", "base", "col", "embed", "wbr"}


class _HtmlText(HTMLParser):
    """Visible text split into sections at headings; comments are dropped (no handle_comment)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.skip_depth = 0
        self.in_title = False
        self.page_title = ""
        self.first_h1: str | None = None
        self.heading_tag: str | None = None
        self.heading_buf: list[str] = []
        self.sections: list[Section] = []
        self.current: str | None = None
        self.buf: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        if tag == "body":  # an unclosed <head> must not hide the page
            self.skip_depth = 0
        if tag in _SKIP_TAGS:
            if tag not in _VOID_TAGS:
                self.skip_depth += 1
            return
        if self.skip_depth:
            return
        if tag in _HEADING_TAGS:
            self._close_section()
            self.heading_tag, self.heading_buf = tag, []
        elif tag in _BLOCK_TAGS:
            self.buf.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK_TAGS and not self.skip_depth:
            self.buf.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        if tag in _SKIP_TAGS:
            self.skip_depth = max(0, self.skip_depth - 1)
            return
        if self.skip_depth:
            return
        if tag == self.heading_tag:
            heading = " ".join("".join(self.heading_buf).split())
            if tag == "h1" and self.first_h1 is None and heading:
                self.first_h1 = heading
            self.current, self.heading_tag = heading or None, None
        elif tag in _BLOCK_TAGS:
            self.buf.append("\n")

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.page_title += data
            return
        if self.skip_depth:
            return
        (self.heading_buf if self.heading_tag else self.buf).append(data)

    def _close_section(self) -> None:
        self.sections.append(Section(self.current, "".join(self.buf)))
        self.buf = []

    def result(self) -> list[Section]:
        self._close_section()
        return self.sections


def _parse_html(name: str, text: str, doc_id: str, url: str | None, title: str | None) -> Document:
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    sections = parser.result()
    page_title = " ".join(parser.page_title.split())
    return _article(name, doc_id, title or page_title or parser.first_h1 or _title_from_name(name), sections, url)


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
