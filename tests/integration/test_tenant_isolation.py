"""Tenant isolation (issue 15, line 2): two tenants store data under the same ids (the same KB doc id,
the same item and user ids, the same news URL, sessions of the same id format, an alert of the same
id), each marked with a word only it uses. Then, through every read route of the app's own schema
(so a new route is held to it too), each tenant's keys read with the other's ids: the other's word
never comes back. Writes with the other's ids change only the caller's own data.

A positive control runs each read as the owner too, so a route that never returns anything cannot
pass unnoticed: the owner sees its own word on the routes that show stored text.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from apps.sentiment.alerts import Alert
from apps.server import create_app
from apps.settings import AppSettings
from apps.support.settings import SupportSettings
from core.engine import LocalEngine
from tests.doubles.servers import bearer

pytestmark = pytest.mark.integration

OPERATOR = "isolation-operator-key"
TENANTS = {"alpha": "zanzibarite", "beta": "quokkafied"}  # tenant -> a word only its data holds
SAME = {"doc_id": "returns", "item": "i1", "user_id": "u1", "url": "https://news.example/same-story"}
ALERT_ID = "same-alert"
# Reads that stream until something happens: checked through their session guard instead (below).
ENDLESS = {"/v1/support/inbox/events", "/v1/support/sessions/{session_id}/events"}
# Reads that show no stored text of a tenant (the engine's models, the key's own tenant record).
NO_STORED_TEXT = {"/v1/models", "/v1/adapters", "/v1/tenant", "/v1/keys", "/v1/tenants"}


@pytest.fixture
def client(tiny_settings: Any, tiny_engine: LocalEngine, redis_url: str, tmp_path: Any) -> Iterator[TestClient]:
    run = uuid.uuid4().hex[:8]
    core = tiny_settings.model_copy(update={"redis_url": redis_url})
    settings = AppSettings.of(
        core,
        operator_key=SecretStr(OPERATOR),
        tenancy_namespace=f"iso-tenancy-{run}",
        support=SupportSettings(namespace=f"iso-support-{run}", kb_dir=tmp_path / "kb"),
    )
    settings.sentiment.namespace = f"iso-sentiment-{run}"
    settings.sentiment.inbox_dir = None
    settings.recommend.namespace = f"iso-recommend-{run}"
    with TestClient(create_app(settings, engine=tiny_engine)) as c:
        yield c


def _fill(tenant: dict[str, Any], word: str) -> dict[str, Any]:
    """One tenant's data under the shared ids; returns the ids that are its own (session, handoff)."""
    c: TestClient = tenant["client"]
    admin, server, widget = (bearer(tenant[s]) for s in ("admin", "server", "widget"))
    text = f"Returns of a {word} take 30 days. Send the {word} back in its box."
    doc = {"doc_id": SAME["doc_id"], "title": f"Returns at {word}", "text": text}
    r = c.post("/v1/support/kb/documents", json={"documents": [doc]}, headers=admin)
    assert r.status_code == 200, r.text
    r = c.post("/v1/recommend/items", json={"items": [{"id": SAME["item"], "title": f"{word} lamp"},
               {"id": "i2", "title": f"{word} shade"}]}, headers=admin)  # fmt: skip
    assert r.status_code == 200, r.text
    r = c.post("/v1/recommend/events", json={"user_id": SAME["user_id"], "item_id": SAME["item"], "type": "purchase"},
               headers=server)  # fmt: skip
    assert r.status_code in (200, 201), r.text
    r = c.post("/v1/sentiment/news", json={"title": f"{word} shares plunge on probe", "url": SAME["url"]},
               headers=server)  # fmt: skip
    assert r.status_code in (200, 201, 202), r.text
    item_id = r.json()["ids"][0]
    session = c.post("/v1/support/sessions", json={}, headers=widget).json()["session_id"]
    r = c.post(f"/v1/support/sessions/{session}/handoff", json={"reason": f"my {word} broke"}, headers=widget)
    assert r.status_code in (200, 201), r.text
    handoff = r.json().get("handoff_id") or r.json().get("id")
    # an alert under the same id in each tenant (the monitor raises them in the worker; stored directly here)
    services: Any = c.app.state.services  # type: ignore[attr-defined]
    alerts = services.apps_of(tenant["id"]).sentiment.alerts
    alerts.fire(
        Alert(ALERT_ID, "negative_surge", "surge", "all", "critical", time.time(), f"{word} surge", {"n": 1}),
        cooldown_s=0,
    )
    # a training job whose file is named after the word (queued only: no trainer consumes it here)
    files = [{"name": f"{word}-faq.csv", "content": "question,answer\nWhere is my order?,In your account.\n"}]
    r = c.post(f"/v1/tenants/{tenant['id']}/adapters/support/train", json={"files": files}, headers=admin)
    assert r.status_code == 202, r.text
    return {
        "session_id": session,
        "handoff_id": handoff,
        "item_id": item_id,
        "tenant": tenant["id"],
        "domain": "support",
        "job_id": r.json()["job_id"],
    }


