"""Tenants and keys (apps/tenants): the store keeps only hashes, keys are created, listed, rotated and
revoked (a revoked key fails at its next request), scopes admit what they should, and a route-by-key
matrix built from the app's own routes, so that a new route cannot escape it: no key, a wrong key, a
revoked key, a key of the wrong scope and a key of another tenant are each refused (401/403)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from pydantic import SecretStr

from apps.server import create_app
from apps.settings import AppSettings
from apps.tenants.auth import route_scope
from apps.tenants.store import TenantStore, scope_admits
from core.engine import LocalEngine
from core.errors import ConflictError, InvalidRequestError, NotFoundError
from tests.doubles.servers import bearer, new_key

pytestmark = pytest.mark.unit

OPERATOR = "test-operator-key"
PUBLIC = {"/healthz", "/readyz", "/metrics"}  # no key by design (issue 15 puts /metrics behind a switch)


@pytest.fixture
def store(redis_url: str) -> TenantStore:
    return TenantStore(redis.Redis.from_url(redis_url), namespace=f"t{uuid.uuid4().hex[:8]}")


def test_keys_are_stored_hashed_and_found_by_id(store: TenantStore, redis_url: str) -> None:
    store.create_tenant("acme", "Acme", ["https://shop.acme.test"])
    issued = store.create_key("acme", "server", "backend")
    assert issued.key.startswith(f"dlm_server_{issued.info.id}_")
    r = redis.Redis.from_url(redis_url)
    secret = issued.key.removeprefix(f"dlm_server_{issued.info.id}_")  # a url-safe secret may hold "_" itself
    assert len(secret) >= 40
    for key in r.scan_iter(f"{store.ns}:*"):
        raw = r.dump(key) or b""
        assert secret.encode() not in raw and issued.key.encode() not in raw
    found = store.authenticate(issued.key)
    assert found is not None and (found.tenant, found.scope, found.label) == ("acme", "server", "backend")
    assert store.authenticate(issued.key[:-1] + ("A" if issued.key[-1] != "A" else "B")) is None  # one char off
    assert store.authenticate(issued.key.replace("dlm_server_", "dlm_admin_")) is None  # scope is part of the key
    assert store.authenticate("") is None and store.authenticate("dlm_admin_x_y") is None


def test_revoke_and_rotate(store: TenantStore) -> None:
    store.create_tenant("acme")
    store.create_tenant("other")
    first = store.create_key("acme", "admin")
    with pytest.raises(NotFoundError):
        store.revoke(first.info.id, tenant="other")  # another tenant's key reads as unknown
    rotated = store.rotate(first.info.id, tenant="acme")
    assert store.authenticate(first.key) is None and store.authenticate(rotated.key) is not None
    assert [k.id for k in store.keys("acme")] == [rotated.info.id]
    store.revoke(rotated.info.id)
    assert store.authenticate(rotated.key) is None and store.keys("acme") == []


def test_bad_tenants_and_scopes_are_refused(store: TenantStore) -> None:
    with pytest.raises(InvalidRequestError):
        store.create_tenant("Not Valid!")
    with pytest.raises(InvalidRequestError):
        store.create_tenant("ok", origins=["javascript:alert(1)"])
    store.create_tenant("ok")
    with pytest.raises(ConflictError):
        store.create_tenant("ok")
    with pytest.raises(InvalidRequestError):
        store.create_key("ok", "root")
    with pytest.raises(NotFoundError):
        store.create_key("ghost", "server")
    assert scope_admits("admin", "widget") and not scope_admits("widget", "server")


# ---- over HTTP ------------------------------------------------------------------------------------


@pytest.fixture
def client(tiny_settings: Any, tiny_engine: LocalEngine, redis_url: str) -> Iterator[TestClient]:
    core = tiny_settings.model_copy(update={"redis_url": redis_url})
    settings = AppSettings.of(core, operator_key=SecretStr(OPERATOR), tenancy_namespace=f"t{uuid.uuid4().hex[:8]}")
    with TestClient(create_app(settings, engine=tiny_engine)) as c:
        yield c


def test_the_operator_creates_tenants_and_their_admins_manage_keys(client: TestClient) -> None:
    assert client.post("/v1/tenants", json={"id": "acme"}).status_code == 401
    assert client.post("/v1/tenants", json={"id": "acme"}, headers=bearer("test-admin-key")).status_code == 403
    r = client.post("/v1/tenants", json={"id": "acme", "origins": ["https://acme.test"]}, headers=bearer(OPERATOR))
    assert r.status_code == 201, r.text
    admin = r.json()["admin_key"]["key"]
    assert client.post("/v1/tenants", json={"id": "acme"}, headers=bearer(OPERATOR)).status_code == 409
    assert client.get("/v1/tenant", headers=bearer(admin)).json()["origins"] == ["https://acme.test"]
    server = new_key(client, admin, "server")
    listed = client.get("/v1/keys", headers=bearer(admin)).json()["keys"]
    assert {k["scope"] for k in listed} == {"admin", "server"} and all("key" not in k for k in listed)
    server_id = next(k["id"] for k in listed if k["scope"] == "server")
    assert client.get("/v1/keys", headers=bearer(server)).status_code == 403  # server keys manage nothing
    # another tenant's admin cannot see or revoke acme's keys
    default_keys = client.get("/v1/keys", headers=bearer("test-admin-key")).json()["keys"]
    assert server_id not in {k["id"] for k in default_keys}
    assert client.delete(f"/v1/keys/{server_id}", headers=bearer("test-admin-key")).status_code == 404
    rotated = client.post(f"/v1/keys/{server_id}/rotate", headers=bearer(admin))
    assert rotated.status_code == 200 and rotated.json()["key"] != server
    assert client.get("/v1/keys", headers=bearer(admin)).status_code == 200
    assert client.post("/v1/keys", json={"scope": "root"}, headers=bearer(admin)).status_code == 422


def test_a_revoked_key_fails_at_its_next_request(client: TestClient) -> None:
    server = new_key(client, "test-admin-key", "server")
    assert client.get("/v1/models", headers=bearer(server)).status_code == 200
    key_id = server.split("_")[2]
    assert client.delete(f"/v1/keys/{key_id}", headers=bearer("test-admin-key")).status_code == 200
    r = client.get("/v1/models", headers=bearer(server))
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


def test_a_widget_key_works_only_from_its_tenants_origins(client: TestClient) -> None:
    r = client.put("/v1/tenant/origins", json={"origins": ["https://shop.test"]}, headers=bearer("test-admin-key"))
    assert r.status_code == 200, r.text
    widget = new_key(client, "test-admin-key", "widget")
    ok = client.post("/v1/support/sessions", json={}, headers={**bearer(widget), "Origin": "https://shop.test"})
    assert ok.status_code == 201, ok.text
    other = client.post("/v1/support/sessions", json={}, headers={**bearer(widget), "Origin": "https://evil.test"})
    assert other.status_code == 403 and "evil.test" in other.json()["error"]["message"]
    assert client.get("/v1/models", headers=bearer(widget)).status_code == 403  # widget keys reach the bot only


def _fill(path: str) -> str:
    path = path.replace("{tenant}", "default")  # the keys' own tenant: another one is refused (403) first
    while "{" in path:
        a, b = path.index("{"), path.index("}")
        path = f"{path[:a]}x{path[b + 1 :]}"
    return path


def test_every_route_refuses_the_wrong_keys(client: TestClient) -> None:
    """Built from the app's routes: whatever is added later is held to the same refusals."""
    acme = client.post("/v1/tenants", json={"id": "acme2"}, headers=bearer(OPERATOR)).json()["admin_key"]["key"]
    keys = {scope: new_key(client, "test-admin-key", scope) for scope in ("widget", "server", "admin")}
    revoked = new_key(client, "test-admin-key", "admin")
    client.delete(f"/v1/keys/{revoked.split('_')[2]}", headers=bearer("test-admin-key"))
    other_tenant = {scope: new_key(client, acme, scope) for scope in ("widget", "server", "admin")}
    checked = 0
    app: Any = client.app
    for context in iter_route_contexts(app.routes):  # included routers are lazy in FastAPI 0.165: flatten them
        route = context.original_route
        if not isinstance(route, APIRoute) or context.path in PUBLIC:
            continue
        needed = route_scope(route)
        if not route.include_in_schema and needed is None:
            continue  # the widget script, the demo help centre pages: public by design
        assert needed is not None, f"{context.path} takes no key"
        for method in route.methods - {"HEAD", "OPTIONS"}:
            url = _fill(str(context.path))

            def call(headers: dict[str, str], method: str = method, url: str = url) -> int:
                return client.request(method, url, headers=headers, json={}).status_code

            assert call({}) == 401, (method, url, "no key")
            assert call(bearer("dlm_admin_AAAAAAAAAAAA_" + "x" * 43)) == 401, (method, url, "wrong key")
            assert call(bearer(revoked)) == 401, (method, url, "revoked key")
            weaker = {"server": "widget", "admin": "server", "operator": "admin"}.get(needed)
            if weaker:
                assert call(bearer(keys[weaker])) == 403, (method, url, f"{weaker} key")
            if needed in ("widget", "server", "admin"):
                # a key reaches only its own tenant's data (test_tenant_isolation); naming another tenant: 403
                spoofed = {**bearer(other_tenant[needed]), "X-Tenant": "default"}
                assert call(spoofed) == 403, (method, url, "another tenant's key")
            endless = method == "GET" and "text/event-stream" in str(route.responses)  # a live event stream
            if needed != "operator" and not endless:
                assert call(bearer(keys[needed])) not in (401, 403), (method, url, "the right key")
            checked += 1
    assert checked > 40


