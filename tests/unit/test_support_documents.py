"""Parsing knowledge-base files (apps/support/documents.py) and cutting them into chunks (chunking.py)."""

from __future__ import annotations

import itertools
import json

import pytest

from apps.support.chunking import ChunkingConfig, chunk_document, default_counter
from apps.support.documents import (
    Document,
    InvalidDocumentError,
    Section,
    faq_id,
    parse_document,
    parse_document_report,
    slug_of,
)
from core.errors import InvalidRequestError

pytestmark = pytest.mark.unit


def minimal_pdf(lines: list[str], title: str | None = None) -> bytes:
    """A one-page PDF written by hand (Helvetica text), with a correct xref table."""
    ops = ["BT", "/F1 12 Tf", "72 720 Td", "14 TL"]
    for line in lines:
        ops.append("(" + line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") Tj T*")
    ops.append("ET")
    stream = "\n".join(ops).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    if title:
        objects.append(b"<< /Title (" + title.encode("latin-1") + b") >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    info = f" /Info {len(objects)} 0 R" if title else ""
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{info} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


# ---- markdown, HTML, text ----------------------------------------------------------------------


def test_markdown_front_matter_title_url_and_sections() -> None:
    md = b"""---
title: Returns and refunds
url: https://shop.example/help/returns
---
# Returns

Intro text.

## How long do refunds take?

Refunds reach your card within **5 working days**. See [the policy](https://x.example/p).

```
# not a heading inside a code block
```
"""
    (doc,) = parse_document("returns.md", md)
    assert doc.doc_id == "returns"
    assert doc.title == "Returns and refunds"
    assert doc.url == "https://shop.example/help/returns"
    headings = [s.heading for s in doc.sections]
    assert headings == ["Returns", "How long do refunds take?"]
    refund = doc.sections[1].text
    assert "5 working days" in refund and "**" not in refund and "the policy" in refund and "x.example" not in refund
    assert "# not a heading inside a code block" in refund


def test_markdown_title_from_first_h1_and_explicit_arguments_win() -> None:
    md = b"Some preface.\n\n# Shipping times\n\nOrders ship in 2 days.\n"
    (doc,) = parse_document("ship.md", md)
    assert doc.title == "Shipping times"
    assert doc.sections[0] == Section(None, "Some preface.")
    (doc,) = parse_document("ship.md", md, doc_id="shipping", url="/help/shipping", title="Delivery")
    assert (doc.doc_id, doc.title, doc.url) == ("shipping", "Delivery", "/help/shipping")


def test_markdown_lists_tables_and_paragraphs_keep_their_shape() -> None:
    md = b"""# Payments

We take these cards
and wallets (a soft line break):

- Visa, *Mastercard* and [Amex](https://amex.example)
- Apple Pay
  1. on iPhone
  2. on Mac

3. third item of an ordered list
4. fourth

| Method | Fee |
|:--|--:|
| Card | none |
| Pipe \\| inside | 1% |

<div>Raw <b>HTML</b> block<script>hidden()</script></div>

Text with a comment<!-- secret --> and ![a diagram of fees](fees.png).
"""
    (doc,) = parse_document("payments.md", md)
    text = doc.sections[-1].text
    blocks = text.split("\n\n")
    assert blocks[0] == "We take these cards and wallets (a soft line break):"
    assert blocks[1] == "- Visa, Mastercard and Amex\n- Apple Pay\n1. on iPhone\n2. on Mac"
    assert blocks[2] == "3. third item of an ordered list\n4. fourth"
    assert blocks[3].split("\n")[:3] == ["| Method | Fee |", "|---|---|", "| Card | none |"]
    assert "Raw HTML block" in text and "hidden" not in text
    assert "secret" not in text and "a diagram of fees" in text and "fees.png" not in text


def test_markdown_headings_in_code_and_setext_headings() -> None:
    md = b"Title\n=====\n\nIntro.\n\n    # indented code, not a heading\n\nSub\n---\n\nBody.\n"
    (doc,) = parse_document("t.md", md)
    assert doc.title == "Title"
    assert [s.heading for s in doc.sections] == ["Title", "Sub"]
    assert "# indented code, not a heading" in doc.sections[0].text


def test_markdown_bad_front_matter_is_refused_clearly() -> None:
    with pytest.raises(InvalidDocumentError, match="front matter"):
        parse_document("bad.md", b"---\ntitle: [unclosed\n---\n# Hi\n\ntext\n")
    (doc,) = parse_document("rule.md", b"---\n\nJust a rule, then text.\n")  # a thematic break, not front matter
    assert "Just a rule" in doc.text


def test_a_document_source_is_not_part_of_its_content() -> None:
    (doc,) = parse_document("a.md", b"# A\n\ntext\n")
    moved = doc.with_source("folder:/x", "a.md")
    assert moved.content_hash() == doc.content_hash() and moved.source == "folder:/x"
    assert Document.from_dict(moved.to_dict()) == moved


def test_html_drops_scripts_styles_comments_and_splits_at_headings() -> None:
    html = b"""<!doctype html><html><head><title>Warranty | Shop</title>
<style>body { color: red }</style><script>var secret = "tracking";</script></head>
<body><nav>Home</nav><h1>Warranty</h1><p>All devices carry a <b>two-year</b> warranty.</p>
<!-- internal note: do not publish -->
<script type="text/javascript">alert("x")</script>
<h2>Claims</h2><p>Email us the receipt &amp; serial number.</p><noscript>enable js</noscript>
</body></html>"""
    (doc,) = parse_document("warranty.html", html)
    assert doc.title == "Warranty | Shop"
    for hidden in ("secret", "tracking", "color: red", "internal note", "alert", "enable js"):
        assert hidden not in doc.text
    by_heading = {s.heading: s.text for s in doc.sections}
    assert "two-year warranty" in by_heading["Warranty"]
    assert by_heading["Claims"] == "Email us the receipt & serial number."


def test_html_title_falls_back_to_h1() -> None:
    (doc,) = parse_document("page.htm", b"<body><h1>Gift cards</h1><p>They never expire.</p></body>")
    assert doc.title == "Gift cards"


def test_text_first_short_line_is_the_title() -> None:
    (doc,) = parse_document("opening-hours.txt", b"Opening hours\n\nMon-Fri 9-17.\nSat 10-14.")
    assert doc.title == "Opening hours"
    assert doc.text == "Mon-Fri 9-17.\nSat 10-14."
    (single,) = parse_document("note.txt", b"Just one line of text")
    assert single.title == "Note" and single.text == "Just one line of text"


# ---- PDF ---------------------------------------------------------------------------------------


def test_pdf_text_is_extracted() -> None:
    data = minimal_pdf(["Refund policy", "Refunds take five working days."], title="Refunds")
    (doc,) = parse_document("Refund Policy.pdf", data)
    assert doc.doc_id == "refund-policy"
    assert doc.title == "Refunds"
    assert "Refunds take five working days." in doc.text


def test_not_a_pdf_is_refused_clearly() -> None:
    with pytest.raises(InvalidDocumentError, match="not a PDF"):
        parse_document("manual.pdf", b"this is really a text file")


def test_broken_pdf_is_refused_clearly() -> None:
    with pytest.raises(InvalidDocumentError, match="cannot read the PDF"):
        parse_document("broken.pdf", b"%PDF-1.4\n garbage without objects")


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("empty.md", b""),
        ("empty.md", b"   \n\t\n"),
        ("empty.txt", b"\n\n"),
        ("empty.html", b"<html><body> <!-- only a comment --> </body></html>"),
        ("empty.html", b"<script>var x = 1;</script><style>p {}</style>"),
        ("front-matter-only.md", b"---\ntitle: Nothing here\n---\n"),
    ],
)
def test_empty_documents_are_refused(name: str, data: bytes) -> None:
    with pytest.raises(InvalidDocumentError, match="no text"):
        parse_document(name, data)