def _reads(c: TestClient) -> list[tuple[str, dict[str, Any]]]:
    """Every GET of the schema that needs a key (public probes excluded), with its parameters."""
    spec = c.get("/openapi.json").json()
    reads = []
    for path, ops in spec["paths"].items():
        op = ops.get("get")
        if op is None or path in ENDLESS or not op.get("security"):
            continue
        reads.append((path, op))
    return reads


def _url(path: str, op: dict[str, Any], ids: dict[str, Any], word: str) -> tuple[str, dict[str, str]]:
    values = {"doc_id": SAME["doc_id"], "user_id": SAME["user_id"], "alert_id": ALERT_ID, **ids}
    for p in op.get("parameters", []):
        if p["in"] == "path":
            assert p["name"] in values, f"{path}: no id for {p['name']} — add the new route's id to this test"
            path = path.replace("{" + p["name"] + "}", str(values[p["name"]]))
    query = {p["name"]: word for p in op.get("parameters", []) if p["in"] == "query" and p.get("required")}
    return path, query


def test_two_tenants_with_the_same_ids_never_see_each_others_data(client: TestClient) -> None:
    tenants: dict[str, dict[str, Any]] = {}
    for name, word in TENANTS.items():
        r = client.post("/v1/tenants", json={"id": name}, headers=bearer(OPERATOR))
        assert r.status_code == 201, r.text
        t = {"id": name, "client": client, "admin": r.json()["admin_key"]["key"]}
        for scope in ("server", "widget"):
            t[scope] = client.post("/v1/keys", json={"scope": scope}, headers=bearer(t["admin"])).json()["key"]
        t["ids"] = _fill(t, word)
        tenants[name] = t
    reads = _reads(client)
    assert len(reads) >= 12, [p for p, _ in reads]
    shown_to_owner = set()
    for owner, other in (("alpha", "beta"), ("beta", "alpha")):
        word, ids = TENANTS[owner], tenants[owner]["ids"]
        for path, op in reads:
            url, query = _url(path, op, ids, word)
            mine = client.get(url, params=query, headers=bearer(tenants[owner]["admin"]))
            theirs = client.get(url, params=query, headers=bearer(tenants[other]["admin"]))
            assert theirs.status_code < 500, (path, theirs.text)
            assert word not in theirs.text, f"{other} read {owner}'s data through GET {url}: {theirs.text[:300]}"
            if word in mine.text:
                shown_to_owner.add(path)
    # the control: the routes that show stored text did show each owner its own
    expected = {
        "/v1/support/kb/search",
        "/v1/support/handoffs",
        "/v1/support/handoffs/{handoff_id}",
        "/v1/sentiment/items/{item_id}",
        "/v1/sentiment/alerts",
        "/v1/sentiment/alerts/{alert_id}",
        "/v1/recommend/{user_id}",
    }
    assert expected <= shown_to_owner, expected - shown_to_owner
    assert not (shown_to_owner & NO_STORED_TEXT)


def test_writes_with_the_other_tenants_ids_change_only_the_callers_data(client: TestClient) -> None:
    keys = {}
    for name in TENANTS:
        keys[name] = client.post("/v1/tenants", json={"id": name}, headers=bearer(OPERATOR)).json()["admin_key"]["key"]
    alpha = {
        "id": "alpha",
        "client": client,
        "admin": keys["alpha"],
        **{
            s: client.post("/v1/keys", json={"scope": s}, headers=bearer(keys["alpha"])).json()["key"]
            for s in ("server", "widget")
        },
    }
    ids = _fill(alpha, TENANTS["alpha"])
    beta = bearer(keys["beta"])
    # beta deletes "returns" and the items: it has none, so 404 / nothing; alpha's stay
    assert client.delete(f"/v1/support/kb/documents/{SAME['doc_id']}", headers=beta).status_code == 404
    client.request("DELETE", "/v1/recommend/items", json={"ids": [SAME["item"], "i2"]}, headers=beta)
    # beta acts on alpha's session and handoff: unknown to it
    session, handoff = ids["session_id"], ids["handoff_id"]
    assert (
        client.post(f"/v1/support/sessions/{session}/messages", json={"message": "hi"}, headers=beta).status_code == 404
    )
    assert client.get(f"/v1/support/sessions/{session}/events", headers=beta).status_code == 404
    for action in ("take", "close"):
        r = client.post(f"/v1/support/handoffs/{handoff}/{action}", json={"agent": "mallory"}, headers=beta)
        assert r.status_code == 404, (action, r.text)
    assert client.post(f"/v1/sentiment/alerts/{ALERT_ID}/resend", headers=beta).status_code == 404
    # a key naming the other tenant is refused outright
    assert client.get("/v1/support/handoffs", headers={**beta, "X-Tenant": "alpha"}).status_code == 403
    # alpha's data is all still there
    own = bearer(alpha["admin"])
    word = TENANTS["alpha"]
    assert word in client.get("/v1/support/kb/search", params={"q": "returns"}, headers=own).text
    assert word in client.get(f"/v1/recommend/{SAME['user_id']}", headers=own).text  # i2, the unbought item
    handoff_now = client.get(f"/v1/support/handoffs/{handoff}", headers=own).json()
    assert handoff_now["status"] == "open", handoff_now
    assert client.get(f"/v1/sentiment/alerts/{ALERT_ID}", headers=own).status_code == 200
