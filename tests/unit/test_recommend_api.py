"""/v1/recommend end to end on a tiny random Llama, a real embedded Redis and a bag-of-words
embedder: the rules a storefront relies on (bought, out of stock, new items, new users) and the
refusals (bad input gets a clear 4xx and stores nothing)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from apps.deps import get_recommend_service
from apps.recommend.service import RecommendService
from apps.recommend.settings import RecommendSettings
from apps.server import create_app
from core.engine import LocalEngine
from tests.doubles.recommend import HashEmbedder
from tests.doubles.servers import KEYED

pytestmark = pytest.mark.unit

ADMIN = {"X-Admin-Key": "test-admin-key"}
NO_KEY = {"X-Api-Key": ""}


def server_key(client: TestClient) -> dict[str, str]:
    """Headers with a fresh server-scoped key of the default tenant (it may not change the catalogue)."""
    r = client.post("/v1/keys", json={"scope": "server", "label": "storefront"})
    assert r.status_code == 201, r.text
    return {"X-Api-Key": r.json()["key"]}


PRODUCTS = {
    "running": ["trail running shoe", "road running shoe", "running socks", "running jacket", "running cap"],
    "coffee": ["espresso beans", "filter coffee beans", "coffee grinder", "french press", "milk frother"],
    "kitchen": ["chef knife", "cutting board", "cast iron pan", "saucepan", "kitchen scale"],
    "books": ["mystery novel", "science fiction novel", "cookbook", "travel guide", "history book"],
    "garden": ["garden hose", "pruning shears", "flower seeds", "watering can", "garden gloves"],
    "tea": ["green tea", "black tea", "herbal tea", "tea pot", "tea strainer"],
}


def serve(app: FastAPI, service: RecommendService) -> None:
    """Route the app's recommend dependency to ``service`` (a test's own Redis and settings)."""
    app.dependency_overrides[get_recommend_service] = lambda: service


def catalogue() -> list[dict[str, Any]]:
    items = []
    for category, titles in PRODUCTS.items():
        for n, title in enumerate(titles):
            items.append(
                {
                    "id": f"{category}-{n}",
                    "title": title.title(),
                    "description": f"A {title} for {category} lovers.",
                    "category": category,
                    "tags": [category, title.split()[-1]],
                    "price": 10.0 + 7 * n,
                    "in_stock": True,
                }
            )
    return items


def make_service(redis_url: str, tmp_path: Path, engine: LocalEngine | None, **overrides: Any) -> RecommendService:
    settings = RecommendSettings(
        namespace=f"t{uuid.uuid4().hex[:8]}",
        ranker_path=tmp_path / "no-ranker.json",
        llm_candidates=20,
        **overrides,
    )
    return RecommendService(settings, redis.Redis.from_url(redis_url), HashEmbedder(), lambda: engine)


@pytest.fixture
def client(tiny_settings: Any, tiny_engine: LocalEngine, redis_url: str, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(tiny_settings.model_copy(update={"redis_url": redis_url}), engine=tiny_engine)
    # shown items are kept off for these tests so each rule is seen on its own (one test turns it on)
    serve(app, make_service(redis_url, tmp_path, tiny_engine, exclude_shown=False))
    with TestClient(app, headers=KEYED) as c:
        deadline = time.monotonic() + 30
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        r = c.post("/v1/recommend/items", json={"items": catalogue()}, headers=ADMIN)
        assert r.status_code == 200, r.text
        yield c


def events(c: TestClient, *rows: tuple[str, str, str]) -> None:
    body = {"events": [{"user_id": u, "item_id": i, "type": t} for u, i, t in rows]}
    r = c.post("/v1/recommend/events", json=body)
    assert r.status_code == 200, r.text


def crowd(c: TestClient) -> None:
    """Some other shoppers, so popularity and co-visitation have something to say."""
    for n in range(6):
        events(
            c,
            (f"crowd{n}", "coffee-0", "view"),
            (f"crowd{n}", "coffee-2", "click"),
            (f"crowd{n}", "coffee-3", "purchase"),
            (f"crowd{n}", f"books-{n % 5}", "view"),
        )


def recommend(c: TestClient, user: str, **params: Any) -> dict[str, Any]:
    r = c.get(f"/v1/recommend/{user}", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def ids(body: dict[str, Any]) -> list[str]:
    return [i["item_id"] for i in body["items"]]


# ---- what a storefront relies on -----------------------------------------------------------------


def test_a_purchase_posted_now_removes_that_item_from_the_next_response(client: TestClient) -> None:
    crowd(client)
    events(client, ("alice", "coffee-0", "view"), ("alice", "coffee-1", "click"))
    first = recommend(client, "alice", k=10)
    assert first["items"], first
    bought = first["items"][0]["item_id"]
    events(client, ("alice", bought, "purchase"))
    second = recommend(client, "alice", k=10)
    assert bought not in ids(second)
    assert second["items"]


def test_a_user_known_by_personal_data_is_stored_under_a_pseudonym(client: TestClient) -> None:
    crowd(client)
    email = "jane.doe@example.com"
    events(client, (email, "coffee-0", "view"), (email, "coffee-1", "purchase"))
    r = client.post("/v1/recommend/events/bulk", content=f"user_id,item_id,type\n{email},tea-0,purchase",
                    headers={"Content-Type": "text/csv"})  # fmt: skip
    assert r.json()["accepted"] == 1, r.text
    body = recommend(client, email, k=30)
    assert body["user_id"] == email and not body["cold_start"]  # the history is found again
    assert not {"coffee-1", "tea-0"} & set(ids(body))  # and so are the purchases
    service: RecommendService = client.app.dependency_overrides[get_recommend_service]()  # type: ignore[attr-defined]
    keys = [k.decode() for k in service.client.scan_iter(match=f"{service.ns}:*")]
    stored = [k for k in keys if ":u:pseudo-" in k]
    assert stored and not [k for k in keys if "example.com" in k]
    assert all("example.com" not in e.to_json() for e in service.signals.logged_events())
    events(client, ("alice", "coffee-0", "view"))
    assert service.client.exists(f"{service.ns}:u:alice:h")  # an opaque id is kept as it is


def test_an_out_of_stock_item_never_appears(client: TestClient) -> None:
    crowd(client)
    out = [i for i in catalogue() if i["category"] in {"coffee", "books"}]
    r = client.post("/v1/recommend/items", json={"items": [{**i, "in_stock": False} for i in out]}, headers=ADMIN)
    assert r.json() == {"added": 0, "updated": len(out), "rejected": 0, "errors": []}
    gone = {i["id"] for i in out}
    events(client, ("bob", "coffee-0", "view"), ("bob", "coffee-2", "click"))
    for user, params in [
        ("bob", {"k": 100}),
        ("newcomer", {"k": 100}),
        ("bob", {"k": 5, "context_item": "coffee-1"}),
        ("bob", {"k": 5, "category": "coffee"}),
    ]:
        body = recommend(client, user, **params)
        assert not gone & set(ids(body)), (user, params, ids(body))


def test_a_new_item_appears_for_a_matching_user_within_one_request(client: TestClient) -> None:
    crowd(client)
    events(client, ("carol", "running-0", "view"), ("carol", "running-1", "click"), ("carol", "running-3", "cart"))
    assert "running-new" not in ids(recommend(client, "carol", k=5))
    new = {
        "id": "running-new",
        "title": "Trail Running Shoe Ultralight",
        "description": "A trail running shoe for running lovers.",
        "category": "running",
        "tags": ["running", "shoe"],
        "price": 120,
    }
    assert client.post("/v1/recommend/items", json={"items": [new]}, headers=ADMIN).json()["added"] == 1
    body = recommend(client, "carol", k=5)
    assert "running-new" in ids(body)
    [hit] = [i for i in body["items"] if i["item_id"] == "running-new"]
    assert hit["reason"].startswith("because you"), hit


def test_a_new_user_gets_a_sensible_non_empty_list(client: TestClient) -> None:
    crowd(client)
    body = recommend(client, "someone-new", k=6)
    assert body["cold_start"] is True and len(body["items"]) == 6
    assert "coffee-3" in ids(body)  # the most bought item
    assert len({i["category"] for i in body["items"]}) >= 3  # spread out, not six of one kind
    assert all(i["reason"] for i in body["items"])
    in_tea = recommend(client, "someone-new2", k=3, category="tea")
    assert {i["category"] for i in in_tea["items"]} == {"tea"} and len(in_tea["items"]) == 3
    on_page = recommend(client, "someone-new3", k=3, context_item="kitchen-0")
    assert "kitchen-0" not in ids(on_page)
    assert any(i["reason"].startswith("similar to Chef Knife") for i in on_page["items"]), on_page


def test_the_llm_scores_with_the_adapter_when_present_else_the_base(
    tiny_settings: Any, tiny_engine: LocalEngine, redis_url: str, tmp_path: Path
) -> None:
    app = create_app(tiny_settings, engine=tiny_engine)
    for adapter, expected in [("alpha", "alpha"), ("recommend", "base")]:
        serve(app, make_service(redis_url, tmp_path, tiny_engine, adapter=adapter))
        with TestClient(app, headers=KEYED) as c:
            c.post("/v1/recommend/items", json={"items": catalogue()}, headers=ADMIN)
            events(c, ("dave", "tea-0", "view"))
            body = recommend(c, "dave", k=3)
        assert body["model"] == expected and body["ranker"] == "fallback"
    serve(app, make_service(redis_url, tmp_path, None))  # the engine still loading
    with TestClient(app, headers=KEYED) as c:
        c.post("/v1/recommend/items", json={"items": catalogue()}, headers=ADMIN)
        events(c, ("dave", "tea-0", "view"))
        body = recommend(c, "dave", k=3)
    assert body["model"] == "none" and len(body["items"]) == 3


def test_items_shown_recently_are_not_shown_again(
    tiny_settings: Any, tiny_engine: LocalEngine, redis_url: str, tmp_path: Path
) -> None:
    app = create_app(tiny_settings.model_copy(update={"redis_url": redis_url}), engine=tiny_engine)
    serve(app, make_service(redis_url, tmp_path, tiny_engine, exclude_shown=True))
    with TestClient(app, headers=KEYED) as c:
        c.post("/v1/recommend/items", json={"items": catalogue()}, headers=ADMIN)
        first, again = recommend(c, "erin", k=5), recommend(c, "erin", k=5)
        assert ids(first) == ids(again)  # a GET changes nothing
        shown = c.post("/v1/recommend/impressions", json={"recommendation_id": first["recommendation_id"]})
        assert shown.status_code == 200 and shown.json()["recorded"] == 5, shown.text
        twice = c.post("/v1/recommend/impressions", json={"recommendation_id": first["recommendation_id"]})
        assert twice.json() == {"recorded": 0, "already": 5, "user_id": "erin"}
        second = recommend(c, "erin", k=5)
        bad = c.post("/v1/recommend/impressions", json={"recommendation_id": "nope"})
        stranger = c.post(
            "/v1/recommend/impressions",
            json={"recommendation_id": first["recommendation_id"], "item_ids": ["not-listed"]},
        )
    assert len(second["items"]) == 5 and not set(ids(first)) & set(ids(second))
    assert bad.status_code == 404 and stranger.status_code == 400


def test_feedback_is_attributed_once_and_stats_give_ctr_by_source(client: TestClient) -> None:
    crowd(client)
    events(client, ("frank", "tea-0", "view"))
    body = recommend(client, "frank", k=4)
    rid, item = body["recommendation_id"], body["items"][0]
    assert client.post("/v1/recommend/impressions", json={"recommendation_id": rid}).status_code == 200
    fb = {"recommendation_id": rid, "item_id": item["item_id"], "type": "click"}
    assert client.post("/v1/recommend/feedback", json=fb).json() == {
        "attributed": True,
        "source": item["source"],
        "user_id": "frank",
    }
    assert client.post("/v1/recommend/feedback", json=fb).json()["attributed"] is False
    stats = client.get("/v1/recommend/stats").json()
    source = stats["sources"][item["source"]]
    assert source["clicks"] == 1 and source["impressions"] >= 1
    assert source["ctr"] == pytest.approx(1 / source["impressions"])
    assert sum(s["impressions"] for s in stats["sources"].values()) == 4
    r = client.post("/v1/recommend/feedback", json={**fb, "recommendation_id": "nope"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "unknown_recommendation"
    other = next(i for i in catalogue() if i["id"] not in ids(body))["id"]
    assert client.post("/v1/recommend/feedback", json={**fb, "item_id": other}).status_code == 400
    # a purchase through feedback also enters the history: the item is excluded from then on
    client.post("/v1/recommend/feedback", json={**fb, "type": "purchase"})
    assert item["item_id"] not in ids(recommend(client, "frank", k=20))


def test_deleted_items_are_gone_and_unknown_ids_reported(client: TestClient) -> None:
    r = client.delete("/v1/recommend/items", params={"ids": ["tea-0", "tea-1", "ghost"]}, headers=ADMIN)
    assert r.json() == {"deleted": ["tea-0", "tea-1"], "unknown": ["ghost"]}
    assert not {"tea-0", "tea-1"} & set(ids(recommend(client, "gina", k=100)))
    assert (
        client.delete("/v1/recommend/items", params={"ids": ["tea-2"]}, headers=server_key(client)).status_code == 403
    )


def test_filters_category_price_exclude_and_mmr(client: TestClient) -> None:
    crowd(client)
    body = recommend(client, "hank", k=10, price_min=15, price_max=30, exclude="coffee-3,books-1")
    assert body["items"] and all(15 <= i["price"] <= 30 for i in body["items"])
    assert not {"coffee-3", "books-1"} & set(ids(body))
    assert all(i["category"] == "garden" for i in recommend(client, "hank", k=10, category="Garden")["items"])


# ---- bad input: a clear 4xx, and nothing stored changes ------------------------------------------


def state(c: TestClient) -> tuple[Any, ...]:
    service: RecommendService = c.app.dependency_overrides[get_recommend_service]()  # type: ignore[attr-defined]
    return (
        [e.to_json() for e in service.signals.history("ivy")],
        service.client.zrange(f"{service.ns}:pop", 0, -1, withscores=True),
        len(service.catalogue.sync()),
        service.client.get(f"{service.ns}:version"),
    )


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"user_id": "ivy", "item_id": "no-such-item", "type": "view"}, 404, "unknown item 'no-such-item'"),
        ({"events": [{"user_id": "ivy", "item_id": "tea-0", "type": "view"},
                     {"user_id": "ivy", "item_id": "ghost", "type": "view"}]}, 404, "events[1]: unknown item"),
        ({"events": [{"user_id": "ivy", "item_id": "tea-0", "type": "view"},
                     {"user_id": "ivy", "item_id": "tea-1", "type": "like"}]}, 422, "events[1].type"),
        ({"user_id": "ivy", "item_id": "tea-0", "type": "rating"}, 400, "a rating event needs a value"),
        ({"user_id": "ivy", "item_id": "tea-0", "type": "rating", "value": 9}, 400, "between 0 and 5"),
        ({"user_id": "ivy", "item_id": "tea-0", "type": "view", "ts": "yesterday"}, 400, "ts must be"),
        ({"user_id": "ivy", "item_id": "tea-0", "type": "view", "ts": time.time() + 9e6}, 400, "in the future"),
        ({"user_id": "ivy bad", "item_id": "tea-0", "type": "view"}, 400, "user_id must be"),
        ({"item_id": "tea-0", "type": "view"}, 422, "user_id"),
        ({"events": []}, 422, "events"),
        ({"user_id": "ivy", "item_id": "tea-0", "type": "view", "extra": 1}, 422, "extra"),
    ],
)  # fmt: skip
def test_malformed_or_unknown_events_are_refused_and_store_nothing(
    client: TestClient, body: dict[str, Any], status: int, needle: str
) -> None:
    before = state(client)
    r = client.post("/v1/recommend/events", json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]
    assert state(client) == before


def test_broken_json_and_oversized_batches_are_refused(client: TestClient) -> None:
    before = state(client)
    r = client.post(
        "/v1/recommend/events", content=b'{"user_id": "ivy", ', headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    many = {"events": [{"user_id": "ivy", "item_id": "tea-0", "type": "view"}] * 1001}
    r = client.post("/v1/recommend/events", json=many)
    assert r.status_code == 413 and "limit is 1000" in r.json()["error"]["message"]
    assert state(client) == before


@pytest.mark.parametrize("k", [0, -1, 101, 10_000])
def test_k_out_of_range_is_a_400(client: TestClient, k: int) -> None:
    r = client.get("/v1/recommend/ivy", params={"k": k})
    assert r.status_code == 400 and "k must be between 1 and 100" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("params", "status", "needle"),
    [
        ({"k": "ten"}, 422, "k"),
        ({"context_item": "ghost"}, 404, "unknown context_item"),
        ({"price_min": 50, "price_max": 10}, 400, "price_min"),
        ({"price_min": -1}, 422, "price_min"),
        ({"mmr_lambda": 2}, 422, "mmr_lambda"),
    ],
)
def test_bad_query_parameters_are_4xx(client: TestClient, params: dict[str, Any], status: int, needle: str) -> None:
    r = client.get("/v1/recommend/ivy", params=params)
    assert r.status_code == status and needle in r.json()["error"]["message"]


def test_unknown_users_are_cold_start_not_errors(client: TestClient) -> None:
    body = recommend(client, f"never-seen-{uuid.uuid4().hex[:6]}", k=3)
    assert body["cold_start"] is True and len(body["items"]) == 3


def test_a_catalogue_file_with_broken_rows_ingests_the_good_ones_and_reports_the_rest(client: TestClient) -> None:
    csv_text = (
        "id,title,category,price,in_stock,tags\n"
        "new-1,Bamboo Cutting Board,kitchen,19.5,true,kitchen|board\n"
        "new-2,,kitchen,10,true,\n"  # no title
        "new-3,Ceramic Mug,kitchen,abc,true,\n"  # price not a number
        "new-4,Linen Apron,kitchen,-3,true,\n"  # negative price
        "new 5,Steel Whisk,kitchen,5,true,\n"  # bad id
        "new-6,Glass Jar,kitchen,4,maybe,\n"  # stock not a boolean
        "new-7,Oven Mitt,kitchen,8,false,kitchen\n"
        "new-8,Too,Many,Fields,1,true,x,y\n"
    )
    headers = {**ADMIN, "Content-Type": "text/csv"}
    r = client.post("/v1/recommend/items/bulk", content=csv_text.encode(), headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["added"], body["rejected"]) == (2, 6)
    reasons = {e["where"]: e["reason"] for e in body["errors"]}
    assert reasons["line 3"] == "title is required"
    assert "price must be a number" in reasons["line 4"]
    assert "price must not be negative" in reasons["line 5"]
    assert "id must be" in reasons["line 6"]
    assert "in_stock must be true or false" in reasons["line 7"]
    assert "more fields" in reasons["line 9"]
    service: RecommendService = client.app.dependency_overrides[get_recommend_service]()  # type: ignore[attr-defined]
    index = service.catalogue.sync()
    assert "new-1" in index and "new-7" in index and not index.items["new-7"].in_stock
    assert index.items["new-1"].tags == ("kitchen", "board")
    jsonl = '{"id": "j-1", "title": "Moka Pot", "category": "coffee"}\n{not json}\n{"id": "j-2"}\n'
    r = client.post(
        "/v1/recommend/items/bulk", content=jsonl.encode(), headers={**ADMIN, "Content-Type": "application/x-ndjson"}
    )
    assert r.json()["added"] == 1 and [e["where"] for e in r.json()["errors"]] == ["line 2", "line 3"]
    r = client.post("/v1/recommend/items/bulk", content=b"x", headers={**ADMIN, "Content-Type": "text/plain"})
    assert r.status_code == 400 and "text/csv" in r.json()["error"]["message"]


def test_item_batches_via_json_are_all_or_nothing(client: TestClient) -> None:
    before = state(client)
    bad = {"items": [{"id": "ok-1", "title": "Fine"}, {"id": "bad id", "title": "Broken"}]}
    r = client.post("/v1/recommend/items", json=bad, headers=ADMIN)
    assert r.status_code == 400 and "items[1]: id must be" in r.json()["error"]["message"]
    r = client.post("/v1/recommend/items", json={"items": [{"id": "x", "title": "Neg", "price": -1}]}, headers=ADMIN)
    assert r.status_code == 422 and "price" in r.json()["error"]["message"]
    assert (
        client.post("/v1/recommend/items", json={"items": [{"id": "y", "title": "No key"}]}, headers=NO_KEY).status_code
        == 401
    )
    assert state(client) == before


def test_redis_down_is_a_503_not_a_500(tiny_settings: Any, tiny_engine: LocalEngine, tmp_path: Path) -> None:
    app = create_app(tiny_settings, engine=tiny_engine)
    serve(app, make_service("redis://127.0.0.1:1/0", tmp_path, tiny_engine))
    with TestClient(app, headers=KEYED) as c:
        r = c.get("/v1/recommend/anyone")
    assert r.status_code == 503 and r.json()["error"]["type"] == "store_unavailable"


@pytest.mark.parametrize(
    ("exclude_types", "excluded"), [(["purchase"], True), (["purchase", "cart"], True), ([], False)]
)
def test_purchases_stay_excluded_after_they_leave_the_recent_history(
    tiny_settings: Any,
    tiny_engine: LocalEngine,
    redis_url: str,
    tmp_path: Path,
    exclude_types: list[str],
    excluded: bool,
) -> None:
    app = create_app(tiny_settings, engine=tiny_engine)
    serve(
        app,
        make_service(
            redis_url, tmp_path, tiny_engine, exclude_shown=False, history_len=2, exclude_event_types=exclude_types
        ),
    )
    with TestClient(app, headers=KEYED) as c:
        c.post("/v1/recommend/items", json={"items": catalogue()}, headers=ADMIN)
        events(c, ("jo", "garden-0", "purchase"), ("jo", "garden-1", "cart"))
        events(c, ("jo", "tea-0", "view"), ("jo", "tea-1", "view"), ("jo", "tea-2", "view"))
        shown = ids(recommend(c, "jo", k=100))
    assert ("garden-0" not in shown) is excluded
    assert ("garden-1" not in shown) is ("cart" in exclude_types)


def test_a_busy_engine_ranks_without_the_llm_at_once_rather_than_failing(
    tiny_settings: Any, tiny_engine: LocalEngine, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's queue full (or the LLM past DOMAINLLM_RECOMMEND_LLM_DEADLINE_S): the storefront still
    gets its items, ranked by the other signals, and `model: none` says so."""
    from core.errors import EngineOverloadedError

    def full(*_: Any, **__: Any) -> Any:
        raise EngineOverloadedError("the engine has about 30 s of work queued", retry_after_s=20)

    monkeypatch.setattr(tiny_engine, "submit_score_continuations", full)
    app = create_app(tiny_settings, engine=tiny_engine)
    serve(app, make_service(redis_url, tmp_path, tiny_engine, adapter="alpha"))
    with TestClient(app, headers=KEYED) as c:
        c.post("/v1/recommend/items", json={"items": catalogue()}, headers=ADMIN)
        events(c, ("erin", "tea-0", "view"))
        body = recommend(c, "erin", k=3)
    assert body["model"] == "none" and len(body["items"]) == 3
