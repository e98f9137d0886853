"""The three ways in share one path: raw records -> ``normalize_item`` -> ``NewsStore.add`` -> an
enrichment task for the new ids. Files and feeds skip a bad record and log why (the pipeline keeps
running); the API refuses a request with a bad item whole, naming it (see ``routes``)."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apps.sentiment.items import NewsItem, normalize_item
from apps.sentiment.settings import SentimentSettings
from apps.sentiment.store import NewsStore
from core.errors import DomainLLMError, InputTooLargeError, InvalidRequestError

log = logging.getLogger(__name__)


@dataclass
class Rejected:
    where: str  # "line 4", "entry 2", "items[3]"
    reason: str


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    new_ids: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # every stored or duplicate item's id, in input order
    rejected: list[Rejected] = field(default_factory=list)


def normalize_all(
    records: list[tuple[str, Any]], settings: SentimentSettings, *, via: str, source: str, strict: bool = False
) -> tuple[list[NewsItem], list[Rejected]]:
    """Normalise (where, record) pairs; with ``strict`` the first bad one raises, naming where it is."""
    items, rejected = [], []
    for where, raw in records:
        if isinstance(raw, Rejected):
            rejected.append(raw)
            continue
        try:
            items.append(
                normalize_item(
                    raw,
                    via=via,
                    default_source=source,
                    max_title_chars=settings.max_title_chars,
                    max_body_chars=settings.max_item_body_chars,
                )
            )
        except InputTooLargeError as exc:
            if strict:
                raise InputTooLargeError(f"{where}: {exc.message}", limit=exc.limit, actual=exc.actual) from None
            rejected.append(Rejected(where, exc.message))
        except DomainLLMError as exc:
            if strict:
                raise InvalidRequestError(f"{where}: {exc.message}") from None
            rejected.append(Rejected(where, exc.message))
    return items, rejected


def store_items(store: NewsStore, items: list[NewsItem], rejected: list[Rejected], what: str) -> IngestResult:
    """Store the items (each once, within the batch too), count and log what was refused."""
    unique: dict[str, NewsItem] = {}
    for item in items:
        unique.setdefault(item.id, item)
    flags = store.add(list(unique.values()))
    result = IngestResult(rejected=rejected, ids=[i.id for i in items])
    result.new_ids = [i.id for i, new in zip(unique.values(), flags, strict=True) if new]
    result.accepted = len(result.new_ids)
    result.duplicates = len(items) - result.accepted
    for r in rejected:
        log.warning("%s: skipped %s: %s", what, r.where, r.reason)
    store.count_rejected(len(rejected))
    return result


# ---- files ---------------------------------------------------------------------------------------


def _decode_lines(data: bytes) -> Iterator[tuple[int, str | Rejected]]:
    """Lines of a UTF-8 file; a line that is not UTF-8 becomes a ``Rejected`` and the rest go on."""
    for n, raw in enumerate(data.splitlines(), start=1):
        try:
            yield n, raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            yield n, Rejected(f"line {n}", f"not UTF-8 text (byte {exc.start}: {raw[exc.start : exc.start + 1]!r})")


def parse_jsonl(data: bytes) -> list[tuple[str, Any]]:
    records: list[tuple[str, Any]] = []
    for n, line in _decode_lines(data):
        where = f"line {n}"
        if isinstance(line, Rejected):
            records.append((where, line))
        elif line.strip():
            try:
                records.append((where, json.loads(line)))
            except json.JSONDecodeError as exc:
                records.append((where, Rejected(where, f"malformed JSON: {exc.msg} at column {exc.colno}")))
    return records


def parse_csv(data: bytes) -> list[tuple[str, Any]]:
    """A CSV with a header row (title/headline, and any of body, url, source, published_at)."""
    good: list[tuple[int, str]] = []
    records: list[tuple[str, Any]] = []
    for n, line in _decode_lines(data):
        if isinstance(line, Rejected):
            records.append((f"line {n}", line))
        else:
            good.append((n, line))
    if not good:
        return records
    reader = csv.DictReader(io.StringIO("\n".join(line for _, line in good)))
    if not reader.fieldnames or not {"title", "headline"} & {f.strip().lower() for f in reader.fieldnames}:
        raise InvalidRequestError("the CSV header must name a 'title' (or 'headline') column")
    for (n, _), row in zip(good[1:], reader, strict=False):
        records.append((f"line {n}", {(k or "").strip().lower(): v for k, v in row.items()}))
    return records


def read_records(path: Path, max_bytes: int) -> list[tuple[str, Any]]:
    """Records of a .jsonl/.json/.csv file, refusing one above ``max_bytes`` before reading it."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InvalidRequestError(f"cannot read {path}: {exc.strerror}") from None
    if size > max_bytes:
        raise InputTooLargeError(
            f"{path.name} is {size} bytes; the limit is {max_bytes} (DOMAINLLM_SENTIMENT_MAX_FILE_BYTES)",
            limit=max_bytes,
            actual=size,
        )
    data = path.read_bytes()
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson"}:
        return parse_jsonl(data)
    if suffix == ".json":
        try:
            parsed = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidRequestError(f"{path.name} is not valid UTF-8 JSON: {exc}") from None
        rows = parsed.get("items") if isinstance(parsed, dict) else parsed
        if not isinstance(rows, list):
            raise InvalidRequestError(f"{path.name}: expected a JSON list of items or {{'items': [...]}}")
        return [(f"items[{i}]", r) for i, r in enumerate(rows)]
    if suffix == ".csv":
        return parse_csv(data)
    raise InvalidRequestError(f"{path.name}: unsupported file type {suffix!r}; use .jsonl, .json or .csv")


def ingest_file(store: NewsStore, path: Path, settings: SentimentSettings) -> IngestResult:
    records = read_records(path, settings.max_file_bytes)
    items, rejected = normalize_all(records, settings, via="file", source=path.stem)
    result = store_items(store, items, rejected, f"file {path.name}")
    log.info("file %s: %d new, %d duplicates, %d skipped", path.name, result.accepted, result.duplicates,
             len(result.rejected))  # fmt: skip
    return result