def test_bad_encoding_binary_and_unknown_types_are_refused() -> None:
    with pytest.raises(InvalidDocumentError, match="not UTF-8"):
        parse_document("latin.txt", "café crème".encode("latin-1"))
    with pytest.raises(InvalidDocumentError, match="binary"):
        parse_document("x.md", b"\x00\x01\x02abc")
    with pytest.raises(InvalidDocumentError, match="unsupported file type"):
        parse_document("slides.pptx", b"whatever")
    assert issubclass(InvalidDocumentError, InvalidRequestError)


def test_document_validation() -> None:
    with pytest.raises(InvalidDocumentError, match="bad doc_id"):
        Document(doc_id="has space", title="t", text="x")
    with pytest.raises(InvalidDocumentError, match="no text"):
        Document(doc_id="a", title="t", text="  ")
    with pytest.raises(InvalidDocumentError, match="question and an answer"):
        Document(doc_id="a", title="t", text="x", kind="faq", question="q?")
    assert Document(doc_id="a", title=" ", text="x").title == "a"


def test_doc_ids_are_stable() -> None:
    assert slug_of("Returns & Refunds.md") == "returns-refunds"
    assert slug_of("folder/Über.md").startswith("ber") or slug_of("folder/Über.md").startswith("doc-")
    assert faq_id("How do I reset my PIN?") == faq_id("  how do I reset   my pin? ")
    doc = Document(doc_id="a", title="t", text="x", sections=[Section("h", "x")])
    assert Document.from_dict(json.loads(json.dumps(doc.to_dict()))) == doc
    assert doc.content_hash() == Document.from_dict(doc.to_dict()).content_hash()
    assert doc.content_hash() != Document(doc_id="a", title="t2", text="x").content_hash()


