"""Financial news sentiment: the train/serve contract of the sentiment adapter, and its data.

    system  INSTRUCTION
    user    the headline
    answer  one of LABELS, scored by the first-token distribution (``Engine.score_labels``)

Training renders each row with ``prompt`` (``core.prompts.classification_prompt``, the function
the engine's ``score_labels`` renders with) and writes ``serving_section`` into the adapter card;
the monitor reads it back with ``read_serving`` and asks the engine for exactly those labels and that
instruction. A model without a card (the base model) reads as the defaults here.

Readers: the public sets in the shared data folder (Financial PhraseBank, the FinLoRA test files,
TFNS, SEntFiN, the gold commodity news) and the format in which a user brings their own data,
*labelled headlines*: a .csv with a header row or a .jsonl file, one headline a row, with fields
``text``, ``label`` (one of LABELS, any case) and optionally ``entity`` (the company or asset the
label is about): ``read_labelled_headlines`` one file, ``read_own_headlines`` a training's files,
checked as a whole (docs/data-formats.md).
"""

from __future__ import annotations

import ast
import csv
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.prompts import classification_prompt
from domains.records import (
    MIN_ROWS_PER_CLASS,
    DataFileError,
    check_classes,
    content_key,
    count_limit,
    read_rows,
    require_file,
    row_error,
)

LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
INSTRUCTION = "Financial news sentiment for investors: negative, neutral or positive?"
METHOD = "score_labels"
TFNS_LABELS = {"0": "negative", "1": "positive", "2": "neutral"}  # 0 Bearish, 1 Bullish, 2 Neutral


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: str
    source: str
    entity: str | None = None  # the company or asset the label is about, where the data says


# ---- prompt and the adapter card's serving section ---------------------------------------------------


@dataclass(frozen=True)
class SentimentServing:
    """How to prompt the sentiment adapter: the labels it scores and the instruction it was trained on."""

    labels: tuple[str, ...] = LABELS
    instruction: str = INSTRUCTION

    def __post_init__(self) -> None:
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be two or more distinct words, got {list(self.labels)}")
        if not self.instruction.strip():
            raise ValueError("the instruction must not be empty")


def prompt(tokenizer: Any, text: str, serving: SentimentServing = SentimentServing()) -> str:
    """The string the model reads for ``text``: what training encodes and ``score_labels`` scores."""
    return classification_prompt(tokenizer, text, list(serving.labels), serving.instruction)


def serving_section(serving: SentimentServing) -> dict[str, Any]:
    """The card's ``serving`` section for an adapter trained with ``serving``."""
    return {
        "method": METHOD,
        "labels": list(serving.labels),
        "instruction": serving.instruction,
        "prompt": "domains.sentiment.prompt(tokenizer, text, serving)",
    }


