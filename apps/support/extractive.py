"""Extract, then compose: answers built from the knowledge base's own sentences.

A 135M model that writes free text invents facts (issue 14: 52% of unseen in-KB questions answered
wrong, with the right article cited). Here nothing is generated; the models only *choose*:

    question ─ parts (the caller's part splitter) ─ hybrid retrieval per part and for the whole
             ─ the retrieved chunks' sections split into sentences (a list item keeps its lead-in,
               a table row is read with its header, an FAQ answer loses its leading "Yes,"),
               instruction-like text dropped
             ─ features per (part, sentence), ``FEATURES``: MiniLM cosines (sentence, sentence in
               context, heading, sentence with its neighbours), IDF-weighted keyword recall with
               typo tolerance, answer types ("how long" wants a duration), retrieval rank and
               cosine, and optionally the model's log-likelihood of the question after the
               sentence (its gain over no sentence) for the few likeliest candidates
             ─ ``Selector``: a logistic model over a subset of them, fitted on the dev questions and
               stored as JSON with its thresholds: P(this sentence answers this part)
             ─ per part: the top sentence, plus up to ``max_sentences - 1`` more whose probability
               reaches ``second_threshold`` (not one already said, not a paraphrase of the top)
             ─ confidence: P(some selected sentence answers), the lowest over the parts; below the
               selector's threshold, hand off
             ─ the reply: the selected sentences verbatim, [n] per document; ``fact_check`` must
               find no number, price, date, URL, e-mail or name that is not in them.

``fact_check`` is also the gate for any later step that smooths the joins with generation: such
text must pass it against the selected sentences.

Fitted and measured by ``bench/probes/support_extractive.py``; ``answer.py`` calls
``ExtractiveAnswerer.answer(question, parts)`` where it used to generate.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import re
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.config import PROJECT_ROOT

log = logging.getLogger(__name__)

SELECTOR_VERSION = 1
# Fitted on the sample help centre's dev questions by bench/probes/support_extractive.py
# --write-selector; a setting (DOMAINLLM_SUPPORT_SELECTOR_PATH) should point elsewhere for a tenant's own.
DEFAULT_SELECTOR = PROJECT_ROOT / "data" / "samples" / "support" / "selector.json"

# What the selector may use, in this order. A selector JSON names the subset it was fitted on.
FEATURES: tuple[str, ...] = (
    "cos",  # MiniLM cosine of the part and the sentence
    "cos_ctx",  # ... of the part and "title — section: sentence"
    "cos_full",  # ... of the whole question and the sentence in context (= cos_ctx for one part)
    "cos_gap",  # cos_ctx minus the best cos_ctx among this part's candidates (0 for the best)
    "cos_head",  # ... of the part and the sentence's "title — section" alone
    "cos_win",  # ... of the part and the sentence with its neighbours in the section
    "lex",  # IDF-weighted share of the part's keywords found in the sentence (typo-tolerant)
    "lex_ctx",  # ... in the sentence with its title and section
    "lex_full",  # ... of the whole question's keywords, in context
    "lm",  # mean log-prob of the part's tokens after the sentence
    "lm_pmi",  # lm minus the mean log-prob of the part with no sentence before it
    "lm_full_pmi",  # the same gain for the whole question
    "lm_gap",  # lm_pmi minus the best lm_pmi among this part's candidates
    "passage_cos",  # retrieval cosine of the best passage holding the sentence
    "inv_rank",  # 1 / retrieval rank of that passage (among the part's and the question's hits)
    "is_faq",  # the sentence is a curated FAQ answer
    "log_words",  # log of the sentence's word count
    "type_match",  # the part asks for a kind of answer (a duration, a price...) that the sentence holds
    "type_miss",  # the part asks for a kind of answer that the sentence lacks
)
TEXT_FEATURES = ("lex", "lex_ctx", "lex_full", "is_faq", "log_words", "type_match", "type_miss")  # no model needed
EMBED_FEATURES = ("cos", "cos_ctx", "cos_full", "cos_gap", "cos_head", "cos_win", "passage_cos", "inv_rank")

# Sentences that address the model rather than the reader: never candidates, so never quoted. Checked
# on ``for_checks(text)`` (NFKC, zero-width characters removed, spacing collapsed), in the languages a
# hostile KB page is likely to use.
_INJECTION = re.compile(
    r"(ignore|disregard|forget|override|bypass)\b.{0,40}\b(instructions?|rules|prompt|guidelines|above|previous)"
    r"|\b(system|admin|developer|assistant) ?(note|prompt|message|instruction|override)s?\b"
    r"|\byou are now\b|\bnew instructions?\b|\bact as\b|\bpretend to be\b|\bfrom now on,? you\b"
    r"|\b(tell|inform) (the )?(customer|user)s? (that|to)\b|\b(bot|assistant|ai|model)s? (must|should) (say|answer|tell|reply)\b"
    r"|\bignor(ez|e|er) (toutes |tous )?(les |vos )?(instructions|consignes|règles)\b|\boubliez? (les |vos )?(instructions|consignes)\b"
    r"|\bignorier(e|en)? (alle )?(vorherigen |bisherigen )?(anweisungen|regeln)\b|\bvergiss (alle )?(anweisungen|regeln)\b"
    r"|\bignora(r)? (todas )?(las )?(instrucciones|reglas)\b|\bolvida (las )?(instrucciones|reglas)\b"
    r"|\bignora (tutte )?(le )?(istruzioni|regole)\b",
    re.IGNORECASE,
)
_ZERO_WIDTH = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")


def for_checks(text: str) -> str:
    """``text`` as the safety checks read it: NFKC-normalised (fullwidth and styled letters become
    plain), zero-width and direction characters removed, whitespace collapsed."""
    return " ".join(_ZERO_WIDTH.sub("", unicodedata.normalize("NFKC", text)).split())


def addresses_the_model(text: str) -> bool:
    """The text tries to instruct a model (in any of the checked languages or Unicode disguises)."""
    return bool(_INJECTION.search(for_checks(text)))


# ---------------------------------------------------------------------------------------------
# Sentences
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sentence:
    """One quotable sentence of the knowledge base, with where it came from."""

    text: str  # what a reply quotes (a list item with its lead-in; a table row read with its header)
    doc_id: str
    title: str
    url: str | None
    section: str | None
    kind: str = "article"  # "article" | "faq"
    position: int = 0  # order within its section: adjacent sentences differ by 1
    section_index: int = 0  # which section of the document (sections can share a heading)
    source: str = ""  # the section text it came from (what a fact check may compare against)
    lead: str = ""  # a list item's lead-in, which ``text`` starts with ("The following cannot be returned:")
    passage_rank: int = 1  # best retrieval rank of a passage holding it (1 = best)
    passage_cosine: float = 0.0

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.doc_id, self.section_index, self.position)

    @property
    def heading(self) -> str:
        if self.section and self.section.strip().lower() != self.title.strip().lower():
            return f"{self.title} — {self.section}"
        return self.title

    @property
    def context(self) -> str:
        return f"{self.heading}: {self.text}"


_LIST_ITEM = re.compile(r"^\s*(?:[-*+•]|\d{1,2}[.)])\s+(.*\S)\s*$")
_TABLE_SEP_CELL = re.compile(r"^:?-{2,}:?$")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "approx.", "incl.", "no.", "dept.", "mr.", "mrs.", "ms.", "dr.", "st.")
_SENTENCE_END = re.compile(r"(?<=[.!?])([\"'”’)]?)\s+(?=[\"“(\[]?[A-Z0-9£€$])")
_TRAILING_JOIN = re.compile(r"\s*[;,]\s*(?:or|and)?\s*$", re.IGNORECASE)


def split_prose(text: str) -> list[str]:
    """Sentences of one paragraph, split after . ! ? before a capital or a digit, not after common
    abbreviations ("e.g."); a fragment of one or two words ("Yes.") joins the next sentence."""
    text = " ".join(text.split())
    pieces: list[str] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        end = m.start() + len(m.group(1))
        piece = text[start:end].strip()
        if piece.rsplit(" ", 1)[-1].lower() in _ABBREVIATIONS:
            continue
        pieces.append(piece)
        start = m.end()
    pieces.append(text[start:].strip())
    pieces = [p for p in pieces if p]
    merged: list[str] = []
    carry = ""
    for piece in pieces:
        piece = f"{carry} {piece}" if carry else piece
        carry = ""
        if len(piece.split()) <= 2:
            carry = piece
        else:
            merged.append(piece)
    if carry:
        if merged:
            merged[-1] = f"{merged[-1]} {carry}"
        else:
            merged.append(carry)
    return merged


def _finish(text: str) -> str:
    """A list item or a row as a sentence: no trailing "; or", a capital first letter, a full stop."""
    text = _TRAILING_JOIN.sub("", text.strip())
    if not text:
        return text
    if text[0].islower():
        text = text[0].upper() + text[1:]
    if text[-1] not in ".!?":
        text += "."
    return text


def _table_cells(line: str) -> list[str] | None:
    s = line.strip()
    if not (s.startswith("|") and s.count("|") >= 2):
        return None
    return [c.strip() for c in s.strip("|").split("|")]


def split_section_items(text: str) -> list[tuple[str, str]]:
    """The quotable sentences of one section's text, in order, as (lead-in, sentence) pairs.

    * prose: split into sentences (no lead-in);
    * a list item: its sentences; the first one has as lead-in the sentence that ends with ":" in
      the paragraph before the list ("The following cannot be returned:"), which is then not a
      sentence of its own;
    * a Markdown table row: "<first cell>: <header> <cell>; <header> <cell>." (the header row and
      the separator row are not sentences themselves).
    """
    out: list[tuple[str, str]] = []
    header: list[str] | None = None
    lead: str | None = None
    for line in text.split("\n"):
        if not line.strip():
            continue
        cells = _table_cells(line)
        if cells is not None:
            if all(_TABLE_SEP_CELL.match(c) for c in cells if c):
                continue
            if header is None:
                header = cells
                continue
            label, rest = cells[0], cells[1:]
            pairs = [f"{h} {c}".strip() for h, c in zip(header[1:], rest, strict=False) if c]
            if label and pairs:
                out.append(("", _finish(f"{label}: {'; '.join(pairs)}")))
            continue
        header = None
        item = _LIST_ITEM.match(line)
        if item:
            for i, part in enumerate(split_prose(item.group(1))):
                body = _finish(part)
                if i == 0 and lead:
                    out.append((lead, body if _keeps_capital(body) else body[0].lower() + body[1:]))
                else:
                    out.append(("", body))
            continue
        parts = split_prose(line)
        lead = None
        out.extend(("", part) for part in parts)
        if parts and parts[-1].rstrip().endswith(":"):
            lead = out.pop()[1]  # the lead-in is said with its items, not on its own
    return [(lead, body) for lead, body in out if body and not addresses_the_model(f"{lead} {body}")]


def split_section(text: str) -> list[str]:
    """The quotable sentences of one section's text, each list item with its lead-in
    (see ``split_section_items``)."""
    return [f"{lead} {body}" if lead else body for lead, body in split_section_items(text)]


def _keeps_capital(text: str) -> bool:
    """Whether a list item's first word is a name ("Visa, ...", "UK: ...") rather than a plain word."""
    first = text.split(" ", 1)[0].rstrip(":,.;")
    return len(first) > 1 and (first.isupper() or any(c.isupper() for c in first[1:]) or first in _PROPER_STARTS)