# ---- FAQ files ---------------------------------------------------------------------------------


def test_faq_csv_reports_bad_rows_and_keeps_good_ones() -> None:
    csv_text = (
        "Question,Answer,url\n"
        "How do I reset my PIN?,Use the app: Settings > Card > PIN.,/help/pin\n"
        ",An answer without a question,\n"
        "Where is my order?,,\n"
        '"Can I pay by invoice?","Yes, for business accounts.",\n'
        "How do I reset my PIN?,Duplicate row,\n"
    )
    parsed = parse_document_report("faq.csv", csv_text.encode())
    assert [d.question for d in parsed.documents] == ["How do I reset my PIN?", "Can I pay by invoice?"]
    pin = parsed.documents[0]
    assert pin.kind == "faq" and pin.answer == "Use the app: Settings > Card > PIN." and pin.url == "/help/pin"
    assert pin.doc_id == faq_id("How do I reset my PIN?")
    assert "reset my PIN" in pin.text and "Settings > Card" in pin.text
    assert [e.where for e in parsed.errors] == ["row 3", "row 4", "row 6"]
    assert "duplicate" in parsed.errors[2].reason


def test_faq_jsonl_with_ids_and_broken_lines() -> None:
    lines = [
        json.dumps({"doc_id": "faq-hours", "question": "When are you open?", "answer": "9 to 5.", "title": "Hours"}),
        "{not json",
        json.dumps(["a", "list"]),
        "",
        json.dumps({"question": "Do you ship abroad?", "answer": "Yes, to the EU."}),
    ]
    parsed = parse_document_report("faq.jsonl", "\n".join(lines).encode(), doc_id="shop")
    assert [d.doc_id for d in parsed.documents] == ["faq-hours", f"shop-{faq_id('Do you ship abroad?')}"]
    assert parsed.documents[0].title == "Hours"
    assert [e.where for e in parsed.errors] == ["line 2", "line 3"]


def test_faq_file_without_usable_rows_or_columns_is_refused() -> None:
    with pytest.raises(InvalidDocumentError, match="'question' and 'answer' columns"):
        parse_document("faq.csv", b"q,a\nx,y\n")
    with pytest.raises(InvalidDocumentError, match="no usable FAQ rows"):
        parse_document("faq.csv", b"question,answer\n,\n")
    with pytest.raises(InvalidDocumentError, match="no usable FAQ rows"):
        parse_document("faq.jsonl", b"\n\n")


# ---- chunking ----------------------------------------------------------------------------------


class WordCounter:
    """One token per word: easy to reason about in a test (the default counts MiniLM word pieces)."""

    name = "words"

    def count(self, texts: list[str]) -> list[int]:
        return [len(t.split()) for t in texts]


def sentences(n: int, words: int = 10, start: int = 0) -> list[str]:
    return [" ".join([f"S{i}"] + [f"w{i}x{j}" for j in range(words - 1)]) + "." for i in range(start, start + n)]


