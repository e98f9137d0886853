"""Reading the files a user brings: CSV (a header row) or JSON Lines (one object a line), the same
fields either way. A bad row stops the read with an error that names the file and the line, so a
training set is never silently smaller than the file it came from.

For training on them (``finetune.tasks.*.read_own`` / ``split_own``): the limits every domain checks
(``MIN_ROWS_PER_CLASS``, ``MAX_OWN_ROWS``) and ``held_out_split``, a split that depends on the rows'
content alone, so that every version trained on a file is gated on the same held-out rows."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from core.errors import InvalidRequestError

T = TypeVar("T")

CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")


class DataFileError(InvalidRequestError):
    """A data file that is missing, of an unknown kind, or holds a row that cannot be used."""

    error_type = "invalid_data_file"


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataFileError(f"{what} not found: {path}", path=str(path))
    return path


def read_rows(
    path: Path, *, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, {field: stripped text}) for every row of a .csv or .jsonl file; field names are
    matched case-insensitively, other fields are ignored, an absent optional field reads as ''."""
    require_file(path, "data file")
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES + JSONL_SUFFIXES:
        raise DataFileError(
            f"{path}: unknown file type {suffix or '(none)'}; use .csv (with a header row) or .jsonl",
            path=str(path),
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})", path=str(path)) from None
    rows = _csv_rows(path, text, required) if suffix in CSV_SUFFIXES else _jsonl_rows(path, text)
    seen = 0
    for line, raw in rows:
        nested = [key for key in (*required, *optional) if isinstance(raw.get(key), dict | list)]
        if nested:
            raise row_error(path, line, f"{', '.join(nested)} must be text, not a JSON object or list")
        row = {key: _text(raw.get(key)) for key in (*required, *optional)}
        missing = [key for key in required if not row[key]]
        if missing:
            raise DataFileError(
                f"{path}, line {line}: empty or missing {', '.join(missing)}", path=str(path), line=line
            )
        seen += 1
        yield line, row
    if not seen:
        raise DataFileError(f"{path}: no rows", path=str(path))


def row_error(path: Path, line: int, reason: str) -> DataFileError:
    return DataFileError(f"{path}, line {line}: {reason}", path=str(path), line=line)


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def _csv_rows(path: Path, text: str, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, object]]]:
    reader = csv.DictReader(io.StringIO(text))
    columns = {(c or "").strip().lower() for c in reader.fieldnames or []}
    absent = [key for key in required if key not in columns]
    if absent:
        raise DataFileError(
            f"{path}: the header row lacks {', '.join(absent)} (found: {', '.join(sorted(columns)) or 'nothing'})",
            path=str(path),
        )
    for raw in reader:
        if raw.get(None):  # DictReader's key for values past the header's last column
            raise row_error(
                path, reader.line_num, "more values than the header has columns (a comma in an unquoted text?)"
            )
        yield reader.line_num, {(k or "").strip().lower(): v for k, v in raw.items() if k is not None}


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, object]]]:
    for line, body in enumerate(text.splitlines(), start=1):
        if not body.strip():
            continue
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as exc:
            raise row_error(path, line, f"bad JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise row_error(path, line, "not a JSON object")
        yield line, {str(k).strip().lower(): v for k, v in obj.items()}


# ---- a user's own training files: limits, the content key, the held-out split ----------------------

MIN_ROWS_PER_CLASS = 5  # distinct texts per intent or label: one in five is held out for the gate
HELD_OUT_SHARE = 0.2  # of every intent or label, by content hash
MAX_OWN_ROWS = 20_000  # rows across a training's files; a bigger set is a job for the public-set trainers


def content_key(text: str) -> str:
    """SHA-256 of the text with case and runs of white space folded: the same text, however spaced
    or cased, lands on the same side of a split."""
    return hashlib.sha256(" ".join(text.lower().split()).encode("utf-8")).hexdigest()


def held_out_split(
    rows: Sequence[T], *, text: Callable[[T], str], label: Callable[[T], str | None], share: float = HELD_OUT_SHARE
) -> tuple[list[T], list[T]]:
    """(train, held out): of every label, the rows whose ``content_key`` sorts first, ``share`` of
    its distinct texts and at least one, are held out; copies of a text stay together. Rows whose
    label is None are always trained on. It depends on nothing but the rows' content, so two
    trainings on the same file are judged on the same held-out rows, whatever the files' order."""
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")
    groups: dict[str, dict[str, list[T]]] = {}
    train: list[T] = []
    for row in rows:
        key = label(row)
        if key is None:
            train.append(row)
        else:
            groups.setdefault(key, {}).setdefault(content_key(text(row)), []).append(row)
    held: list[T] = []
    for key in sorted(groups):
        by_text = groups[key]
        ordered = sorted(by_text)
        cut = max(1, round(len(ordered) * share)) if len(ordered) > 1 else 0
        for n, digest in enumerate(ordered):
            (held if n < cut else train).extend(by_text[digest])
    return train, held


def check_classes(seen: dict[str, list[tuple[Path, int]]], what: str, minimum: int = MIN_ROWS_PER_CLASS) -> None:
    """Refuse the first class (intent, label) with fewer than ``minimum`` distinct texts, naming
    where its rows are. ``seen``: class -> (file, line) of each of its distinct texts."""
    for name in sorted(seen):
        places = seen[name]
        if len(places) < minimum:
            where = "; ".join(f"{p}, line {line}" for p, line in places[:5])
            first = places[0]
            raise DataFileError(
                f"{what} {name!r} has only {len(places)} distinct {'text' if len(places) == 1 else 'texts'} "
                f"({where}); each {what} needs at least {minimum} to train on and hold out",
                path=str(first[0]),
                line=first[1],
            )


def count_limit(path: Path, line: int, total: int, limit: int | None = None) -> None:
    """Refuse the row that takes the training set past ``limit`` rows (``MAX_OWN_ROWS``)."""
    limit = MAX_OWN_ROWS if limit is None else limit
    if total > limit:
        raise row_error(path, line, f"more than {limit:,} rows in all; split the data or train on a sample of it")
