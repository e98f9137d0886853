"""RSS/Atom polling: feedparser over httpx, with timeouts, conditional GETs and per-feed backoff.

httpx does the fetching (feedparser's own fetcher has no overall deadline and no size cap): a feed
that hangs fails after ``feed_timeout_s``, one larger than ``feed_max_bytes`` is cut off and refused.
ETag / Last-Modified come back as If-None-Match / If-Modified-Since, so an unchanged feed costs a
304. A feed that fails waits ``feed_backoff_s``, doubling per failure up to ``feed_backoff_max_s``;
the others keep being polled.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import feedparser
import httpx

from apps.sentiment.ingest import IngestResult, normalize_all, store_items
from apps.sentiment.settings import SentimentSettings
from apps.sentiment.store import NewsStore
from core.errors import DomainLLMError, InputTooLargeError

log = logging.getLogger(__name__)
USER_AGENT = "domainllm-sentiment/0.1 (+feed poller)"


class FeedError(DomainLLMError):
    """A feed that could not be fetched or parsed; the poller backs off from it."""

    error_type = "feed_error"


@dataclass
class Fetched:
    content: bytes | None  # None: not modified (304)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class PollResult:
    url: str
    status: str  # ok | not_modified | backing_off | busy | failed
    result: IngestResult = field(default_factory=IngestResult)
    error: str | None = None


def _read_capped(response: httpx.Response, max_bytes: int, deadline: float, url: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise InputTooLargeError(
            f"feed {url} declares {declared} bytes; the limit is {max_bytes}", limit=max_bytes, actual=int(declared)
        )
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise InputTooLargeError(
                f"feed {url} is larger than {max_bytes} bytes; refused", limit=max_bytes, actual=len(body)
            )
        if time.monotonic() > deadline:
            raise FeedError(f"feed {url} is still sending after the deadline; abandoned")
    return bytes(body)


def fetch(client: httpx.Client, url: str, state: dict[str, str], settings: SentimentSettings) -> Fetched:
    """The feed's bytes, or ``Fetched(None)`` when the server says it has not changed."""
    if url.startswith("file:") or "://" not in url:
        path = Path(url.removeprefix("file://").removeprefix("file:"))
        try:
            stat = path.stat()
            if stat.st_size > settings.feed_max_bytes:
                raise InputTooLargeError(
                    f"feed file {path} is larger than {settings.feed_max_bytes} bytes; refused",
                    limit=settings.feed_max_bytes,
                    actual=stat.st_size,
                )
            version = f"{stat.st_mtime_ns}-{stat.st_size}"  # a file's ETag: unchanged files are not re-read
            if state.get("etag") == version:
                return Fetched(None)
            return Fetched(path.read_bytes(), {"content-type": "application/rss+xml", "etag": version})
        except OSError as exc:
            raise FeedError(f"cannot read feed file {path}: {exc.strerror}") from None
    headers = {"User-Agent": USER_AGENT, "Accept": "application/rss+xml, application/atom+xml, application/xml"}
    if state.get("etag"):
        headers["If-None-Match"] = state["etag"]
    if state.get("modified"):
        headers["If-Modified-Since"] = state["modified"]
    deadline = time.monotonic() + settings.feed_timeout_s
    try:
        with client.stream("GET", url, headers=headers, timeout=settings.feed_timeout_s) as response:
            if response.status_code == 304:
                return Fetched(None)
            if response.status_code >= 400:
                raise FeedError(f"feed {url} answered HTTP {response.status_code}")
            content = _read_capped(response, settings.feed_max_bytes, deadline, url)
            return Fetched(content, {k.lower(): v for k, v in response.headers.items()})
    except httpx.TimeoutException as exc:
        raise FeedError(f"feed {url} timed out after {settings.feed_timeout_s:g}s ({type(exc).__name__})") from None
    except httpx.HTTPError as exc:
        raise FeedError(f"feed {url} could not be fetched: {type(exc).__name__}: {exc}") from None


def parse_entries(content: bytes, url: str, headers: dict[str, str] | None = None) -> list[tuple[str, Any]]:
    """Feed bytes -> (where, raw record) pairs; a feed with no readable entries is a ``FeedError``,
    and so is a malformed one whose entries hold no headline at all (a truncated download)."""
    parsed = feedparser.parse(content, response_headers={"content-location": url, **(headers or {})})
    if parsed.bozo and not parsed.entries:
        reason = getattr(parsed, "bozo_exception", "unknown reason")
        raise FeedError(f"feed {url} is malformed: {type(reason).__name__}: {reason}")
    if not parsed.version and not parsed.entries:
        raise FeedError(f"feed {url} is malformed: not an RSS or Atom document")
    if parsed.bozo and not any(e.get("title") for e in parsed.entries):
        raise FeedError(f"feed {url} is malformed and has no usable entries: {parsed.bozo_exception}")
    if parsed.bozo:
        log.warning("feed %s is not well formed (%s); using the %d entries read", url, parsed.bozo_exception,
                    len(parsed.entries))  # fmt: skip
    source = parsed.feed.get("title") or urlsplit(url).netloc or url
    records: list[tuple[str, Any]] = []
    for i, entry in enumerate(parsed.entries):
        when = entry.get("published_parsed") or entry.get("updated_parsed") or entry.get("published")
        records.append(
            (
                f"entry {i}",
                {
                    "title": entry.get("title"),
                    "body": entry.get("summary") or "",
                    "url": entry.get("link") or None,
                    "source": source,
                    "published_at": when,
                },
            )
        )
    return records


def poll_feed(
    store: NewsStore, url: str, settings: SentimentSettings, client: httpx.Client, now: float | None = None
) -> PollResult:
    """Poll one feed unless it is backing off or being polled right now (two beats, a slow poll
    overlapping the next tick); never raises for the feed's own faults."""
    now = time.time() if now is None else now
    if not store.lock_feed(url, settings.feed_timeout_s + 30):
        return PollResult(url, "busy")
    try:
        state = store.feed_state(url)  # read under the lock: the previous poll's ETag is in
        if float(state.get("next_at", 0) or 0) > now:
            return PollResult(url, "backing_off", error=state.get("last_error"))
        return _poll(store, url, settings, client, now, state)
    finally:
        store.unlock_feed(url)


def _poll(
    store: NewsStore, url: str, settings: SentimentSettings, client: httpx.Client, now: float, state: dict[str, str]
) -> PollResult:
    try:
        fetched = fetch(client, url, state, settings)
        if fetched.content is None:
            store.set_feed_state(url, failures=0, next_at=0, last_ok=now, last_status="not_modified")
            return PollResult(url, "not_modified")
        records = parse_entries(fetched.content, url, fetched.headers)
    except DomainLLMError as exc:
        failures = int(state.get("failures", 0) or 0) + 1
        wait = min(settings.feed_backoff_s * 2 ** (failures - 1), settings.feed_backoff_max_s)
        store.set_feed_state(url, failures=failures, next_at=now + wait, last_error=exc.message, last_status="failed")
        log.warning("feed %s failed (%d in a row, next try in %.0fs): %s", url, failures, wait, exc.message)
        return PollResult(url, "failed", error=exc.message)
    items, rejected = normalize_all(records, settings, via="rss", source=urlsplit(url).netloc or "feed")
    result = store_items(store, items, rejected, f"feed {url}")
    store.set_feed_state(
        url,
        failures=0,
        next_at=0,
        last_ok=now,
        last_status="ok",
        etag=fetched.headers.get("etag", ""),
        modified=fetched.headers.get("last-modified", ""),
    )
    return PollResult(url, "ok", result)