_PROPER_STARTS = frozenset(
    {"Visa", "Apple", "Google", "PayPal", "Klarna", "Northwind", "Royal", "Relay", "Chat", "Email", "Phone"}
)


_ANSWER_PARTICLE = re.compile(r"^(?:yes|no|sure|of course)\b[,.!;:]?\s+(?=\S)", re.IGNORECASE)


def without_answer_particle(text: str) -> str:
    """An FAQ answer's sentence without its leading "Yes," / "No." : that word answers the FAQ's own
    question, not the customer's, so it is never quoted ("Yes, Click and Collect ..." must not
    become a yes to "can I book an appointment?")."""
    rest = _ANSWER_PARTICLE.sub("", text, count=1)
    if rest == text or len(rest.split()) < 3:
        return text
    return rest[0].upper() + rest[1:]


def sentences_of_document(doc: Any) -> list[Sentence]:
    """Every sentence of a document (``apps.support.documents.Document``-like: doc_id, title, url,
    kind, sections with heading and text, or just text). FAQ answers lose a leading yes/no."""
    sections = list(getattr(doc, "sections", None) or [])
    if not sections:
        sections = [_Section(None, doc.text)]
    # a title or heading that addresses the model is never shown to a customer (citations show titles)
    title = doc.doc_id if addresses_the_model(doc.title or "") else doc.title
    kind = getattr(doc, "kind", "article") or "article"
    out: list[Sentence] = []
    for si, section in enumerate(sections):
        for pos, (lead, body) in enumerate(split_section_items(section.text)):
            text = f"{lead} {body}" if lead else body
            out.append(
                Sentence(
                    text=without_answer_particle(text) if kind == "faq" else text,
                    lead=lead,
                    doc_id=doc.doc_id,
                    title=title,
                    url=getattr(doc, "url", None),
                    section=None if section.heading and addresses_the_model(section.heading) else section.heading,
                    kind=kind,
                    position=pos,
                    section_index=si,
                    source=section.text,
                )
            )
    return out