def test_passages_pack_whole_sentences_and_overlap() -> None:
    text = " ".join(sentences(12))  # one 120-word line: split at its sentences
    doc = Document(doc_id="d", title="T", text=text)
    chunks = chunk_document(doc, ChunkingConfig(chunk_tokens=42, overlap_tokens=12), WordCounter())
    # budget 42 - 2 (title + line break) = 40 words: 4 sentences; overlap: the last one (10 <= 12)
    firsts = [c.text.split()[0] for c in chunks]
    assert firsts == ["S0", "S3", "S6", "S9"]
    for c in chunks:
        assert len(c.index_text.split()) <= 42
        assert c.text.endswith(".")  # never a cut sentence
    for a, b in itertools.pairwise(chunks):
        assert a.text.split(". ")[-1].rstrip(".") == b.text.split(". ")[0]  # the overlap: one whole sentence
    assert chunks[-1].text.endswith("S11" + "".join(f" w11x{j}" for j in range(9)) + ".")
    assert {w for c in chunks for w in c.text.split()} == set(text.split())  # nothing lost


def test_a_long_sentence_falls_back_to_words_and_ids_are_stable() -> None:
    doc = Document(doc_id="d", title="T", text=" ".join(f"w{i}" for i in range(100)))
    config = ChunkingConfig(chunk_tokens=32, overlap_tokens=5)
    chunks = chunk_document(doc, config, WordCounter())
    assert all(len(c.index_text.split()) <= 32 for c in chunks)
    assert [c.chunk_id for c in chunks] == [f"d#{i}" for i in range(len(chunks))]
    assert chunks[0].text.split()[-5:] == chunks[1].text.split()[:5]
    assert chunk_document(doc, config, WordCounter()) == chunks  # deterministic


def test_table_rows_keep_their_header_in_every_chunk() -> None:
    rows = "\n".join(f"| Region {i} | {i} working days |" for i in range(30))
    doc = Document(
        doc_id="ship", title="Shipping", text="x", sections=[Section("Times", f"| Region | Time |\n|---|---|\n{rows}")]
    )
    chunks = chunk_document(doc, ChunkingConfig(chunk_tokens=60, overlap_tokens=0), WordCounter())
    assert len(chunks) > 2
    for c in chunks:
        lines = c.text.split("\n")
        assert lines[:2] == ["| Region | Time |", "|---|---|"]
        assert all(line.startswith("| Region ") for line in lines[2:])
    body = [line for c in chunks for line in c.text.split("\n")[2:]]
    assert body == rows.split("\n")  # each row once, in order


def test_chunks_fit_minilm_and_carry_doc_fields() -> None:
    doc = Document(
        doc_id="returns",
        title="Returns",
        text="...",
        url="/help/returns",
        sections=[Section("Returns", "Intro."), Section("Refund times", " ".join(sentences(80)))],
    )
    chunks = chunk_document(doc, ChunkingConfig(chunk_tokens=128, overlap_tokens=20))
    counter = default_counter()
    assert max(counter.count([c.index_text for c in chunks])) <= 128  # MiniLM word pieces, title included
    assert [c.chunk_id for c in chunks] == [f"returns#{i}" for i in range(len(chunks))]
    assert chunks[0].index_text == "Returns\nIntro."  # a section equal to the title is not repeated
    assert chunks[1].index_text.startswith("Returns — Refund times\n")
    assert all(c.url == "/help/returns" and c.doc_id == "returns" for c in chunks)


def test_minilm_counts_word_pieces_not_words() -> None:
    (n,) = default_counter().count(["Unbelievably, refunds take 5-7 working days."])
    assert n > len(["Unbelievably,", "refunds", "take", "5-7", "working", "days."])


def test_document_without_sections_is_one_section() -> None:
    (chunk,) = chunk_document(Document(doc_id="a", title="Hours", text="Open 9 to 5."))
    assert chunk.section is None and chunk.index_text == "Hours\nOpen 9 to 5."


def test_chunking_config_validation() -> None:
    with pytest.raises(ValueError):
        ChunkingConfig(chunk_tokens=5)
    with pytest.raises(ValueError):
        ChunkingConfig(chunk_tokens=100, overlap_tokens=60)
