"""Documents cut into the passages that retrieval ranks and answers cite.

A document is cut at its sections first, then each section into windows of about ``chunk_words``
words that overlap by ``overlap`` words, so a sentence on a boundary is whole in one of them. A
tail shorter than a quarter window joins the window before it rather than standing alone.

What gets embedded and indexed is ``Chunk.index_text``: the document title and section heading,
then the passage. A short passage ("Allow 5 working days.") still matches a query about its topic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from apps.support.documents import Document, Section

_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class ChunkingConfig:
    chunk_words: int = 200
    overlap: int = 40

    def __post_init__(self) -> None:
        if self.chunk_words < 10:
            raise ValueError(f"chunk_words must be at least 10, got {self.chunk_words}")
        if not 0 <= self.overlap < self.chunk_words // 2:
            raise ValueError(f"overlap must be in [0, chunk_words/2), got {self.overlap}")


@dataclass(frozen=True)
class Chunk:
    chunk_id: str  # "<doc_id>#<index>"
    doc_id: str
    index: int  # position in its document, from 0
    title: str
    url: str | None
    section: str | None
    text: str  # the passage as written (what an answer quotes)
    kind: str = "article"

    @property
    def index_text(self) -> str:
        """What the embedder and BM25 see: title, section, passage."""
        head = self.title
        if self.section and self.section.strip().lower() != self.title.strip().lower():
            head = f"{self.title} — {self.section}"
        return f"{head}\n{self.text}"

    def to_dict(self) -> dict[str, object]:
        return {
            "chunk_id": self.chunk_id,
            "doc_id": self.doc_id,
            "index": self.index,
            "title": self.title,
            "url": self.url,
            "section": self.section,
            "text": self.text,
            "kind": self.kind,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Chunk:
        return cls(**data)  # type: ignore[arg-type]


def windows(text: str, chunk_words: int, overlap: int) -> list[str]:
    """``text`` in overlapping word windows; each window is a slice of the original (line breaks kept)."""
    spans = [m.span() for m in _WORD.finditer(text)]
    if not spans:
        return []
    step = chunk_words - overlap
    out: list[str] = []
    start = 0
    while True:
        end = min(start + chunk_words, len(spans))
        if len(spans) - end < chunk_words // 4:  # a short tail joins this window
            end = len(spans)
        out.append(text[spans[start][0] : spans[end - 1][1]])
        if end == len(spans):
            return out
        start += step


def chunk_document(doc: Document, config: ChunkingConfig | None = None) -> list[Chunk]:
    config = config or ChunkingConfig()
    sections = doc.sections or [Section(None, doc.text)]
    chunks: list[Chunk] = []
    for section in sections:
        for passage in windows(section.text, config.chunk_words, config.overlap):
            i = len(chunks)
            chunks.append(
                Chunk(
                    chunk_id=f"{doc.doc_id}#{i}",
                    doc_id=doc.doc_id,
                    index=i,
                    title=doc.title,
                    url=doc.url,
                    section=section.heading,
                    text=passage,
                    kind=doc.kind,
                )
            )
    return chunks
