"""News items: one normalised shape for all three ways in, with a stable id.

The id is what makes ingestion idempotent: the same story reached by RSS, a file and the API must
map to the same key. A URL identifies a story best (scheme and host lower-cased, fragment and
tracking parameters dropped); without one, a hash of source + headline + publication time does.

Personal data in an item (a leaked e-mail address, card or phone number in a headline, a body or a
URL's query) is masked here, before the item is stored, enqueued, logged or hashed into its id.
"""

from __future__ import annotations

import calendar
import hashlib
import re
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from apps.http.pii import mask_pii
from core.errors import InputTooLargeError, InvalidRequestError

_TRACKING = re.compile(r"^(utm_\w+|fbclid|gclid|mc_cid|mc_eid)$", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"\s+")
_TAGS = re.compile(r"<[^>]{0,500}>")


@dataclass
class NewsItem:
    id: str
    title: str
    published_at: float  # epoch seconds, UTC: the event time that buckets and windows use
    ingested_at: float = field(default_factory=time.time)
    body: str = ""
    url: str | None = None
    source: str = "unknown"
    via: str = "api"  # api | file | rss | replay

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NewsItem:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    @property
    def text(self) -> str:
        """What the model reads: the headline, which carries the market signal in news feeds."""
        return self.title


def normalize_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in {"http", "https"} or not parts.netloc:
        raise InvalidRequestError(f"url must be an absolute http(s) URL, got {url[:200]!r}")
    query = urlencode(
        [(k, mask_pii(v)) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _TRACKING.match(k)]
    )
    path = parts.path or "/"
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, query, ""))


def stable_id(*, url: str | None, source: str, title: str, published_at: float) -> str:
    """``u…`` from the URL when there is one, else ``h…`` from source + headline + time (to the second)."""
    if url:
        return "u" + hashlib.sha256(url.encode()).hexdigest()[:24]
    key = f"{source.strip().lower()}\n{title.strip().lower()}\n{int(published_at)}"
    return "h" + hashlib.sha256(key.encode()).hexdigest()[:24]


def parse_time(value: Any) -> float:
    """Epoch seconds from an epoch number, an ISO 8601 string (UTC if no zone), an RFC 2822 date
    (RSS), a ``time.struct_time`` (feedparser, UTC) or a ``datetime``."""
    if isinstance(value, bool):
        raise InvalidRequestError(f"not a time: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value / 1000 if value > 1e11 else value)  # milliseconds are common in JSON
    elif isinstance(value, time.struct_time):
        seconds = float(calendar.timegm(value))
    elif isinstance(value, datetime):
        seconds = (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            try:
                dt = parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                raise InvalidRequestError(
                    f"published_at {text[:60]!r} is not a date: use ISO 8601, RFC 2822 or epoch seconds"
                ) from None
        seconds = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
    else:
        raise InvalidRequestError(f"published_at must be a date string or epoch seconds, got {value!r}")
    if not 0 < seconds < 4102444800:  # 1970 .. 2100
        raise InvalidRequestError(f"published_at {value!r} is out of range")
    return seconds


def clean_text(text: str) -> str:
    """Unicode NFC, no control characters or markup, single spaces, personal data masked."""
    text = unicodedata.normalize("NFC", text)
    text = _TAGS.sub(" ", _CONTROL.sub(" ", text))
    return mask_pii(_SPACES.sub(" ", text).strip())


def _check_unicode(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(f"{what} is not valid Unicode (it holds a lone surrogate)") from None


def _too_long(what: str, text: str, limit: int) -> InputTooLargeError:
    return InputTooLargeError(
        f"{what} holds {len(text)} characters; the limit is {limit}", limit=limit, actual=len(text)
    )


def normalize_item(
    raw: dict[str, Any],
    *,
    via: str,
    default_source: str = "unknown",
    max_title_chars: int = 1000,
    max_body_chars: int = 50_000,
    now: float | None = None,
) -> NewsItem:
    """One raw record (API JSON, a JSONL/CSV row, a feed entry) -> a checked ``NewsItem``.

    Raises ``InvalidRequestError`` saying what is wrong: no headline, a huge body, a bad date or URL.
    """
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"an item must be an object, got {type(raw).__name__}")
    title_raw = raw.get("title", raw.get("headline"))
    if not isinstance(title_raw, str) or not title_raw.strip():
        raise InvalidRequestError("the item has no headline: 'title' must be a non-empty string")
    _check_unicode(title_raw, "title")
    if len(title_raw) > max_title_chars * 4:  # checked before cleaning, which is linear but not free
        raise _too_long("title", title_raw, max_title_chars)
    title = clean_text(title_raw)
    if not title:
        raise InvalidRequestError("the item has no headline: 'title' is empty after removing markup")
    if len(title) > max_title_chars:
        raise _too_long("title", title, max_title_chars)
    body_raw = raw.get("body", raw.get("summary")) or ""
    if not isinstance(body_raw, str):
        raise InvalidRequestError("body must be a string")
    if len(body_raw) > max_body_chars:
        raise _too_long("body", body_raw, max_body_chars)
    _check_unicode(body_raw, "body")
    source = raw.get("source") or default_source
    if not isinstance(source, str):
        raise InvalidRequestError("source must be a string")
    source = clean_text(source)[:200] or default_source
    url_raw = raw.get("url") or raw.get("link")
    if url_raw is not None and not isinstance(url_raw, str):
        raise InvalidRequestError("url must be a string")
    url = normalize_url(url_raw) if url_raw else None
    ingested = time.time() if now is None else now
    when = raw.get("published_at", raw.get("published", raw.get("date")))
    published = parse_time(when) if when not in (None, "") else ingested
    client_id = raw.get("id")
    if client_id is not None and not url:
        if not isinstance(client_id, str | int) or not str(client_id).strip() or len(str(client_id)) > 200:
            raise InvalidRequestError("id must be a non-empty string of at most 200 characters")
        item_id = "c" + hashlib.sha256(f"{source.lower()}\n{client_id}".encode()).hexdigest()[:24]
    else:
        item_id = stable_id(url=url, source=source, title=title, published_at=published)
    return NewsItem(
        id=item_id,
        title=title,
        published_at=published,
        ingested_at=ingested,
        body=clean_text(body_raw),
        url=url,
        source=source,
        via=via,
    )