@dataclass(frozen=True)
class _Section:
    heading: str | None
    text: str


def _overlaps(sentence: str, passage: str) -> bool:
    """Whether a sentence (possibly rewritten from a list item or a table row) comes from the
    passage: most of its words occur there."""
    words = re.findall(r"\w+", sentence.lower())
    if not words:
        return False
    hay = set(re.findall(r"\w+", passage.lower()))
    return sum(w in hay for w in words) / len(words) >= 0.8


# ---------------------------------------------------------------------------------------------
# Keywords
# ---------------------------------------------------------------------------------------------

_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "if",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "from",
        "by",
        "with",
        "about",
        "as",
        "into",
        "than",
        "then",
        "so",
        "do",
        "does",
        "did",
        "done",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "am",
        "i",
        "me",
        "my",
        "mine",
        "you",
        "your",
        "yours",
        "u",
        "ur",
        "we",
        "us",
        "our",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "there",
        "here",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "can",
        "could",
        "would",
        "should",
        "will",
        "shall",
        "may",
        "might",
        "must",
        "have",
        "has",
        "had",
        "having",
        "not",
        "no",
        "yes",
        "any",
        "some",
        "all",
        "get",
        "got",
        "pls",
        "please",
        "hi",
        "hello",
        "thanks",
        "just",
        "still",
        "also",
        "too",
        "very",
        "really",
        "much",
        "many",
        "one",
        "thing",
        "things",
        "want",
        "need",
        "know",
        "tell",
        "let",
        "like",
        "ok",
        "okay",
    ]
)
_WORD = re.compile(r"[a-z0-9]+(?:['’][a-z]+)?")


def _stemmer() -> Callable[[str], str]:
    try:
        import Stemmer  # PyStemmer, as the KB's BM25 uses

        s = Stemmer.Stemmer("english")
        return s.stemWord
    except ImportError:  # pragma: no cover - listed dependency
        return lambda w: w


_STEM = _stemmer()


def keywords(text: str) -> list[str]:
    """Lower-cased, stemmed content words (stop words and 1-letter tokens dropped)."""
    out = []
    for w in _WORD.findall(text.lower().replace("’", "'")):
        w = w.split("'")[0]
        if len(w) < 2 or w in _STOP:
            continue
        out.append(_STEM(w))
    return out


class Idf:
    """Inverse document frequency of keywords over a set of sentences (the knowledge base's)."""

    def __init__(self, texts: Iterable[str]) -> None:
        df: dict[str, int] = {}
        n = 0
        for t in texts:
            n += 1
            for w in set(keywords(t)):
                df[w] = df.get(w, 0) + 1
        self.n = max(n, 1)
        self.df = df
        self.unseen = math.log(1 + self.n)

    def __call__(self, word: str) -> float:
        d = self.df.get(word)
        return self.unseen if d is None else math.log(1 + (self.n - d + 0.5) / (d + 0.5))


def keyword_recall(query: Sequence[str], text: Sequence[str], idf: Idf) -> float:
    """IDF-weighted share of the query's keywords found in the text; a near miss of 5+ letters
    ("pasword", "diffrent") counts 0.8."""
    if not query:
        return 0.0
    hay = set(text)
    total = got = 0.0
    for w in dict.fromkeys(query):
        weight = idf(w)
        total += weight
        if w in hay:
            got += weight
        elif len(w) >= 5 and any(
            abs(len(h) - len(w)) <= 2 and difflib.SequenceMatcher(None, w, h).ratio() >= 0.8 for h in hay if len(h) >= 4
        ):
            got += 0.8 * weight
    return got / total if total else 0.0


# ---------------------------------------------------------------------------------------------
# Answer types: what kind of thing a question asks for, and whether a sentence holds one
# ---------------------------------------------------------------------------------------------