def read_serving(section: Mapping[str, Any] | None) -> SentimentServing:
    """The section read back; a key the card lacks takes its default. Raises ``ValueError`` on a
    section that names impossible values."""
    section = section or {}
    try:
        return SentimentServing(
            labels=tuple(str(label) for label in section.get("labels") or LABELS),
            instruction=str(section.get("instruction") or INSTRUCTION),
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the adapter card's serving section is not usable: {exc}") from exc


# ---- public sets ------------------------------------------------------------------------------------


def read_fpb(path: Path) -> list[LabelledText]:
    """Financial PhraseBank (``Sentences_50Agree.txt`` and its siblings): ``sentence@label``, latin-1."""
    rows = []
    for line in require_file(path, "Financial PhraseBank").read_bytes().decode("latin-1").splitlines():
        if "@" not in line:
            continue
        text, label = line.rsplit("@", 1)
        label = label.strip()
        if label in LABELS and text.strip():
            rows.append(LabelledText(text.strip(), label, "fpb"))
    return rows


def _three_way(label: str) -> str | None:
    """ "negative" / "mildly positive" / "strong negative" ... -> negative, neutral or positive."""
    last = label.strip().lower().rsplit(" ", 1)[-1]
    return last if last in LABELS else None


def read_finlora_test(path: Path, source: str = "fpb_test") -> list[LabelledText]:
    """A FinLoRA test file (``fpb_test.jsonl``: the standard 1,212-row FPB test split; ``nwgi_test.jsonl``):
    the headline between "Input:" and "Answer:" in ``context``; ``target`` graded labels ("mildly
    positive") folded to the three LABELS."""
    rows = []
    text = require_file(path, "FinLoRA test file").read_text(encoding="utf-8", errors="replace")
    for line in text.splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        headline = item["context"].split("Input:", 1)[1].rsplit("Answer:", 1)[0].strip()
        label = _three_way(item["target"])
        if label is not None and headline:
            rows.append(LabelledText(headline, label, source))
    return rows


def read_fpb_test(path: Path) -> list[LabelledText]:
    return read_finlora_test(path, "fpb_test")


def read_tfns(path: Path) -> list[LabelledText]:
    """Twitter Financial News Sentiment ``sent_train.csv``: text, label (0 bearish, 1 bullish, 2 neutral)."""
    with require_file(path, "TFNS").open(encoding="utf-8", newline="") as fh:
        return [
            LabelledText(row["text"].strip(), TFNS_LABELS[row["label"].strip()], "tfns")
            for row in csv.DictReader(fh)
            if row.get("label", "").strip() in TFNS_LABELS and row.get("text", "").strip()
        ]


def read_sentfin(path: Path) -> list[LabelledText]:
    """SEntFiN ``SEntFiN.csv``: one row per (headline, entity), the ``Decisions`` column being a dict
    of entity -> label."""
    rows = []
    with require_file(path, "SEntFiN").open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            title = (row.get("Title") or "").strip()
            try:
                decisions = ast.literal_eval(row.get("Decisions") or "{}")
            except (ValueError, SyntaxError):
                continue
            if not title or not isinstance(decisions, dict):
                continue
            for entity, label in decisions.items():
                if str(label).strip() in LABELS:
                    rows.append(LabelledText(title, str(label).strip(), "sentfin", str(entity).strip()))
    return rows


@dataclass(frozen=True)
class DatedHeadline:
    line: int
    title: str
    published_at: float  # Unix seconds
    url: str | None = None
    label: str | None = None  # one of LABELS where the set labels it


def read_gold_news(path: Path) -> list[DatedHeadline]:
    """The gold commodity news (``gold-dataset-sinha-khandait.tsv``): Dates (dd-mm-yyyy, so noon UTC),
    URL, News, ..., Price Sentiment; rows without a readable date are left out."""
    text = require_file(path, "gold commodity news").read_text(encoding="utf-8", errors="replace")
    out = []
    for line, row in enumerate(csv.DictReader(io.StringIO(text), delimiter="\t"), start=2):
        try:
            day = datetime.strptime((row.get("Dates") or "").strip(), "%d-%m-%Y").replace(hour=12, tzinfo=UTC)
        except ValueError:
            continue
        label = (row.get("Price Sentiment") or "").strip().lower()
        out.append(
            DatedHeadline(
                line=line,
                title=row.get("News") or "",
                published_at=day.timestamp(),
                url=row.get("URL") or None,
                label=label if label in LABELS else None,
            )
        )
    return out


# ---- the user's own data ------------------------------------------------------------------------------

MAX_TEXT_CHARS = 2_000
MAX_ENTITY_CHARS = 200


def _headline_rows(path: Path, labels: tuple[str, ...]) -> Iterator[tuple[int, LabelledText]]:
    for line, row in read_rows(path, required=("text", "label"), optional=("entity",)):
        label = row["label"].lower()
        if label not in labels:
            raise row_error(path, line, f"label {row['label']!r} is not one of {', '.join(labels)}")
        if len(row["text"]) > MAX_TEXT_CHARS:
            raise row_error(path, line, f"text longer than {MAX_TEXT_CHARS:,} characters")
        if len(row["entity"]) > MAX_ENTITY_CHARS:
            raise row_error(path, line, f"entity longer than {MAX_ENTITY_CHARS} characters")
        yield line, LabelledText(row["text"], label, path.name, row["entity"] or None)


def read_labelled_headlines(path: Path, labels: tuple[str, ...] = LABELS) -> list[LabelledText]:
    """*Labelled headlines* (.csv or .jsonl): ``text``, ``label`` and optionally ``entity``. Raises
    ``DataFileError`` naming the file and line of the first row that cannot be used."""
    return [row for _, row in _headline_rows(path, labels)]


def read_own_headlines(paths: Sequence[Path], labels: tuple[str, ...] = LABELS) -> list[LabelledText]:
    """Every row of ``paths`` for training the sentiment adapter, checked as a whole: no text twice
    with two labels (the adapter reads the text alone; ``entity`` is kept, not used), and ``MIN_ROWS_PER_CLASS`` distinct texts of every label,
    so each label can be learned and held out. Raises ``DataFileError`` naming the file and line."""
    if not paths:
        raise DataFileError("no data file given")
    rows: list[LabelledText] = []
    first_seen: dict[str, tuple[str, Path, int]] = {}  # content key -> label, where
    per_label: dict[str, dict[str, tuple[Path, int]]] = {label: {} for label in labels}
    for path in paths:
        for line, row in _headline_rows(path, labels):
            rows.append(row)
            count_limit(path, line, len(rows))
            key = content_key(row.text)
            if key in first_seen and first_seen[key][0] != row.label:
                label, where, at = first_seen[key]
                raise row_error(
                    path,
                    line,
                    f"the text of {where}, line {at} again, labelled {row.label!r} here and {label!r} there "
                    "(the adapter reads the text alone, not the entity)",
                )
            first_seen.setdefault(key, (row.label, path, line))
            per_label[row.label].setdefault(key, (path, line))
    missing = [label for label in labels if not per_label[label]]
    if missing:
        raise DataFileError(
            f"{', '.join(str(p) for p in paths)}: no row labelled {' or '.join(missing)}; the adapter is scored "
            f"on every label ({', '.join(labels)}), so each needs at least {MIN_ROWS_PER_CLASS} rows",
            path=str(paths[0]),
        )
    check_classes({label: list(places.values()) for label, places in per_label.items()}, "label")
    return rows
