"""Feed polling against a real HTTP server on loopback: conditional GETs, and each bad feed (malformed,
hanging, non-UTF-8, an entry without a headline, a 10 MB body) logged and skipped or refused while
the other feeds keep being polled. No model needed."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from apps.sentiment.feeds import poll_feed
from apps.sentiment.service import SentimentContext
from apps.sentiment.settings import SentimentSettings
from apps.sentiment.store import NewsStore
from core.config import Settings
from core.redis_client import connect
from tests.doubles.sentiment import FeedServer

pytestmark = pytest.mark.integration


def rss(*entries: str, encoding: str = "UTF-8") -> str:
    return f'<?xml version="1.0" encoding="{encoding}"?><rss version="2.0"><channel><title>W</title>{"".join(entries)}</channel></rss>'


def entry(title: str | None, link: str, body: str = "") -> str:
    t = f"<title>{title}</title>" if title is not None else ""
    return f"<item>{t}<link>{link}</link><description>{body}</description><pubDate>Sat, 21 Nov 2026 10:00:00 GMT</pubDate></item>"


@pytest.fixture
def server() -> Iterator[FeedServer]:
    with FeedServer() as s:
        yield s  # type: ignore[misc]


@pytest.fixture
def store(redis_url: str) -> NewsStore:
    return NewsStore(connect(redis_url, decode=True), f"t{uuid.uuid4().hex[:8]}")


SETTINGS = SentimentSettings(feed_timeout_s=1.5, feed_backoff_s=30, feed_max_bytes=2_000_000)


def test_good_feed_then_not_modified(server: FeedServer, store: NewsStore) -> None:
    url = server.set(
        "/a.xml", rss(entry("Oil rises", "https://x.example/1"), entry("Gold falls", "https://x.example/2")).encode()
    )
    with httpx.Client() as client:
        first = poll_feed(store, url, SETTINGS, client)
        second = poll_feed(store, url, SETTINGS, client)
    assert (first.status, first.result.accepted) == ("ok", 2)
    assert second.status == "not_modified"
    assert server.requests[-1][1].get("If-None-Match")  # the ETag went back


def test_a_feed_file_is_read_again_only_when_it_changes(store: NewsStore, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "feed.xml"
    path.write_text(rss(entry("Zinc rallies", "https://x.example/z")))
    with httpx.Client() as client:
        assert poll_feed(store, str(path), SETTINGS, client).result.accepted == 1
        assert poll_feed(store, str(path), SETTINGS, client).status == "not_modified"
        path.write_text(rss(entry("Zinc rallies", "https://x.example/z"), entry("Lead slips", "https://x.example/l")))
        again = poll_feed(store, str(path), SETTINGS, client)
    assert (again.status, again.result.accepted, again.result.duplicates) == ("ok", 1, 1)


def test_a_feed_being_polled_is_not_polled_twice_at_once(server: FeedServer, store: NewsStore) -> None:
    url = server.set("/b.xml", rss(entry("Tin slides", "https://x.example/t")).encode())
    assert store.lock_feed(url, 30)  # another poll (a second beat's tick) holds it
    with httpx.Client() as client:
        assert poll_feed(store, url, SETTINGS, client).status == "busy"
        store.unlock_feed(url)
        assert poll_feed(store, url, SETTINGS, client).status == "ok"
    assert not server.requests[:-1]  # the busy poll fetched nothing


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        ("/broken.xml", b"<rss><channel><item><title>half", "malformed"),
        ("/html.xml", b"<html><body>Not a feed</body></html>", "malformed"),
        ("/huge.xml", rss(entry("t", "https://x.example/h", "x" * 10_000_000)).encode(), "the limit is 2000000"),
    ],
)
def test_bad_feeds_are_refused_logged_and_backed_off(
    server: FeedServer, store: NewsStore, path: str, body: bytes, error: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = server.set(path, body)
    with caplog.at_level(logging.WARNING), httpx.Client() as client:
        result = poll_feed(store, url, SETTINGS, client)
        again = poll_feed(store, url, SETTINGS, client)
    assert result.status == "failed" and error in (result.error or "")
    assert again.status == "backing_off"  # no hammering of a broken feed
    assert any(error in r.getMessage() for r in caplog.records)
    assert store.feed_state(url)["failures"] == "1"


def test_hanging_feed_times_out_and_others_still_poll(
    server: FeedServer, redis_url: str, tiny_settings: Settings
) -> None:
    server.hang["/hang.xml"] = 30
    good = server.set("/good.xml", rss(entry("Copper jumps", "https://x.example/c")).encode())
    settings = SETTINGS.model_copy(update={"namespace": f"t{uuid.uuid4().hex[:8]}"})
    ctx = SentimentContext.build(settings, tiny_settings, client=connect(redis_url, decode=True))
    started = time.monotonic()
    results = ctx.poll_feeds([server.url + "/hang.xml", good])
    assert time.monotonic() - started < 10
    assert results[0].status == "failed" and "timed out" in (results[0].error or "")
    assert results[1].status == "ok" and results[1].result.accepted == 1


def test_non_utf8_and_headline_less_entries(
    server: FeedServer, store: NewsStore, caplog: pytest.LogCaptureFixture
) -> None:
    latin1 = rss(entry("Caf\xe9 chain shares slide", "https://x.example/l"), encoding="ISO-8859-1").encode("latin-1")
    url1 = server.set("/latin1.xml", latin1, "application/rss+xml; charset=ISO-8859-1")
    # bytes that are not valid in the declared UTF-8, and one entry with no headline
    raw = rss(entry("Good one", "https://x.example/g"), entry(None, "https://x.example/none")).encode()
    raw = raw.replace(b"Good one", b"Good \xff\xfe one")
    url2 = server.set("/bad-bytes.xml", raw)
    with caplog.at_level(logging.WARNING), httpx.Client() as client:
        declared = poll_feed(store, url1, SETTINGS, client)
        bad = poll_feed(store, url2, SETTINGS, client)
    assert declared.status == "ok" and declared.result.accepted == 1  # a declared charset is honoured
    (record,) = store.get(declared.result.new_ids)
    assert record is not None and record["title"] == "Café chain shares slide"
    # bytes that are not the declared UTF-8: feedparser re-reads the feed as windows-1252 (logged as not
    # well formed) and its readable entry goes on; the headline-less entry is skipped and logged
    assert bad.status == "ok" and bad.result.accepted == 1
    assert [r.reason for r in bad.result.rejected] == ["the item has no headline: 'title' must be a non-empty string"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("not well formed" in m and "declared as utf-8" in m for m in messages)
    assert any("skipped entry 1: the item has no headline" in m for m in messages)