_N = r"(?:\d+|one|two|three|four|five|six|seven|eight|nine|ten|twelve|fifteen|twenty|thirty|sixty|a few|a couple of)"
ANSWER_TYPES: dict[str, tuple[re.Pattern[str], re.Pattern[str]]] = {
    # name: (the question asks for it, the sentence holds it)
    "duration": (
        re.compile(
            r"\bhow (long|soon|quick(ly)?|fast|many (days|weeks|months|hours|minutes))\b|\bwhen (will|do|does|can|is)\b"
            r"|\b(valid|expire|last|til|until)\b",
            re.I,
        ),
        re.compile(
            rf"\b{_N}(\s*(-|to)\s*{_N})?\s+(working |business )?(day|hour|minute|week|month|year)s?\b"
            r"|\bsame day\b|\bstraight away\b|\bimmediately\b|\bnext working day\b|\bwithin\b",
            re.I,
        ),
    ),
    "money": (
        re.compile(
            r"\bhow much\b|\b(cost|costs|price|prices|fee|fees|charge|charges|spend|postage|threshold|surcharge|"
            r"amount|pay for|expensive|cheap|quid|euros?|dollars?|pounds?)\b",
            re.I,
        ),
        re.compile(r"[£€$]\s?\d|\bfree\b|\bno (extra )?(cost|charge|fee)\b|\bat no cost\b", re.I),
    ),
    "clock": (
        re.compile(r"\bwhat time\b|\b(open|opening|close|closing|hours)\b", re.I),
        re.compile(r"\b\d{1,2}:\d{2}\b|\b\d{1,2}\s?(am|pm)\b|\bclosed\b", re.I),
    ),
    "contact": (
        re.compile(
            r"\b(e-?mail|address|adress|contact|phone|call|ring|who do i|where do i (send|forward|write))\b", re.I
        ),
        re.compile(r"@|\b\d{4} ?\d{3} ?\d{4}\b|\b[\w-]+\.(example|com|org|net)\b", re.I),
    ),
    "percent": (
        re.compile(r"\b(rate|percent|percentage)\b|%|\bhow much (of|off)\b", re.I),
        re.compile(r"\d\s?%", re.I),
    ),
    "measure": (
        re.compile(r"\b(angle|temp|temperature|degrees|size|sizes|length|leg|cm|inch|inches|weight)\b", re.I),
        re.compile(r"\d\s?(°|cm\b|mm\b|in\b|kg\b)|\bone size\b|\b(XS|S|M|L|XL|XXL)\b"),
    ),
    "count": (
        re.compile(r"\bhow many\b|\bmax(imum)?\b|\bmin(imum)?\b", re.I),
        re.compile(rf"\b{_N}\b|\bup to\b", re.I),
    ),
}


def asked_types(question: str) -> list[str]:
    """The kinds of answer a question asks for ("how long" -> duration, "how much" -> money, ...)."""
    return [name for name, (ask, _) in ANSWER_TYPES.items() if ask.search(question)]


def held_types(text: str) -> set[str]:
    return {name for name, (_, has) in ANSWER_TYPES.items() if has.search(text)}


def text_features(question: str, part: str, sentences: Sequence[Sentence], idf: Idf) -> dict[str, np.ndarray]:
    """The features of ``TEXT_FEATURES`` (no model needed) for one part over the candidates."""
    kw_text = [keywords(s.text) for s in sentences]
    kw_ctx = [keywords(s.context) for s in sentences]
    kw_part, kw_full = keywords(part), keywords(question)
    asked = asked_types(part)
    held = [held_types(s.text) for s in sentences]
    return {
        "lex": np.array([keyword_recall(kw_part, kt, idf) for kt in kw_text]),
        "lex_ctx": np.array([keyword_recall(kw_part, kc, idf) for kc in kw_ctx]),
        "lex_full": np.array([keyword_recall(kw_full, kc, idf) for kc in kw_ctx]),
        "is_faq": np.array([1.0 if s.kind == "faq" else 0.0 for s in sentences]),
        "log_words": np.array([math.log(1 + len(s.text.split())) for s in sentences]),
        "type_match": np.array([float(any(t in h for t in asked)) for h in held]),
        "type_miss": np.array([float(bool(asked) and not any(t in h for t in asked)) for h in held]),
    }


# ---------------------------------------------------------------------------------------------
# The selector
# ---------------------------------------------------------------------------------------------


@dataclass
class Selector:
    """Logistic regression over (a subset of) ``FEATURES``, plus the thresholds it was tuned with."""

    features: list[str]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    threshold: float = 0.5  # confidence below this: hand off
    second_threshold: float = 0.5  # a further sentence for a part needs this probability...
    second_adjacent: bool = False  # ...and to sit next to the first (same section), when True
    max_sentences: int = 2  # sentences per part at most
    confidence: str = "union"  # "union": P(any selected sentence answers); "top": P(the top one does)
    top_k: int = 6  # passages retrieved per query
    include_faq: bool = True  # curated FAQ answers are candidate sentences too
    lm_model: str = "base"  # which model's likelihood ("base" or an adapter name)
    lm_top: int = 6  # the likelihood is computed for this many candidates per part (by cos_ctx + lex_ctx)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown:
            raise ValueError(f"selector uses unknown features {unknown}; known: {list(FEATURES)}")
        n = len(self.features)
        if not (len(self.mean) == len(self.scale) == len(self.coef) == n):
            raise ValueError("selector mean, scale and coef must each have one value per feature")

    @property
    def needs_lm(self) -> bool:
        return any(f.startswith("lm") for f in self.features)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """P(answers) for rows of ``x`` [..., len(FEATURES)] (all features, in FEATURES order)."""
        idx = [FEATURES.index(f) for f in self.features]
        z = (x[..., idx] - np.asarray(self.mean)) / np.asarray(self.scale)
        logits = z @ np.asarray(self.coef) + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -40, 40)))

    def to_json(self) -> str:
        return json.dumps({"version": SELECTOR_VERSION, **asdict(self)}, indent=2) + "\n"

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Selector:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        if raw.pop("version", None) != SELECTOR_VERSION:
            raise ValueError(f"{path}: not a version-{SELECTOR_VERSION} selector")
        return cls(**raw)


def fit_selector(
    x: np.ndarray,
    y: np.ndarray,
    features: Sequence[str],
    *,
    c: float = 1.0,
    balanced: bool = False,
    sample_weight: np.ndarray | None = None,
    domain: np.ndarray | None = None,
    **settings: Any,
) -> Selector:
    """A logistic selector fitted on candidate rows ``x`` [n, len(FEATURES)] with labels ``y`` [n]
    (1: the sentence answers its part). Thresholds and retrieval settings go in ``settings``.

    Rows may come from other knowledge bases than the served one (more question → sentence pairs):
    ``sample_weight`` [n] weighs them, and ``domain`` [n] (0: the served KB, 1: another) gives the
    other rows an intercept of their own (a column only they have), so their different share of
    answering sentences moves neither the served intercept nor, through it, the threshold. The
    features are standardised on the served rows when there are any."""
    from sklearn.linear_model import LogisticRegression

    idx = [FEATURES.index(f) for f in features]
    sub = np.asarray(x, dtype=np.float64)[:, idx]
    home = np.ones(len(sub), dtype=bool) if domain is None else np.asarray(domain) == 0
    ref = sub[home] if home.any() else sub
    mean = ref.mean(axis=0)
    scale = ref.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = (sub - mean) / scale
    other = domain is not None and not home.all()
    if other:
        z = np.column_stack([z, (~home).astype(np.float64)])
    model = LogisticRegression(C=c, max_iter=2000, class_weight="balanced" if balanced else None)
    model.fit(z, np.asarray(y, dtype=int), sample_weight=sample_weight)
    coef = model.coef_[0][: len(idx)]  # the other domain's intercept column is not served
    return Selector(
        features=list(features),
        mean=mean.tolist(),
        scale=scale.tolist(),
        coef=coef.tolist(),
        intercept=float(model.intercept_[0]),
        **settings,
    )


