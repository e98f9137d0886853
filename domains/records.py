"""Reading the files a user brings: CSV (a header row) or JSON Lines (one object a line), the same
fields either way. A bad row stops the read with an error that names the file and the line, so a
training set is never silently smaller than the file it came from."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

from core.errors import InvalidRequestError

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
