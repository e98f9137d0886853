"""Signed user tokens (apps/tenants/tokens.py): the storefront's backend mints one with a server key;
the shopper's browser reads that shopper's recommendations with it and a widget key. Each refusal is
seen once, with its status and its reason: expired, altered, malformed, another user, another tenant,
a rotated secret, no token, a page the tenant does not allow."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from apps.deps import get_recommend_service
from apps.recommend.service import RecommendService
from apps.recommend.settings import RecommendSettings
from apps.server import create_app
from apps.settings import AppSettings
from apps.tenants import tokens
from apps.tenants.auth import route_scope
from apps.tenants.store import SigningKey, TenantStore
from core.engine import LocalEngine
from core.errors import AuthenticationError, InvalidRequestError, PermissionDeniedError
from tests.doubles.recommend import HashEmbedder
from tests.doubles.servers import bearer, new_key

pytestmark = pytest.mark.unit

OPERATOR = "test-operator-key"
ADMIN = "test-admin-key"
KEY = SigningKey("k1", b"s" * 43)
NOW = 1_800_000_000.0


def _claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[0]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def _with_claims(token: str, **changes: Any) -> str:
    """``token`` with its payload changed and its signature kept (what a tamperer can do)."""
    claims = _claims_of(token) | changes
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{payload}.{token.split('.')[1]}"


# ---- the token itself ------------------------------------------------------------------------------


def test_a_token_admits_its_user_of_its_tenant_until_it_expires() -> None:
    token = tokens.sign(KEY, "acme", "u1", int(NOW) + 60)
    claims = tokens.verify(token, KEY, tenant="acme", user_id="u1", now=NOW)
    assert (claims.tenant, claims.user_id, claims.expires_at, claims.kid) == ("acme", "u1", int(NOW) + 60, "k1")
    with pytest.raises(AuthenticationError, match="expired"):
        tokens.verify(token, KEY, tenant="acme", user_id="u1", now=NOW + 60)
    with pytest.raises(PermissionDeniedError, match="another user") as refused:
        tokens.verify(token, KEY, tenant="acme", user_id="u2", now=NOW)
    assert "u1" not in str(refused.value) and "u2" not in str(refused.value)  # user ids may be personal data
    with pytest.raises(PermissionDeniedError, match="another tenant"):
        tokens.verify(token, KEY, tenant="other", user_id="u1", now=NOW)


def test_an_altered_token_is_refused() -> None:
    token = tokens.sign(KEY, "acme", "u1", int(NOW) + 60)
    for forged in (
        _with_claims(token, user_id="u2"),  # another user's data
        _with_claims(token, exp=int(NOW) + 10**6),  # a longer life
        token[:-2] + ("AA" if not token.endswith("AA") else "BB"),  # the signature
        tokens.sign(SigningKey("k1", b"t" * 43), "acme", "u1", int(NOW) + 60),  # signed with another secret
    ):
        with pytest.raises(AuthenticationError, match="altered"):
            tokens.verify(forged, KEY, tenant="acme", user_id=_claims_of(forged)["user_id"], now=NOW)
    # another tenant's genuine token, relabelled as this tenant's: its signature does not hold here
    theirs = tokens.sign(SigningKey("k1", b"o" * 43), "other", "u1", int(NOW) + 60)
    with pytest.raises(AuthenticationError, match="altered"):
        tokens.verify(_with_claims(theirs, tenant="acme"), KEY, tenant="acme", user_id="u1", now=NOW)


def test_a_token_signed_before_a_rotation_is_refused() -> None:
    token = tokens.sign(KEY, "acme", "u1", int(NOW) + 60)
    with pytest.raises(AuthenticationError, match="rotated"):
        tokens.verify(token, SigningKey("k2", b"n" * 43), tenant="acme", user_id="u1", now=NOW)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "no-dot",
        ".sig",
        "payload.",
        "!!!.sig",  # not base64url
        base64.urlsafe_b64encode(b"not json").decode().rstrip("=") + ".sig",
        base64.urlsafe_b64encode(b"[1, 2]").decode().rstrip("=") + ".sig",
        base64.urlsafe_b64encode(b'{"tenant":"acme","user_id":"u1","exp":"soon","kid":"k1"}').decode() + ".sig",
        "a" * 3000 + ".sig",
    ],
)
def test_a_malformed_token_is_refused(token: str) -> None:
    with pytest.raises(AuthenticationError, match="malformed"):
        tokens.verify(token, KEY, tenant="acme", user_id="u1", now=NOW)


# ---- the signing secret, in the tenant store ------------------------------------------------------


@pytest.fixture
def store(redis_url: str) -> TenantStore:
    return TenantStore(redis.Redis.from_url(redis_url), namespace=f"t{uuid.uuid4().hex[:8]}")


def test_every_replica_signs_with_the_same_secret_per_tenant(store: TenantStore, redis_url: str) -> None:
    store.create_tenant("acme")
    store.create_tenant("other")
    replica = TenantStore(redis.Redis.from_url(redis_url, decode_responses=True), namespace=store.ns)
    minted = tokens.mint(store, "acme", "u1", 60, 3600)
    assert tokens.verify_for(replica, minted["token"], "acme", "u1").user_id == "u1"
    assert store.signing_key("acme") == replica.signing_key("acme")
    assert store.signing_key("acme").secret != store.signing_key("other").secret
    assert abs(minted["expires_at"] - (time.time() + 60)) < 5


def test_rotating_the_secret_retires_the_tokens_signed_before(store: TenantStore) -> None:
    store.create_tenant("acme")
    old = tokens.mint(store, "acme", "u1", 60, 3600)["token"]
    kid = store.rotate_signing_key("acme")
    assert store.signing_key("acme").kid == kid
    with pytest.raises(AuthenticationError, match="rotated"):
        tokens.verify_for(store, old, "acme", "u1")
    assert tokens.verify_for(store, tokens.mint(store, "acme", "u1", 60, 3600)["token"], "acme", "u1")


def test_a_lifetime_is_cut_to_the_longest_allowed(store: TenantStore) -> None:
    store.create_tenant("acme")
    granted = tokens.mint(store, "acme", "u1", 7200, 3600, now=NOW)
    assert granted["expires_at"] == int(NOW) + 3600 == _claims_of(granted["token"])["exp"]
    with pytest.raises(InvalidRequestError, match="ttl_s"):
        tokens.mint(store, "acme", "u1", 0, 3600)


def test_a_default_lifetime_above_the_longest_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="USER_TOKEN_TTL_S"):
        AppSettings(user_token_ttl_s=7200, user_token_max_ttl_s=3600)


# ---- over HTTP --------------------------------------------------------------------------------------


@pytest.fixture
def client(tiny_settings: Any, tiny_engine: LocalEngine, redis_url: str, tmp_path: Path) -> Iterator[TestClient]:
    core = tiny_settings.model_copy(update={"redis_url": redis_url})
    settings = AppSettings.of(core, operator_key=SecretStr(OPERATOR), tenancy_namespace=f"t{uuid.uuid4().hex[:8]}")
    app = create_app(settings, engine=tiny_engine)
    service = RecommendService(
        RecommendSettings(namespace=f"r{uuid.uuid4().hex[:8]}", ranker_path=tmp_path / "no-ranker.json"),
        redis.Redis.from_url(redis_url),
        HashEmbedder(),
        lambda: None,  # no LLM scoring: these tests are about who may read
    )
    service.upsert_items([{"id": f"i{n}", "title": f"Item {n}", "category": "c"} for n in range(5)])
    app.dependency_overrides[get_recommend_service] = lambda: service
    with TestClient(app) as c:
        yield c


def mint(c: TestClient, server: str, user_id: str, **body: Any) -> str:
    r = c.post("/v1/recommend/user-tokens", json={"user_id": user_id, **body}, headers=bearer(server))
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def read(c: TestClient, user_id: str, widget: str, token: str | None, **headers: str) -> Any:
    sent = {"X-Support-Key": widget, **({"X-User-Token": token} if token is not None else {}), **headers}
    return c.get(f"/v1/recommend/{user_id}", params={"k": 3}, headers=sent)


def test_a_widget_key_with_a_user_token_reads_that_user_only(client: TestClient) -> None:
    server, widget = new_key(client, ADMIN, "server"), new_key(client, ADMIN, "widget")
    r = client.post("/v1/recommend/user-tokens", json={"user_id": "u1"}, headers=bearer(server))
    assert r.status_code == 200, r.text
    assert abs(r.json()["expires_at"] - (time.time() + 900)) < 30  # DOMAINLLM_USER_TOKEN_TTL_S
    token = r.json()["token"]

    ok = read(client, "u1", widget, token)
    assert ok.status_code == 200 and ok.json()["user_id"] == "u1", ok.text
    assert client.get("/v1/recommend/u1", params={"k": 3}, headers=bearer(server)).status_code == 200  # as before

    def refused(response: Any, status: int, reason: str) -> None:
        assert response.status_code == status, response.text
        assert reason in response.json()["error"]["message"], response.text

    refused(read(client, "u2", widget, token), 403, "another user")
    refused(read(client, "u1", widget, None), 403, "X-User-Token")  # a widget key alone: as the matrix has it
    refused(read(client, "u1", widget, _with_claims(token, user_id="u2")), 401, "altered")
    refused(read(client, "u1", widget, "garbage"), 401, "malformed")
    store: TenantStore = client.app.state.services.tenants  # type: ignore[attr-defined]
    expired = tokens.sign(store.signing_key("default"), "default", "u1", int(time.time()) - 1)
    refused(read(client, "u1", widget, expired), 401, "expired")
    # a token is no key: without the widget key it admits nothing
    assert client.get("/v1/recommend/u1", headers={"X-User-Token": token}).status_code == 401


def test_tokens_do_not_cross_tenants(client: TestClient) -> None:
    acme_admin = client.post("/v1/tenants", json={"id": "acme"}, headers=bearer(OPERATOR)).json()["admin_key"]["key"]
    acme_server, acme_widget = new_key(client, acme_admin, "server"), new_key(client, acme_admin, "widget")
    widget = new_key(client, ADMIN, "widget")
    acme_token = mint(client, acme_server, "u1")
    default_token = mint(client, new_key(client, ADMIN, "server"), "u1")
    assert read(client, "u1", acme_widget, acme_token).status_code == 200
    for response in (read(client, "u1", widget, acme_token), read(client, "u1", acme_widget, default_token)):
        assert response.status_code == 403 and "another tenant" in response.json()["error"]["message"]


def test_minting_takes_a_server_key_and_a_bounded_lifetime(client: TestClient) -> None:
    server, widget = new_key(client, ADMIN, "server"), new_key(client, ADMIN, "widget")
    assert client.post("/v1/recommend/user-tokens", json={"user_id": "u1"}, headers=bearer(widget)).status_code == 403
    long = client.post("/v1/recommend/user-tokens", json={"user_id": "u1", "ttl_s": 7200}, headers=bearer(server))
    assert long.status_code == 200 and long.json()["expires_at"] - time.time() < 3601  # DOMAINLLM_USER_TOKEN_MAX_TTL_S
    for bad in (
        {"user_id": ""},
        {"user_id": "u1", "ttl_s": "60"},
        {"user_id": "u1", "ttl_s": True},
        {"user_id": "bad id"},
        {"user_id": "u1", "ttl_s": 0},
        {"user_id": "u1", "ttl_s": 86401},
    ):
        assert client.post("/v1/recommend/user-tokens", json=bad, headers=bearer(server)).status_code == 422, bad
    short = mint(client, server, "u1", ttl_s=60)
    assert _claims_of(short)["exp"] - time.time() < 61


def test_the_widget_key_keeps_to_its_tenants_pages(client: TestClient) -> None:
    r = client.put("/v1/tenant/origins", json={"origins": ["https://shop.test"]}, headers=bearer(ADMIN))
    assert r.status_code == 200, r.text
    widget = new_key(client, ADMIN, "widget")
    token = mint(client, new_key(client, ADMIN, "server"), "u1")
    assert read(client, "u1", widget, token, Origin="https://shop.test").status_code == 200
    other = read(client, "u1", widget, token, Origin="https://evil.test")
    assert other.status_code == 403 and "evil.test" in other.json()["error"]["message"]


def test_rotating_the_secret_over_http_retires_the_tenants_tokens(client: TestClient) -> None:
    widget = new_key(client, ADMIN, "widget")
    token = mint(client, new_key(client, ADMIN, "server"), "u1")
    assert client.post("/v1/tenant/user-token-secret/rotate", headers=bearer(widget)).status_code == 403
    assert client.post("/v1/tenant/user-token-secret/rotate", headers=bearer(ADMIN)).status_code == 200
    r = read(client, "u1", widget, token)
    assert r.status_code == 401 and "rotated" in r.json()["error"]["message"]


def test_the_route_reads_as_a_server_route_and_documents_the_token(client: TestClient) -> None:
    app: Any = client.app
    scopes = {
        (context.path, method): route_scope(context.original_route)
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute)
        for method in context.original_route.methods or ()
    }
    assert scopes[("/v1/recommend/{user_id}", "GET")] == "server"  # the route-by-key matrix holds it to that
    assert scopes[("/v1/recommend/user-tokens", "POST")] == "server"
    assert scopes[("/v1/recommend/stats", "GET")] == "server"  # the other routes keep their requirement
    assert scopes[("/v1/recommend/items", "POST")] == "admin"
    get = client.get("/openapi.json").json()["paths"]["/v1/recommend/{user_id}"]["get"]
    assert any(p["name"] == "X-User-Token" and p["in"] == "header" for p in get["parameters"])
    assert "X-User-Token" in get["responses"]["401"]["description"]
    assert "X-User-Token" in get["responses"]["403"]["description"]
