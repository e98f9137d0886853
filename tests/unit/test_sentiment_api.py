"""The /v1/sentiment read and classify routes on the tiny random Llama and a real embedded Redis:
shapes, the base-model fallback said in answers, trends (JSON and PNG), alerts, and bad queries as 4xx."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from apps.deps import get_sentiment_context
from apps.sentiment.items import NewsItem
from apps.sentiment.service import SentimentContext
from apps.sentiment.settings import SentimentSettings
from apps.server import create_app
from core.config import Settings
from core.redis_client import connect
from tests.doubles.servers import KEYED

pytestmark = pytest.mark.unit
ADMIN = {"Authorization": "Bearer test-admin-key"}


@pytest.fixture
def api(tiny_settings: Settings, redis_url: str) -> Iterator[tuple[TestClient, SentimentContext]]:
    core = tiny_settings.model_copy(update={"redis_url": redis_url})
    ctx = SentimentContext.build(
        SentimentSettings(), core, namespace=f"t{uuid.uuid4().hex[:8]}", client=connect(redis_url, decode=True)
    )
    app = create_app(settings=core)
    app.dependency_overrides[get_sentiment_context] = lambda: ctx
    with TestClient(app, headers=KEYED) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield client, ctx


def burst(ctx: SentimentContext, now: float) -> None:
    for i in range(8):
        item = NewsItem(id=f"n{i}", title=f"Globex falls {i}", url=f"https://x.example/{i}", published_at=now - 600 + i)
        ctx.store.add([item])
        ctx.store.commit_enrichment(item, {"label": "negative", "scores": {"negative": 0.9}, "entities_keys": ["GLBX"],
                                           "topic_keys": []}, ctx.config.bucket_s)  # fmt: skip


def test_classify_says_base_and_explains(api: tuple[TestClient, SentimentContext]) -> None:
    client, _ = api
    r = client.post("/v1/sentiment/classify", json={"texts": ["Globex shares plunge after a lawsuit"], "explain": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "base" and body["topic_method"].startswith("embedding")
    (result,) = body["results"]
    assert result["entities"] == [{"ticker": "GLBX", "name": "Globex"}]
    assert set(result["scores"]) == {"negative", "neutral", "positive"} and result["label"] in result["scores"]
    assert [w["word"] for w in result["explanation"]] == ["Globex", "shares", "plunge", "after", "a", "lawsuit"]
    assert client.post("/v1/sentiment/classify", json={"texts": ["  "]}).status_code == 400
    assert client.post("/v1/sentiment/classify", json={"texts": []}).status_code == 422
    many = client.post("/v1/sentiment/classify", json={"texts": ["a b"] * 9, "explain": True})
    assert many.status_code == 400 and "at most 8 texts" in many.json()["error"]["message"]


def test_trends_alerts_and_chart(api: tuple[TestClient, SentimentContext]) -> None:
    client, ctx = api
    now = time.time()
    burst(ctx, now)
    (alert,) = ctx.monitor(now)
    r = client.get("/v1/sentiment/trends", params={"entity": "GLBX", "window": "2h"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scope"] == "entity:GLBX" and sum(p["negative"] for p in body["series"]) == 8
    assert [a["id"] for a in body["alerts"]] == [alert.id]
    png = client.get("/v1/sentiment/trends.png", params={"entity": "GLBX", "window": "2h"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    alerts = client.get("/v1/sentiment/alerts", params={"entity": "GLBX"}).json()["alerts"]
    assert [a["id"] for a in alerts] == [alert.id] and alerts[0]["items"][0]["url"].startswith("https://x.example/")
    assert client.get(f"/v1/sentiment/alerts/{alert.id}").json()["rule"] == "negative_share_z"
    assert client.get("/v1/sentiment/alerts", params={"topic": "earnings"}).json()["alerts"] == []


@pytest.mark.parametrize(
    ("path", "params", "status", "message"),
    [
        ("/v1/sentiment/trends", {"window": "soon"}, 400, "not a duration"),
        ("/v1/sentiment/trends", {"topic": "a", "entity": "b"}, 400, "not both"),
        ("/v1/sentiment/trends", {"window": "7d", "step": "1m"}, 400, "multiple of the bucket"),
        ("/v1/sentiment/trends", {"window": "7d", "step": "5m"}, 400, "more than 500 points"),
        ("/v1/sentiment/trends", {"end": "not-a-date"}, 400, "not a date"),
        ("/v1/sentiment/alerts/al_nope", {}, 404, "no alert"),
        ("/v1/sentiment/items/nope", {}, 404, "no item"),
    ],
)
def test_bad_queries_are_4xx(api: tuple[TestClient, SentimentContext], path: str, params: dict, status: int,
                             message: str) -> None:  # fmt: skip
    client, _ = api
    r = client.get(path, params=params)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]


def test_resend_needs_the_admin_key_and_a_real_alert(api: tuple[TestClient, SentimentContext]) -> None:
    client, ctx = api
    assert client.post("/v1/sentiment/alerts/al_nope/resend", headers={"X-Api-Key": ""}).status_code == 401
    assert client.post("/v1/sentiment/alerts/al_nope/resend", headers=ADMIN).status_code == 404
    now = time.time()
    burst(ctx, now)
    (alert,) = ctx.monitor(now)
    r = client.post(f"/v1/sentiment/alerts/{alert.id}/resend", headers=ADMIN)
    assert r.status_code == 200 and r.json()["queued"] == [{"alert_id": alert.id, "target": "log"}]  # never sent yet


@pytest.mark.parametrize("explain", [0, 1, "yes", "true"])
def test_a_boolean_must_be_a_json_boolean(api: tuple[TestClient, SentimentContext], explain: object) -> None:
    client, _ = api
    r = client.post("/v1/sentiment/classify", json={"texts": ["Globex shares plunge"], "explain": explain})
    assert r.status_code == 422 and "explain" in r.json()["error"]["message"], r.text