# ---------------------------------------------------------------------------------------------
# Composition and the fact check
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cited:
    """A citation, the same fields as ``apps.support.answer.Citation``."""

    n: int
    doc_id: str
    title: str
    url: str | None


def compose(selected: Sequence[Sentence]) -> tuple[str, list[Cited]]:
    """The reply: each selected sentence verbatim, followed by [n] for its document (numbered in
    order of first use); consecutive sentences of one document share one marker at the end."""
    numbers: dict[str, int] = {}
    first: dict[str, Sentence] = {}
    pieces: list[str] = []
    for i, s in enumerate(selected):
        n = numbers.setdefault(s.doc_id, len(numbers) + 1)
        first.setdefault(s.doc_id, s)
        text = s.text.strip()
        prev = selected[i - 1] if i > 0 else None
        if s.lead and prev is not None and prev.lead == s.lead and prev.doc_id == s.doc_id and text.startswith(s.lead):
            body = text[len(s.lead) :].strip()  # the same list as the sentence before: say its lead-in once
            text = body[0].upper() + body[1:]
        if text[-1] not in ".!?:":
            text += "."
        nxt = selected[i + 1] if i + 1 < len(selected) else None
        pieces.append(text if nxt is not None and nxt.doc_id == s.doc_id else f"{text} [{n}]")
    citations = [Cited(n, d, first[d].title, first[d].url) for d, n in sorted(numbers.items(), key=lambda kv: kv[1])]
    return " ".join(pieces), citations


