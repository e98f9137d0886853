"""Sentiment ingestion: stable ids, normalisation, files, the store's idempotency (real embedded
Redis) and POST /v1/sentiment/news, bad inputs included."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from apps.deps import get_sentiment_context
from apps.sentiment.ingest import ingest_file, normalize_all, parse_csv, parse_jsonl, store_items
from apps.sentiment.items import normalize_item, normalize_url, parse_time
from apps.sentiment.service import SentimentContext
from apps.sentiment.settings import SentimentSettings
from apps.sentiment.store import NewsStore
from apps.server import create_app
from core.config import Settings
from core.errors import InputTooLargeError, InvalidRequestError
from core.redis_client import connect
from tests.doubles.servers import KEYED

pytestmark = pytest.mark.unit

ITEM = {
    "title": "Globex shares plunge after fraud probe",
    "url": "https://News.Example.com/globex?utm_source=x#top",
    "source": "Wire",
    "published_at": "2026-11-21T10:02:00Z",
}


@pytest.fixture
def store(redis_url: str) -> NewsStore:
    return NewsStore(connect(redis_url, decode=True), f"t{uuid.uuid4().hex[:8]}")


# ---- items ---------------------------------------------------------------------------------------


def test_same_story_gets_the_same_id_whatever_the_url_decoration() -> None:
    a = normalize_item(ITEM, via="api")
    b = normalize_item({**ITEM, "url": "https://news.example.com/globex", "title": "other words"}, via="rss")
    assert a.id == b.id and a.id.startswith("u")
    assert normalize_url(ITEM["url"]) == "https://news.example.com/globex"


def test_without_url_the_id_is_source_headline_and_time() -> None:
    raw = {k: v for k, v in ITEM.items() if k != "url"}
    a, b = normalize_item(raw, via="api"), normalize_item(dict(raw), via="file")
    assert a.id == b.id and a.id.startswith("h")
    assert normalize_item({**raw, "published_at": "2026-11-21T10:03:00Z"}, via="api").id != a.id


def test_times_in_every_common_shape_agree() -> None:
    expected = parse_time("2026-11-21T10:02:00Z")
    assert parse_time("Sat, 21 Nov 2026 10:02:00 GMT") == expected
    assert parse_time(expected) == expected and parse_time(expected * 1000) == expected
    assert parse_time("2026-11-21T10:02:00") == expected  # no zone: UTC


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"body": "no title"}, "no headline"),
        ({"title": "   "}, "no headline"),
        ({"title": "<b></b>"}, "empty after removing markup"),
        ({"title": "ok", "published_at": "yesterday-ish"}, "not a date"),
        ({"title": "ok", "url": "ftp://x"}, "http(s)"),
        ({"title": "bad \ud800 text"}, "lone surrogate"),
        ("just a string", "must be an object"),
    ],
)
def test_bad_items_are_refused_with_a_clear_reason(raw: object, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        normalize_item(raw, via="api")  # type: ignore[arg-type]


def test_a_huge_body_is_refused_as_too_large() -> None:
    with pytest.raises(InputTooLargeError, match="body holds 10000000 characters"):
        normalize_item({"title": "ok", "body": "x" * 10_000_000}, via="api")


# ---- files ---------------------------------------------------------------------------------------


def test_jsonl_skips_bad_lines_and_keeps_the_rest() -> None:
    data = b'{"title": "good one"}\n\xff\xfe broken bytes\n{not json\n\n{"title": "good two"}\n'
    records = parse_jsonl(data)
    items, rejected = normalize_all(records, SentimentSettings(), via="file", source="f")
    assert [i.title for i in items] == ["good one", "good two"]
    assert [r.where for r in rejected] == ["line 2", "line 3"]
    assert "not UTF-8" in rejected[0].reason and "malformed JSON" in rejected[1].reason


def test_csv_needs_a_title_column() -> None:
    records = parse_csv(b"headline,url\nOil rises,https://x.example/1\n")
    assert records == [("line 2", {"headline": "Oil rises", "url": "https://x.example/1"})]
    with pytest.raises(InvalidRequestError, match="title"):
        parse_csv(b"text,url\nOil rises,https://x.example/1\n")


def test_file_above_the_limit_is_refused_before_reading(store: NewsStore, tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"x" * 5000)
    with pytest.raises(InputTooLargeError, match=r"big\.jsonl is 5000 bytes"):
        ingest_file(store, path, SentimentSettings(max_file_bytes=1024))


# ---- the store -----------------------------------------------------------------------------------


def test_an_item_is_stored_once_however_often_it_comes(store: NewsStore) -> None:
    item = normalize_item(ITEM, via="api")
    first = store_items(store, [item, item], [], "test")  # twice in one batch
    again = store_items(store, [normalize_item(ITEM, via="rss")], [], "test")
    assert (first.accepted, first.duplicates, again.accepted, again.duplicates) == (1, 1, 0, 1)
    assert store.pending() == [item.id]
    assert store.get([item.id])[0]["title"] == ITEM["title"]  # type: ignore[index]
    assert store.stats()["accepted"] == 1


def test_the_sample_feed_files_hold_the_same_items(store: NewsStore) -> None:
    root = Path(__file__).resolve().parents[2] / "data" / "samples" / "news"
    jsonl = ingest_file(store, root / "news.jsonl", SentimentSettings())
    assert jsonl.accepted == 40 and not jsonl.rejected
    from apps.sentiment.feeds import parse_entries

    records = parse_entries((root / "feed.xml").read_bytes(), "file://feed.xml")
    items, rejected = normalize_all(records, SentimentSettings(), via="rss", source="feed")
    assert not rejected and store_items(store, items, [], "rss").duplicates == 40


# ---- POST /v1/sentiment/news ----------------------------------------------------------------------


@pytest.fixture
def client(tiny_settings: Settings, redis_url: str) -> Iterator[TestClient]:
    core = tiny_settings.model_copy(update={"redis_url": redis_url})
    app = create_app(settings=core)
    ctx = SentimentContext.build(
        SentimentSettings(), core, namespace=f"t{uuid.uuid4().hex[:8]}", client=connect(redis_url, decode=True)
    )
    app.dependency_overrides[get_sentiment_context] = lambda: ctx
    with TestClient(app, headers=KEYED) as c:
        yield c


def test_post_one_item_then_a_batch_with_it_again(client: TestClient) -> None:
    r = client.post("/v1/sentiment/news", json=ITEM)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1
    batch = {"items": [ITEM, {"title": "Oil rises 2%", "source": "Wire", "published_at": 1790000000}]}
    body = client.post("/v1/sentiment/news", json=batch).json()
    assert (body["accepted"], body["duplicates"]) == (1, 1)
    assert body["ids"][0] == r.json()["ids"][0]
    item = client.get(f"/v1/sentiment/items/{body['ids'][0]}").json()
    assert item["title"] == ITEM["title"] and item["enrichment"] is None
    assert client.get("/v1/sentiment/stats").json()["accepted"] == 2


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"items": [ITEM, {"body": "x"}]}, 400, "items[1]: the item has no headline"),
        ({"items": []}, 400, "non-empty list"),
        ({"items": [{"title": "t", "body": "x" * 60_000}]}, 413, "items[0]: body holds 60000 characters"),
        ({"title": "t", "published_at": "soon"}, 400, "item: published_at"),
    ],
)
def test_bad_posts_are_4xx_and_store_nothing(client: TestClient, body: dict, status: int, message: str) -> None:
    r = client.post("/v1/sentiment/news", json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]
    assert client.get("/v1/sentiment/stats").json()["accepted"] == 0


def test_non_utf8_and_ten_megabyte_bodies_are_refused(client: TestClient) -> None:
    r = client.post("/v1/sentiment/news", content=b'{"title": "caf\xe9"}', headers={"content-type": "application/json"})
    assert r.status_code in (400, 422) and "error" in r.json()
    big = json.dumps({"title": "t", "body": "x" * 10_000_000})
    r = client.post("/v1/sentiment/news", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]


def test_redis_down_is_a_503_not_a_500(tiny_settings: Settings) -> None:
    from tests.doubles.redis import free_port

    core = tiny_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    app = create_app(settings=core)
    with TestClient(app, headers=KEYED) as c:
        r = c.get("/v1/sentiment/stats")
    assert r.status_code == 503 and r.json()["error"]["type"] == "store_unavailable"


class RecordingDispatcher:
    """Collects what would be sent to the workers (the Celery wiring is tested with a real worker)."""

    def __init__(self) -> None:
        self.enriched: list[list[str]] = []

    def enrich(self, ids: list[str], *, namespace: str, config: str | None = None) -> None:
        self.enriched.append(list(ids))

    def deliver(self, alert_id: str, target: str, *, namespace: str) -> None:
        raise AssertionError("no delivery expected")


def test_new_items_are_queued_and_the_sweeper_requeues_the_stale(redis_url: str, tiny_settings: Settings) -> None:
    dispatcher = RecordingDispatcher()
    core = tiny_settings.model_copy(update={"redis_url": redis_url})
    ctx = SentimentContext.build(SentimentSettings(visibility_timeout_s=60), core, namespace=f"t{uuid.uuid4().hex[:8]}",
                                 client=connect(redis_url, decode=True), dispatcher=dispatcher)  # fmt: skip
    result = ctx.ingest_records([("a", ITEM), ("b", ITEM)], via="api", source="api")
    assert dispatcher.enriched == [result.new_ids] and len(result.new_ids) == 1
    assert ctx.sweep() == 0  # not stale yet
    assert ctx.sweep(now=time.time() + 61) == 1 and dispatcher.enriched[-1] == result.new_ids
