"""A store's own data for training its recommend adapter: a catalogue file and an events file, read
strictly (a bad row stops the read with the file, the line and the problem, before any training).

    catalogue  .csv (header row) or .jsonl; one product a row
               id (or item_id)           required; 1-128 of letters, digits and _.:@/-
               title (or name)           required
               text (or description)     optional
               category, brand           optional (any other column, tags included, is not read)
               price                     optional; a number, not negative
               in_stock                  optional; true/false
    events     .csv or .jsonl; one event a row
               user (or user_id)         required; same id rules
               item (or item_id)         required; must be an id of the catalogue
               type                      required; view, click, cart, purchase or rating
               timestamp (or ts, time)   required; epoch seconds or ISO 8601 (no zone: UTC)
               value                     a rating's 0-5 (rating events only)

Which file is which: by its columns (a catalogue has a title, events have a user), else by its name.
A user's sequence is the products they touched, each at its first event, in time order (ties by the
file's order); a rating at or below 3 marks the product disliked. Each user with at least
``MIN_SEQUENCE`` products can hold one out; training needs ``MIN_USERS`` such users.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import InvalidRequestError
from domains.recommend.prompt import LIKED_ABOVE
from domains.recommend.records import EVENT_TYPES, Event, Item, parse_id, parse_time
from domains.records import DataFileError, read_rows, require_file, row_error

MIN_SEQUENCE = 3  # products a user needs: two of history and one held out
MIN_USERS = 20  # users who can hold one out: below this there is nothing to train and check on
_ALIASES = {
    "id": ("id", "item_id"),
    "title": ("title", "name"),
    "text": ("text", "description"),
    "user": ("user", "user_id"),
    "item": ("item", "item_id"),
    "timestamp": ("timestamp", "ts", "time"),
}
FAR_FUTURE = 4_102_444_800.0  # 2100-01-01: a file's events are past events; later is a broken clock


@dataclass
class OwnCatalogueAndEvents:
    """What a store's files hold, checked: products by id, and each user's events in time order."""

    items: dict[str, Item]
    events: dict[str, list[Event]]  # user -> events, oldest first
    files: list[Path] = field(default_factory=list)

    def sequences(self) -> dict[str, list[str]]:
        """user -> distinct products at their first event, oldest first."""
        out: dict[str, list[str]] = {}
        for user, events in self.events.items():
            out[user] = list(dict.fromkeys(e.item_id for e in events))
        return out

    def disliked(self) -> dict[str, set[str]]:
        """user -> products whose latest rating is at or below the like threshold."""
        out: dict[str, set[str]] = {}
        for user, events in self.events.items():
            last: dict[str, float] = {}
            for e in events:
                if e.type == "rating" and e.value is not None:
                    last[e.item_id] = e.value
            out[user] = {i for i, v in last.items() if v <= LIKED_ABOVE}
        return out


def columns_of(path: Path) -> set[str]:
    """Lower-cased column names: a CSV's header, or the keys of a JSON-lines file's first object."""
    require_file(path, "data file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})", path=str(path)) from None
    if path.suffix.lower() == ".csv":
        header = next(csv.reader(io.StringIO(text)), [])
        return {c.strip().lower() for c in header}
    for line, body in enumerate(text.splitlines(), start=1):
        if body.strip():
            try:
                obj = json.loads(body)
            except json.JSONDecodeError as exc:
                raise row_error(path, line, f"bad JSON: {exc.msg}") from None
            return {str(k).strip().lower() for k in obj} if isinstance(obj, dict) else set()
    return set()


def _pick(columns: set[str], role: str) -> str | None:
    return next((name for name in _ALIASES[role] if name in columns), None)


def role_of(path: Path) -> str:
    """ "catalogue" or "events", by the columns, else by the file name."""
    columns = columns_of(path)
    if _pick(columns, "user") and _pick(columns, "timestamp"):
        return "events"
    if _pick(columns, "title") and _pick(columns, "id"):
        return "catalogue"
    stem = path.stem.lower()
    if any(w in stem for w in ("event", "interaction", "click", "order")):
        return "events"
    if any(w in stem for w in ("catalog", "item", "product")):
        return "catalogue"
    raise DataFileError(
        f"{path}: neither a catalogue (id, title, ...) nor events (user, item, type, timestamp); "
        f"its columns are {', '.join(sorted(columns)) or 'none'}",
        path=str(path),
    )


def _need(path: Path, columns: set[str], roles: tuple[str, ...]) -> dict[str, str]:
    found = {role: _pick(columns, role) for role in roles}
    missing = [" or ".join(_ALIASES[r]) for r, name in found.items() if name is None]
    if missing:
        raise DataFileError(f"{path}: no column {'; no column '.join(missing)}", path=str(path))
    return {r: n for r, n in found.items() if n is not None}


def read_catalogue_file(path: Path) -> dict[str, Item]:
    columns = columns_of(path)
    names = _need(path, columns, ("id", "title"))
    text_col = _pick(columns, "text") or "text"
    optional = (text_col, "category", "brand", "price", "in_stock")  # tags and other columns are not read
    items: dict[str, Item] = {}
    for line, row in read_rows(path, required=(names["id"], names["title"]), optional=optional):
        try:
            item_id = parse_id(row[names["id"]], "id")
            price = None
            if row["price"]:
                price = float(row["price"])
                if not math.isfinite(price) or price < 0:
                    raise InvalidRequestError(f"price must be a number of 0 or more, got {row['price']!r}")
            stock = row["in_stock"].lower()
            if stock not in ("", "true", "false", "1", "0", "yes", "no"):
                raise InvalidRequestError(f"in_stock must be true or false, got {row['in_stock']!r}")
        except ValueError:
            raise row_error(path, line, f"price must be a number, got {row['price']!r}") from None
        except InvalidRequestError as exc:
            raise row_error(path, line, exc.message) from None
        if item_id in items:
            raise row_error(path, line, f"id {item_id!r} appears twice")
        items[item_id] = Item(
            id=item_id,
            title=row[names["title"]][:500],
            description=row[text_col][:5000],
            category=row["category"][:200],
            price=price,
            in_stock=stock not in ("false", "0", "no"),
            extra={"brand": row["brand"]} if row["brand"] else {},
        )
    return items


def read_events_file(path: Path, items: dict[str, Item]) -> dict[str, list[Event]]:
    columns = columns_of(path)
    names = _need(path, columns, ("user", "item", "timestamp"))
    if "type" not in columns:
        raise DataFileError(f"{path}: no column type (view, click, cart, purchase or rating)", path=str(path))
    rows: list[tuple[float, int, Event]] = []
    required = (names["user"], names["item"], "type", names["timestamp"])
    for line, row in read_rows(path, required=required, optional=("value",)):
        try:
            user = parse_id(row[names["user"]], "user")
            item = parse_id(row[names["item"]], "item")
            kind = row["type"].lower()
            if kind not in EVENT_TYPES:
                raise InvalidRequestError(f"type must be one of {', '.join(EVENT_TYPES)}, got {row['type']!r}")
            ts = parse_time(row[names["timestamp"]], FAR_FUTURE)
            value = None
            if kind == "rating":
                if not row["value"]:
                    raise InvalidRequestError("a rating event needs a value")
                value = float(row["value"])
                if not 0 <= value <= 5:
                    raise InvalidRequestError(f"a rating value must be between 0 and 5, got {value:g}")
        except ValueError:
            raise row_error(path, line, f"value must be a number, got {row['value']!r}") from None
        except InvalidRequestError as exc:
            raise row_error(path, line, exc.message) from None
        if item not in items:
            raise row_error(path, line, f"item {item!r} is not in the catalogue")
        rows.append((ts, line, Event(user, item, kind, ts, value)))
    events: dict[str, list[Event]] = {}
    for _, _, e in sorted(rows, key=lambda r: (r[0], r[1])):
        events.setdefault(e.user_id, []).append(e)
    return events


def read_own_files(files: list[Path]) -> OwnCatalogueAndEvents:
    """One catalogue file and one events file, in any order."""
    if len(files) != 2:
        raise DataFileError(
            f"recommend takes two files, a catalogue and events; got {len(files)}: " + ", ".join(p.name for p in files)
        )
    roles = {p: role_of(p) for p in files}
    catalogue = [p for p, r in roles.items() if r == "catalogue"]
    events = [p for p, r in roles.items() if r == "events"]
    if len(catalogue) != 1 or len(events) != 1:
        raise DataFileError(
            "recommend takes one catalogue file (id, title, ...) and one events file (user, item, type, "
            "timestamp); found " + ", ".join(f"{p.name}: {r}" for p, r in roles.items())
        )
    items = read_catalogue_file(catalogue[0])
    by_user = read_events_file(events[0], items)
    data = OwnCatalogueAndEvents(items, by_user, [catalogue[0], events[0]])
    usable = sum(len(s) >= MIN_SEQUENCE for s in data.sequences().values())
    if usable < MIN_USERS:
        raise DataFileError(
            f"{events[0]}: {usable} users touched {MIN_SEQUENCE} or more products; training and its held-out "
            f"check need at least {MIN_USERS} such users",
            path=str(events[0]),
        )
    return data