def test_admin_routes_can_be_switched_off(tiny_settings: Any, tiny_engine: LocalEngine, redis_url: str) -> None:
    core = tiny_settings.model_copy(update={"redis_url": redis_url})
    settings = AppSettings.of(core, expose_admin=False, tenancy_namespace=f"t{uuid.uuid4().hex[:8]}")
    with TestClient(create_app(settings, engine=tiny_engine)) as c:
        r = c.get("/v1/keys", headers=bearer("test-admin-key"))
        assert r.status_code == 403 and "EXPOSE_ADMIN" in r.json()["error"]["message"]
        assert c.get("/v1/support/handoffs", headers=bearer("test-admin-key")).status_code == 403
        assert c.get("/v1/models", headers=bearer("test-admin-key")).status_code == 200  # server routes stay


def test_docs_and_metrics_can_be_switched_off(tiny_settings: Any, tiny_engine: LocalEngine, redis_url: str) -> None:
    core = tiny_settings.model_copy(update={"redis_url": redis_url})
    settings = AppSettings.of(core, expose_docs=False, expose_metrics=False)
    with TestClient(create_app(settings, engine=tiny_engine)) as c:
        for path in ("/docs", "/redoc", "/openapi.json", "/metrics"):
            assert c.get(path).status_code == 404, path
        assert c.get("/healthz").status_code == 200
