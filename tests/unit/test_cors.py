"""CORS per tenant (apps/http/cors.py, the origins index in apps/tenants/store.py): a browser's
preflight carries no key, so an origin passes when the settings list it or some tenant does; the
index follows create_tenant and set_origins; each replica keeps an answer for DOMAINLLM_CORS_CACHE_S;
with Redis down only the settings' origins pass."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from apps.http.cors import TenantCORSMiddleware, TenantOrigins
from apps.server import create_app
from apps.settings import AppSettings
from apps.tenants.store import TenantStore
from core.engine import LocalEngine

pytestmark = pytest.mark.unit

OPERATOR = "test-operator-key"
SHOP = "https://shop.acme.test"
ACAO = "access-control-allow-origin"


def preflight(c: TestClient, origin: str, path: str = "/v1/support/sessions", headers: str = "content-type") -> Any:
    return c.options(
        path,
        headers={"Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": headers},
    )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def make_client(tiny_settings: Any, tiny_engine: LocalEngine, redis_url: str) -> Iterator[Any]:
    """A client of an app with these CORS settings (each app its own tenancy namespace)."""
    opened: list[TestClient] = []

    def make(origins: list[str], cache_s: float = 0.0) -> TestClient:
        core = tiny_settings.model_copy(update={"redis_url": redis_url})
        settings = AppSettings.of(
            core,
            operator_key=SecretStr(OPERATOR),
            tenancy_namespace=f"t{uuid.uuid4().hex[:8]}",
            cors_origins=origins,
            cors_cache_s=cache_s,
        )
        client = TestClient(create_app(settings, engine=tiny_engine))
        opened.append(client.__enter__())
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def test_a_tenants_origin_passes_the_preflight_and_an_unknown_one_does_not(make_client: Any) -> None:
    c = make_client([])
    assert ACAO not in preflight(c, SHOP).headers  # no tenant lists it yet
    r = c.post("/v1/tenants", json={"id": "acme", "origins": [SHOP]}, headers=bearer(OPERATOR))
    assert r.status_code == 201, r.text
    ok = preflight(c, SHOP, headers="content-type, x-support-key, x-user-token")  # the widget's and the token's
    assert ok.status_code == 200 and ok.headers[ACAO] == SHOP, ok.text
    unknown = preflight(c, "https://evil.test")
    assert unknown.status_code == 400 and ACAO not in unknown.headers
    # the actual request from the tenant's page carries the header too (its key is checked by the route)
    assert c.get("/healthz", headers={"Origin": SHOP}).headers[ACAO] == SHOP
    assert ACAO not in c.get("/healthz", headers={"Origin": "https://evil.test"}).headers
    # admin headers stay out of browsers, whoever lists the origin
    assert preflight(c, SHOP, headers="x-admin-key").status_code == 400


def test_set_origins_takes_effect_within_the_cache_time(make_client: Any) -> None:
    c = make_client([], cache_s=0)  # 0: every cross-origin request asks Redis
    admin = c.post("/v1/tenants", json={"id": "acme", "origins": [SHOP]}, headers=bearer(OPERATOR)).json()
    key = admin["admin_key"]["key"]
    assert preflight(c, SHOP).headers.get(ACAO) == SHOP
    moved = "https://new-shop.acme.test"
    assert c.put("/v1/tenant/origins", json={"origins": [moved]}, headers=bearer(key)).status_code == 200
    assert ACAO not in preflight(c, SHOP).headers
    assert preflight(c, moved).headers.get(ACAO) == moved


def test_the_settings_origins_pass_as_before(make_client: Any) -> None:
    listed = make_client(["https://static.test"])
    assert preflight(listed, "https://static.test").headers[ACAO] == "https://static.test"
    assert ACAO not in preflight(listed, "https://other.test").headers
    anyone = make_client(["*"])  # the default
    assert preflight(anyone, "https://other.test").headers[ACAO] == "*"
    assert anyone.get("/healthz", headers={"Origin": "https://other.test"}).headers[ACAO] == "*"


def test_the_demo_page_on_the_same_origin_is_unaffected(make_client: Any) -> None:
    c = make_client([])
    page = c.get("/")
    assert page.status_code == 200 and ACAO not in page.headers
    # a same-origin POST carries an Origin the browser does not check: served, with no CORS header
    r = c.post("/v1/support/sessions", json={}, headers={"Origin": "http://testserver", **bearer("test-admin-key")})
    assert r.status_code == 201, r.text


# ---- the index in the store -------------------------------------------------------------------------


@pytest.fixture
def store(redis_url: str) -> TenantStore:
    return TenantStore(redis.Redis.from_url(redis_url), namespace=f"t{uuid.uuid4().hex[:8]}")


def test_the_index_follows_the_tenants_origins(store: TenantStore) -> None:
    store.create_tenant("acme", origins=[SHOP, "https://both.test"])
    store.create_tenant("other", origins=["https://both.test"])
    assert store.origin_listed(SHOP) and store.origin_listed("https://both.test")
    store.set_origins("acme", ["https://acme2.test"])
    assert not store.origin_listed(SHOP) and store.origin_listed("https://acme2.test")
    assert store.origin_listed("https://both.test")  # other still lists it
    store.set_origins("other", [])
    assert not store.origin_listed("https://both.test") and not store.origin_listed("https://nobody.test")
    store.set_origins("other", ["*"])  # a tenant whose widget may be on any page
    assert store.origin_listed("https://nobody.test")


def test_tenants_made_before_the_index_are_indexed_once(store: TenantStore, redis_url: str) -> None:
    store.create_tenant("acme", origins=[SHOP])
    r = redis.Redis.from_url(redis_url)
    r.delete(f"{store.ns}:origin:{SHOP}")  # as a store written by an earlier version left it
    fresh = TenantStore(redis.Redis.from_url(redis_url, decode_responses=True), namespace=store.ns)
    assert fresh.origin_listed(SHOP)
    assert r.get(f"{store.ns}:origins-indexed") == b"1"


# ---- the replica's cache, and Redis down ------------------------------------------------------------


def test_each_answer_is_kept_for_the_cache_time() -> None:
    asked: list[str] = []

    def lookup(origin: str) -> bool:
        asked.append(origin)
        return origin == SHOP

    async def run(origins: TenantOrigins) -> list[bool]:
        return [await origins.listed(o, lookup) for o in (SHOP, SHOP, "https://evil.test", "https://evil.test")]

    assert asyncio.run(run(TenantOrigins(cache_s=300))) == [True, True, False, False]
    assert len(asked) == 2  # once per origin
    asked.clear()
    assert asyncio.run(run(TenantOrigins(cache_s=0))) == [True, True, False, False]
    assert len(asked) == 4


def test_with_redis_down_only_the_settings_origins_pass() -> None:
    def down(origin: str) -> bool:
        raise redis.ConnectionError("Connection refused")

    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"ok": "yes"}

    app.add_middleware(TenantCORSMiddleware, origins=["https://static.test"], cache_s=0, lookup=lambda _app: down)
    with TestClient(app) as c:
        assert ACAO not in preflight(c, SHOP, path="/ping").headers
        assert preflight(c, "https://static.test", path="/ping").headers[ACAO] == "https://static.test"
        assert c.get("/ping", headers={"Origin": SHOP}).status_code == 200  # served; the browser withholds it