_CITATION = re.compile(r"\s*\[\d+\]")
_URL = re.compile(
    r"(?:https?://|www\.)[^\s)\]]+|\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}(?:/[\w./?=&%#-]*)?", re.IGNORECASE
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_MONEY_OR_NUMBER = re.compile(
    r"(?<![\w.])(?:[£€$]\s?)?\d+(?:[.,:/]\d+)*(?:\s?(?:%|°[CF]?|p\b|k\b))?|\b\d+(?:st|nd|rd|th)\b", re.IGNORECASE
)
_NUMBER_WORDS = frozenset(
    [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "fifteen",
        "twenty",
        "thirty",
        "forty",
        "fifty",
        "hundred",
        "thousand",
        "twice",
        "half",
        "dozen",
        "first",
        "second",
        "third",
        "fourth",
        "fifth",
    ]
)
_CAPITALISED = re.compile(r"\b(?:[A-Z][\w'’&-]*|[a-z]+[A-Z][\w-]*)")
_SENTENCE_STARTERS = frozenset(
    [
        "Yes",
        "No",
        "Sorry",
        "Please",
        "You",
        "Your",
        "We",
        "Our",
        "The",
        "A",
        "An",
        "If",
        "It",
        "This",
        "That",
        "There",
        "These",
        "Those",
        "To",
        "For",
        "In",
        "On",
        "At",
        "And",
        "But",
        "Or",
        "So",
        "Then",
        "When",
        "Where",
        "What",
        "How",
        "Once",
        "After",
        "Before",
        "Sure",
        "Unfortunately",
        "Thanks",
        "Thank",
        "Hi",
        "Hello",
        "I",
    ]
)


def _norm(text: str) -> str:
    return " ".join(text.replace("–", "-").replace("—", "-").replace("’", "'").split())


def claims(text: str) -> dict[str, set[str]]:
    """The checkable tokens of a text: urls, emails, numbers (with currency, %, degrees), number
    words, and capitalised tokens that do not start a sentence (names, products, months, days)."""
    text = _norm(_CITATION.sub("", text))
    emails = set(_EMAIL.findall(text))
    no_email = _EMAIL.sub(" ", text)
    urls = {u.rstrip(".,;:") for u in _URL.findall(no_email)}
    no_url = _URL.sub(" ", no_email)
    numbers = {re.sub(r"\s", "", m).lower() for m in _MONEY_OR_NUMBER.findall(no_url)}
    words = {w.lower() for w in re.findall(r"[A-Za-z]+", no_url)}
    number_words = words & _NUMBER_WORDS
    names: set[str] = set()
    starters: set[str] = set()
    for sentence in re.split(r"(?<=[.!?:;])\s+|\s+[-–]\s+", no_url):
        lead = len(sentence) - len(sentence.lstrip("\"'“(["))
        for m in _CAPITALISED.finditer(sentence):
            token = m.group(0).rstrip("'’-")
            (starters if m.start() == lead else names).add(token)
    return {
        "url": urls,
        "email": emails,
        "number": numbers,
        "number_word": number_words,
        "name": names,
        "starter": starters,
    }


_PHONE = re.compile(r"(?<![\w.])\+?\d[\d ()\-.]{6,}\d(?!\w)(?!\.\d)")


def contacts(text: str) -> set[str]:
    """The URLs, e-mail addresses and phone numbers in ``text`` (``url:``, ``email:``, ``phone:`` + value)."""
    plain = for_checks(text)
    found = claims(plain)
    phones = {re.sub(r"\D", "", m) for m in _PHONE.findall(_EMAIL.sub(" ", plain))}
    return (
        {f"url:{u.lower()}" for u in found["url"]}
        | {f"email:{e.lower()}" for e in found["email"]}
        | {f"phone:{d}" for d in phones if 9 <= len(d) <= 15}
    )


def unlisted_contacts(text: str, allowed: Sequence[str]) -> list[str]:
    """The contacts in ``text`` that ``allowed`` (hosts such as "example.com", which admit their
    subdomains, URLs and e-mail addresses on them; e-mail addresses; phone numbers) does not list."""
    is_phone = {a: bool(re.fullmatch(r"[\d +()\-.]+", a)) for a in allowed}
    hosts = {a.lower().lstrip(".") for a in allowed if "@" not in a and not is_phone[a]}
    emails = {a.lower() for a in allowed if "@" in a}
    phones = {re.sub(r"\D", "", a) for a in allowed if is_phone[a]}

    def host_ok(host: str) -> bool:
        host = host.split(":")[0].rstrip(".")
        return any(host == h or host.endswith(f".{h}") for h in hosts)

    out = []
    for item in sorted(contacts(text)):
        kind, value = item.split(":", 1)
        if kind == "url":
            host = re.sub(r"^(?:https?://)?(?:www\.)?", "", value).split("/")[0]
            ok = host_ok(host) or host_ok(f"www.{host}")
        elif kind == "email":
            ok = value in emails or host_ok(value.rsplit("@", 1)[1])
        else:
            ok = value in phones
        if not ok:
            out.append(item)
    return out


def fact_check(reply: str, sources: Sequence[str] | Sequence[Sentence]) -> list[str]:
    """What ``reply`` states that its sources do not: ``["number:£12.95", "url:...", ...]``; empty
    when every number, price, percentage, date, URL, e-mail address and capitalised name or product
    token of the reply occurs in the sources. A capitalised word that starts a sentence passes when
    the sources hold it in any case, or when it is a common sentence opener ("Yes", "You")."""
    texts = [s.text if isinstance(s, Sentence) else str(s) for s in sources]
    texts += [s.source for s in sources if isinstance(s, Sentence) and s.source]
    src = _norm(" \n ".join(texts))
    have = claims(src)
    src_lower = src.lower()
    src_words = set(re.findall(r"[a-z]+", src_lower))
    got = claims(reply)
    problems: list[str] = []
    for kind in ("url", "email"):
        for item in sorted(got[kind]):
            if item.lower() not in src_lower:
                problems.append(f"{kind}:{item}")
    for item in sorted(got["number"]):
        if item not in have["number"]:
            problems.append(f"number:{item}")
    for item in sorted(got["number_word"]):
        if item not in src_words:
            problems.append(f"number:{item}")
    for item in sorted(got["name"]):
        if item not in src and item.lower() not in _lower_names_ok:
            problems.append(f"name:{item}")
    for item in sorted(got["starter"]):
        if item not in _SENTENCE_STARTERS and item.lower() not in src_words and item not in src:
            problems.append(f"name:{item}")
    return problems


_lower_names_ok = frozenset({"i"})


def _near_duplicate(a: set[str], b: set[str]) -> bool:
    """Two sentences' keyword sets say the same thing: most of the shorter one is in the other."""
    return bool(a and b) and len(a & b) >= 0.75 * min(len(a), len(b))


# ---------------------------------------------------------------------------------------------
# The answerer
# ---------------------------------------------------------------------------------------------

LM_PREFIX = "From the help centre:\n"
LM_JOIN = "\nCustomer question:"


@dataclass
class PartScore:
    part: str
    top: Sentence | None
    probability: float
    selected: list[Sentence]


@dataclass
class Scored:
    """Candidates of one question and their features, before selection (the probe caches these)."""

    question: str
    parts: list[str]
    sentences: list[Sentence]
    features: np.ndarray  # [n_parts, n_sentences, len(FEATURES)]


@dataclass
class ExtractiveReply:
    answer: str  # the reply ("" when handing off)
    citations: list[Cited]
    confidence: float  # the lowest part's top-sentence probability
    handoff: bool
    reason: str | None  # "low_confidence" | "no_candidates" | "fact_check" | "never_say:<rule>"
    parts: list[PartScore]
    selected: list[Sentence]
    details: dict[str, Any] = field(default_factory=dict)


class ExtractiveAnswerer:
    """Answers from the KB's sentences. ``kb`` needs ``search(query, k, mode)`` (hits with chunk_id,
    doc_id, title, url, section, text, dense_score, rank) and, for whole sentences rather than
    chunk windows, ``get(doc_id)`` and ``documents()``. ``engine`` needs ``embed`` and, when the
    selector uses the model's likelihood, ``score_continuations``."""

    def __init__(
        self,
        engine: Any,
        kb: Any,
        selector: Selector,
        *,
        banned: Callable[[str], list[str]] | None = None,
        cache_size: int = 20_000,
    ) -> None:
        self.engine = engine
        self.kb = kb
        self.selector = selector
        self.banned = banned
        self._vec_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lm_cache: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._cache_size = cache_size
        self._doc_cache: dict[str, tuple[Any, list[Sentence]]] = {}
        self._lock = threading.Lock()  # the caches are shared by the server's request threads
        self._idf: Idf | None = None
        self._idf_key: Any = None

    def warm_up(self) -> int:
        """Embed every KB sentence (as text, in context, its heading, its window) once, so a question
        costs the embedding of its parts only; skipped when the KB has more sentences than the
        cache holds. Safe to call again (cached texts are not embedded twice). The number embedded."""
        sentences = [t for d in self.kb.documents() for t in self._doc_sentences(d.doc_id) or []]
        texts = list(dict.fromkeys(x for t in sentences for x in (t.text, t.context, t.heading, self.window(t))))
        if len(texts) > self._cache_size:
            return 0
        for start in range(0, len(texts), 256):
            self._vectors(texts[start : start + 256])
        self.idf()
        return len(texts)

    # ---- candidates --------------------------------------------------------------------------

    def _doc_sentences(self, doc_id: str) -> list[Sentence] | None:
        get = getattr(self.kb, "get", None)
        if get is None:
            return None
        doc = get(doc_id)
        if doc is None:
            return None
        cached = self._doc_cache.get(doc_id)
        if cached is not None and cached[0] is doc:
            return cached[1]
        sentences = sentences_of_document(doc)
        self._doc_cache[doc_id] = (doc, sentences)
        return sentences

    def idf(self) -> Idf:
        """Keyword IDF over the KB's sentences, rebuilt when the KB's documents change."""
        docs = getattr(self.kb, "documents", None)
        infos = docs() if docs is not None else []
        key = tuple(sorted((d.doc_id, getattr(d, "content_hash", "")) for d in infos))
        if self._idf is None or key != self._idf_key:
            texts: list[str] = []
            for info in infos:
                texts.extend(s.context for s in self._doc_sentences(info.doc_id) or [])
            self._idf = Idf(texts)
            self._idf_key = key
        return self._idf

    def candidates(self, queries: Sequence[str], k: int | None = None) -> list[Sentence]:
        """The sentences of the passages retrieved for each query (hybrid search), each once, with
        the best rank and cosine among the passages that hold it; FAQ answers when the selector
        takes them."""
        k = k or self.selector.top_k
        found: dict[tuple[str, int, int], Sentence] = {}
        for query in queries:
            for hit in self.kb.search(query, k=k, mode="hybrid"):
                cosine = float(hit.dense_score or 0.0)
                for s in self._sentences_of_hit(hit):
                    if s.kind == "faq" and not self.selector.include_faq:
                        continue
                    old = found.get(s.key)
                    rank = hit.rank if old is None else min(hit.rank, old.passage_rank)
                    best = cosine if old is None else max(cosine, old.passage_cosine)
                    found[s.key] = replace(s, passage_rank=rank, passage_cosine=best)
        return sorted(found.values(), key=lambda s: (s.passage_rank, s.doc_id, s.section_index, s.position))

    def _sentences_of_hit(self, hit: Any) -> list[Sentence]:
        """The whole sentences of the document section a retrieved chunk comes from that the chunk
        holds (a chunk is a word window: this undoes its cuts); without the stored document, the
        chunk's own sentences."""
        doc_sentences = self._doc_sentences(hit.doc_id)
        if doc_sentences:
            chunk = hit.text
            mine = [
                s for s in doc_sentences if (s.section or None) == (hit.section or None) and _overlaps(s.text, chunk)
            ]
            if mine:
                return mine
        kind = getattr(hit, "kind", None) or ("faq" if str(hit.doc_id).startswith("faq-") else "article")
        return [
            Sentence(text, hit.doc_id, hit.title, hit.url, hit.section, kind, pos, -1, hit.text)
            for pos, text in enumerate(split_section(hit.text))
        ]

    # ---- features ----------------------------------------------------------------------------

    def _vectors(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), dim] embeddings; KB sentences recur across questions, so they are cached."""
        with self._lock:
            known = {t: self._vec_cache[t] for t in dict.fromkeys(texts) if t in self._vec_cache}
        missing = [t for t in dict.fromkeys(texts) if t not in known]
        if missing:
            vecs = np.asarray(self.engine.embed(missing), dtype=np.float32)  # [len(missing), dim]
            fresh = dict(zip(missing, vecs, strict=True))
            known.update(fresh)
            with self._lock:
                self._vec_cache.update(fresh)
                while len(self._vec_cache) > self._cache_size:
                    self._vec_cache.popitem(last=False)
        return np.stack([known[t] for t in texts])

    def _lm_totals(self, continuations: Sequence[str], *, cache: bool) -> list[tuple[float, int]]:
        """(sum log-prob, tokens) of each continuation after ``LM_PREFIX``."""
        with self._lock:
            known = {c: self._lm_cache[c] for c in dict.fromkeys(continuations) if cache and c in self._lm_cache}
        todo = [c for c in dict.fromkeys(continuations) if c not in known]
        if todo:
            scores = self.engine.score_continuations(LM_PREFIX, todo, model=self.selector.lm_model)
            got = {c: (float(x.logprob), int(x.n_tokens)) for c, x in zip(todo, scores, strict=True)}
            known.update(got)
            if cache:
                with self._lock:
                    self._lm_cache.update(got)
                    while len(self._lm_cache) > self._cache_size:
                        self._lm_cache.popitem(last=False)
        return [known[c] for c in continuations]

    def lm_scores(self, query: str, sentences: Sequence[Sentence]) -> tuple[np.ndarray, float]:
        """Mean log-prob of the query's tokens after each sentence ([n]) and with no sentence:
        logp(sentence + join + query) - logp(sentence + join), the second part cached per sentence."""
        heads = [f"{s.text}{LM_JOIN}" for s in sentences] + [LM_JOIN.strip()]
        base = self._lm_totals(heads, cache=True)
        full = self._lm_totals([f"{h} {query}" for h in heads], cache=False)
        means = np.array([(f[0] - b[0]) / max(f[1] - b[1], 1) for f, b in zip(full, base, strict=True)])
        return means[:-1], float(means[-1])

    def window(self, s: Sentence) -> str:
        """The sentence with the sentences before and after it in its section."""
        if s.section_index < 0:  # a chunk's own sentence: no stored document to look around in
            return s.text
        doc = self._doc_sentences(s.doc_id) or []
        near = {t.position: t.text for t in doc if t.section_index == s.section_index}
        return " ".join(t for t in (near.get(s.position - 1), s.text, near.get(s.position + 1)) if t)

    def embedding_features(
        self, question: str, parts: Sequence[str], sentences: Sequence[Sentence]
    ) -> dict[str, dict[str, np.ndarray]]:
        """The features of ``EMBED_FEATURES`` per part (MiniLM cosines and the retrieval signals)."""
        queries = list(dict.fromkeys([*parts, question]))
        q_vecs = self._vectors(queries)
        s_vecs = self._vectors([s.text for s in sentences])
        c_vecs = self._vectors([s.context for s in sentences])
        h_vecs = self._vectors([s.heading for s in sentences])
        w_vecs = self._vectors([self.window(s) for s in sentences])
        cos_full = c_vecs @ q_vecs[queries.index(question)]
        passage_cos = np.array([s.passage_cosine for s in sentences])
        inv_rank = np.array([1.0 / max(s.passage_rank, 1) for s in sentences])
        out = {}
        for part in parts:
            pv = q_vecs[queries.index(part)]
            cos_ctx = c_vecs @ pv
            out[part] = {
                "cos": s_vecs @ pv,
                "cos_ctx": cos_ctx,
                "cos_full": cos_full,
                "cos_gap": cos_ctx - cos_ctx.max(),
                "cos_head": h_vecs @ pv,
                "cos_win": w_vecs @ pv,
                "passage_cos": passage_cos,
                "inv_rank": inv_rank,
            }
        return out

    def score(self, question: str, parts: Sequence[str] | None = None) -> Scored:
        """Candidates and their features for each part (all of ``FEATURES``; the selector picks)."""
        parts = [p for p in (parts or [question]) if p.strip()] or [question]
        queries = list(dict.fromkeys([*parts, question]))
        sentences = self.candidates(queries)
        n = len(sentences)
        x = np.zeros((len(parts), n, len(FEATURES)), dtype=np.float64)
        if n == 0:
            return Scored(question, list(parts), sentences, x)
        idf = self.idf()
        text = {part: text_features(question, part, sentences, idf) for part in parts}
        emb = self.embedding_features(question, parts, sentences)
        cos_full, lex_full = emb[parts[0]]["cos_full"], text[parts[0]]["lex_full"]
        use_lm = self.selector.needs_lm
        lm_rows: list[int] = []
        if use_lm:  # the likelihood costs a forward pass per candidate: only the likeliest few
            for part in parts:
                pre = emb[part]["cos_ctx"] + 0.5 * text[part]["lex_ctx"]
                lm_rows.extend(int(i) for i in np.argsort(-pre, kind="stable")[: self.selector.lm_top])
            pre = cos_full + 0.5 * lex_full
            lm_rows.extend(int(i) for i in np.argsort(-pre, kind="stable")[: self.selector.lm_top])
            lm_rows = sorted(set(lm_rows))

        def lm_for(query: str) -> tuple[np.ndarray, np.ndarray]:
            """(lm, pmi) per sentence; sentences outside ``lm_rows`` get the lowest scored value."""
            sub = [sentences[i] for i in lm_rows]
            lm_sub, lm0 = self.lm_scores(query, sub)
            lm = np.full(n, float(lm_sub.min()))
            lm[lm_rows] = lm_sub
            return lm, lm - lm0

        lm_full_pmi = np.zeros(n)
        lm_q = pmi_q = np.zeros(n)
        if use_lm:
            lm_q, pmi_q = lm_for(question)
            lm_full_pmi = pmi_q
        for p, part in enumerate(parts):
            if not use_lm:
                lm = pmi = np.zeros(n)
            elif part == question:
                lm, pmi = lm_q, pmi_q
            else:
                lm, pmi = lm_for(part)
            cols = {
                **text[part],
                **emb[part],
                "lm": lm,
                "lm_pmi": pmi,
                "lm_full_pmi": lm_full_pmi,
                "lm_gap": pmi - pmi.max(),
            }
            x[p] = np.stack([cols[f] for f in FEATURES], axis=1)
        return Scored(question, list(parts), sentences, x)

    # ---- selection and the reply -------------------------------------------------------------

    def select(self, scored: Scored, selector: Selector | None = None) -> ExtractiveReply:
        """Top sentence per part (plus a supporting neighbour), composed and checked, or a handoff."""
        sel = selector or self.selector
        if not scored.sentences:
            return ExtractiveReply("", [], 0.0, True, "no_candidates", [], [])
        probs = sel.predict(scored.features)  # [n_parts, n_sentences]
        part_scores: list[PartScore] = []
        chosen: list[Sentence] = []
        seen: set[tuple[str, int, int]] = set()
        for p, part in enumerate(scored.parts):
            order = [int(i) for i in np.argsort(-probs[p], kind="stable")]
            if p > 0 and scored.sentences[order[0]].key in seen:
                # an earlier part already says this: answer this part with its best other sentence
                # when that one is likely enough, so "X? and Y?" does not get X's sentence twice
                other = next((i for i in order if scored.sentences[i].key not in seen), None)
                if other is not None and probs[p, other] >= sel.second_threshold:
                    order.remove(other)
                    order.insert(0, other)
            top = scored.sentences[order[0]]
            picked, p_picked = [top], [float(probs[p, order[0]])]
            for j in order[1:]:
                if len(picked) >= sel.max_sentences or probs[p, j] < sel.second_threshold:
                    break
                s = scored.sentences[j]
                words = set(keywords(s.text))
                if s.key in seen or any(_near_duplicate(words, set(keywords(t.text))) for t in picked):
                    continue  # said already, or the same thing in other words (an FAQ and its article)
                adjacent = (
                    s.doc_id == top.doc_id
                    and s.section_index == top.section_index
                    and abs(s.position - top.position) == 1
                )
                if adjacent or not sel.second_adjacent:
                    picked.append(s)
                    p_picked.append(float(probs[p, j]))
            picked.sort(key=lambda s: (s.doc_id != top.doc_id, s.doc_id, s.section_index, s.position))
            union = 1.0 - float(np.prod([1.0 - q for q in p_picked]))
            part_p = union if sel.confidence == "union" else p_picked[0]
            part_scores.append(PartScore(part, top, part_p, picked))
            for s in picked:
                if s.key not in seen:
                    seen.add(s.key)
                    chosen.append(s)
        confidence = min(ps.probability for ps in part_scores)
        answer, citations = compose(chosen)
        details: dict[str, Any] = {
            "would_answer": answer,
            "would_cite": [c.doc_id for c in citations],
            "parts": [
                {"part": ps.part, "p": round(ps.probability, 4), "top": ps.top.text if ps.top else None}
                for ps in part_scores
            ],
        }
        if confidence < sel.threshold:
            return ExtractiveReply("", [], confidence, True, "low_confidence", part_scores, chosen, details)
        problems = fact_check(answer, chosen)
        if problems:  # cannot happen for verbatim sentences; guards any later rewriting
            log.warning("extractive reply failed its fact check: %s", problems)
            return ExtractiveReply("", [], confidence, True, "fact_check", part_scores, chosen, details)
        broken = self.banned(answer) if self.banned else []
        if broken:
            return ExtractiveReply("", [], confidence, True, f"never_say:{broken[0]}", part_scores, chosen, details)
        return ExtractiveReply(answer, citations, confidence, False, None, part_scores, chosen, details)

    def answer(self, question: str, parts: Sequence[str] | None = None) -> ExtractiveReply:
        """The reply to one (masked, standalone) question split into ``parts``."""
        return self.select(self.score(question, parts))
