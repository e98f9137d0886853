"""The formats in which a store brings its own data: catalogue items and user events, one at a time
(the API's JSON) or as files (CSV, JSON lines, JSON), validated at the door.

    catalogue  id, title, description, category, tags (a list, or one string joined by | ; or ,),
               price, in_stock; any other column is kept as ``extra``
    events     user_id, item_id, type (view, click, cart, purchase, rating), ts (epoch seconds or
               ISO 8601; missing: now), value (a rating's 0-5)

A bad row in a file never stops the good ones: each reader returns what it could parse and a
``RowError`` per row it could not, so the caller ingests the good rows and reports the rest.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.errors import InvalidRequestError

EVENT_TYPES: tuple[str, ...] = ("view", "click", "cart", "purchase", "rating")
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:@/-]{1,128}$")
MAX_FUTURE_S = 86400.0  # event clocks drift; a timestamp further ahead than this is a bug upstream
ITEM_FIELDS = ("id", "title", "description", "category", "tags", "price", "in_stock")
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f", ""}


@dataclass(frozen=True)
class Item:
    id: str
    title: str
    description: str = ""
    category: str = ""
    tags: tuple[str, ...] = ()
    price: float | None = None
    in_stock: bool = True
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def text(self) -> str:
        """What the embedder reads: title first (it matters most), then category, tags, description."""
        parts = [self.title, self.category, ", ".join(self.tags), self.description]
        return ". ".join(p for p in parts if p)

    def to_json(self) -> str:
        data = asdict(self)
        data["tags"] = list(self.tags)
        return json.dumps(data, ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Item:
        data = json.loads(raw)
        data["tags"] = tuple(data.get("tags") or ())
        return cls(**data)


@dataclass(frozen=True)
class Event:
    user_id: str
    item_id: str
    type: str
    ts: float
    value: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Event:
        return cls(**json.loads(raw))


@dataclass(frozen=True)
class RowError:
    where: str  # "line 7" / "row 3" / "items[2]"
    reason: str


def _text(raw: dict[str, Any], key: str, *, required: bool, limit: int) -> str:
    value = raw.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidRequestError(f"{key} is required")
        return ""
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise InvalidRequestError(f"{key} must be a string")
    text = str(value).strip()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(f"{key} must be valid Unicode text") from None
    if len(text) > limit:
        raise InvalidRequestError(f"{key} holds {len(text)} characters; the limit is {limit}")
    return text


def parse_id(value: Any, what: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise InvalidRequestError(f"{what} must be 1-128 characters of letters, digits and _.:@/-, got {value!r}")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise InvalidRequestError(f"{what} must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidRequestError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InvalidRequestError(f"{what} must be a finite number")
    return number


def _bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise InvalidRequestError(f"{what} must be true or false, got {value!r}")


def _tags(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = re.split(r"[|;,]", value)
    if not isinstance(value, list | tuple) or not all(isinstance(t, str) for t in value):
        raise InvalidRequestError("tags must be a list of strings (or one string joined by |)")
    tags = tuple(dict.fromkeys(t.strip().lower() for t in value if t.strip()))
    if len(tags) > 50:
        raise InvalidRequestError(f"an item may have at most 50 tags, got {len(tags)}")
    return tags


def parse_item(raw: Any, *, max_text_chars: int = 5000) -> Item:
    """One item from a JSON object or CSV row; raises ``InvalidRequestError`` naming the bad field."""
    if not isinstance(raw, dict):
        raise InvalidRequestError("an item must be an object")
    price = raw.get("price")
    price_value = None if price is None or price == "" else _number(price, "price")
    if price_value is not None and price_value < 0:
        raise InvalidRequestError("price must not be negative")
    stock = raw.get("in_stock")
    extra = {k: v for k, v in raw.items() if k not in ITEM_FIELDS and v not in (None, "")}
    try:
        json.dumps(extra)
    except (TypeError, ValueError):
        raise InvalidRequestError("extra fields must be plain JSON values") from None
    return Item(
        id=parse_id(raw.get("id"), "id"),
        title=_text(raw, "title", required=True, limit=500),
        description=_text(raw, "description", required=False, limit=max_text_chars),
        category=_text(raw, "category", required=False, limit=200),
        tags=_tags(raw.get("tags")),
        price=price_value,
        in_stock=True if stock is None or stock == "" else _bool(stock, "in_stock"),
        extra=extra,
    )


def parse_time(value: Any, now: float) -> float:
    """Epoch seconds (number or digits) or ISO 8601; missing means now; refused far in the future."""
    if value is None or value == "":
        return now
    if isinstance(value, str) and not re.fullmatch(r"\d+(\.\d+)?", value.strip()):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequestError(f"ts must be epoch seconds or ISO 8601, got {value!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        ts = parsed.timestamp()
    else:
        ts = _number(value, "ts")
    if ts < 0:
        raise InvalidRequestError("ts must not be negative")
    if ts > now + MAX_FUTURE_S:
        raise InvalidRequestError(f"ts {ts:.0f} is more than a day in the future")
    return ts


def parse_event(raw: Any, *, now: float | None = None) -> Event:
    """One event; a rating needs a value in [0, 5], other types ignore ``value``."""
    if not isinstance(raw, dict):
        raise InvalidRequestError("an event must be an object")
    now = time.time() if now is None else now
    kind = raw.get("type")
    if kind not in EVENT_TYPES:
        raise InvalidRequestError(f"type must be one of {', '.join(EVENT_TYPES)}, got {kind!r}")
    value = None
    if kind == "rating":
        if raw.get("value") is None:
            raise InvalidRequestError("a rating event needs a value")
        value = _number(raw["value"], "value")
        if not 0 <= value <= 5:
            raise InvalidRequestError(f"a rating value must be between 0 and 5, got {value}")
    return Event(
        user_id=parse_id(raw.get("user_id"), "user_id"),
        item_id=parse_id(raw.get("item_id"), "item_id"),
        type=str(kind),
        ts=parse_time(raw.get("ts"), now),
        value=value,
    )


# ---- files -------------------------------------------------------------------------------------


def iter_rows(text: str, fmt: str) -> Iterator[tuple[str, Any]]:
    """(where, raw row) per record of a "jsonl", "json" or "csv" text; unparsable lines yield an
    ``InvalidRequestError`` as the row, so the caller reports them with the rest."""
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames:
            return
        for n, row in enumerate(reader, start=2):  # line 1 is the header
            if None in row:
                yield f"line {n}", InvalidRequestError("more fields than the header names")
            else:
                yield f"line {n}", {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
    elif fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            yield "file", InvalidRequestError(f"not valid JSON: {exc}")
            return
        if isinstance(data, dict):
            data = data.get("items") or data.get("events") or [data]
        for n, row in enumerate(data if isinstance(data, list) else [data]):
            yield f"[{n}]", row
    elif fmt == "jsonl":
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield f"line {n}", json.loads(line)
            except json.JSONDecodeError as exc:
                yield f"line {n}", InvalidRequestError(f"not valid JSON: {exc.msg}")
    else:
        raise InvalidRequestError(f"unknown file format {fmt!r}; use csv, json or jsonl")


def format_of(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix in {"jsonl", "ndjson"}:
        return "jsonl"
    if suffix in {"csv", "json"}:
        return suffix
    raise InvalidRequestError(f"{path.name}: use a .csv, .json or .jsonl file")


def read_text(path: Path, max_bytes: int = 200_000_000) -> str:
    if not path.is_file():
        raise InvalidRequestError(f"no such file: {path}")
    if path.stat().st_size > max_bytes:
        raise InvalidRequestError(f"{path} is larger than {max_bytes} bytes")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidRequestError(f"{path} is not UTF-8 text") from None


def parse_items_text(text: str, fmt: str, *, max_text_chars: int = 5000) -> tuple[list[Item], list[RowError]]:
    """Items and per-row errors; a later row with the same id wins (an upsert)."""
    items: dict[str, Item] = {}
    errors: list[RowError] = []
    for where, raw in iter_rows(text, fmt):
        try:
            if isinstance(raw, InvalidRequestError):
                raise raw
            item = parse_item(raw, max_text_chars=max_text_chars)
        except InvalidRequestError as exc:
            errors.append(RowError(where, exc.message))
            continue
        items[item.id] = item
    return list(items.values()), errors


def parse_events_text(text: str, fmt: str, *, now: float | None = None) -> tuple[list[Event], list[RowError]]:
    events: list[Event] = []
    errors: list[RowError] = []
    for where, raw in iter_rows(text, fmt):
        try:
            if isinstance(raw, InvalidRequestError):
                raise raw
            events.append(parse_event(raw, now=now))
        except InvalidRequestError as exc:
            errors.append(RowError(where, exc.message))
    return events, errors


def read_catalogue(path: Path, *, max_text_chars: int = 5000) -> tuple[list[Item], list[RowError]]:
    """A catalogue file (.csv, .jsonl, .json): its items and the rows that could not be read."""
    return parse_items_text(read_text(path), format_of(path), max_text_chars=max_text_chars)


def read_events(path: Path, *, now: float | None = None) -> tuple[list[Event], list[RowError]]:
    """An events file (.csv, .jsonl, .json): its events and the rows that could not be read."""
    return parse_events_text(read_text(path), format_of(path), now=now)
