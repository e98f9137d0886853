"""The handoff over HTTP (tiny random Llama, real embedded Redis): the bot hands off a question it
cannot answer, an agent takes and answers it through the inbox API while the bot stays silent, closes
it, and the customer's rating lands in the daily analytics. Then every new route is sent bad input:
each answers a clear 4xx in the API's error shape, and nothing stored changes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from apps.server import create_app
from apps.settings import AppSettings
from apps.support.inbox import Inbox
from apps.support.settings import SupportSettings
from core.engine import LocalEngine
from tests.doubles.recommend import HashEmbedder
from tests.unit.test_support_api import DOCS, TEST_SELECTOR
from tests.unit.test_support_inbox import raw_dump

pytestmark = pytest.mark.unit

ADMIN = {"X-Admin-Key": "test-admin-key"}
KEY = {"X-Support-Key": "pk_test"}
JSON = {"Content-Type": "application/json"}
OUT_OF_KB = "Do you sell winter tyres for vans?"


@pytest.fixture
def client(tiny_settings: Any, tiny_engine: LocalEngine, redis_url: str, tmp_path: Path) -> Iterator[TestClient]:
    tiny_engine.embedder = HashEmbedder()  # type: ignore[assignment]
    selector = tmp_path / "selector.json"
    TEST_SELECTOR.save(selector)
    support = SupportSettings(
        namespace=f"t{uuid.uuid4().hex[:8]}",
        kb_dir=tmp_path / "kb",
        public_keys=["pk_test"],
        selector_path=selector,
    )
    core = tiny_settings.model_copy(update={"redis_url": redis_url})
    with TestClient(create_app(AppSettings.of(core, support=support), engine=tiny_engine)) as c:
        assert c.post("/v1/support/kb/documents", json={"documents": DOCS}, headers=ADMIN).status_code == 200
        yield c


def inbox_of(c: TestClient) -> Inbox:
    inbox: Inbox = c.app.state.services.support.inbox  # type: ignore[attr-defined]
    return inbox


def handed_off(c: TestClient) -> tuple[str, str]:
    sid = c.post("/v1/support/sessions", json={}, headers=KEY).json()["session_id"]
    r = c.post(f"/v1/support/sessions/{sid}/messages", json={"message": OUT_OF_KB}, headers=KEY)
    assert r.status_code == 200 and r.json()["handoff"], r.text
    return sid, r.json()["handoff_id"]


def error(r: Any, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and body["error"]["type"] and body["error"]["message"], body
    return str(body["error"]["message"])


def test_an_agent_takes_answers_and_closes_while_the_bot_stays_silent(client: TestClient) -> None:
    sid, hid = handed_off(client)
    listed = client.get("/v1/support/handoffs", params={"status": "open"}, headers=ADMIN).json()
    assert [h["id"] for h in listed["handoffs"]] == [hid] and listed["cursor"] != "0-0"
    assert listed["handoffs"][0]["question"] == OUT_OF_KB and listed["handoffs"][0]["messages"] == 2
    one = client.get(f"/v1/support/handoffs/{hid}", headers=ADMIN).json()
    assert one["reason"] == "low_confidence" and one["status"] == "open" and one["passages"]
    assert {p["doc_id"] for p in one["passages"]} <= {d["doc_id"] for d in DOCS}
    assert [m["role"] for m in one["conversation"]] == ["user", "assistant"]

    taken = client.post(f"/v1/support/handoffs/{hid}/take", json={"agent": "Dana"}, headers=ADMIN)
    assert taken.status_code == 200 and taken.json()["taken_by"] == "Dana"
    conflict = client.post(f"/v1/support/handoffs/{hid}/take", json={"agent": "Sam"}, headers=ADMIN)
    assert "taken by 'Dana'" in error(conflict, 409)
    error(client.post(f"/v1/support/handoffs/{hid}/messages", json={"agent": "Sam", "text": "Hi"}, headers=ADMIN), 409)
    reply = client.post(
        f"/v1/support/handoffs/{hid}/messages", json={"agent": "Dana", "text": "Hi, Dana here."}, headers=ADMIN
    )
    assert reply.status_code == 201 and reply.json()["text"] == "Hi, Dana here."

    store = client.app.state.services.support.store  # type: ignore[attr-defined]
    before = len(store.history(sid))
    for stream in (False, True):
        held = client.post(
            f"/v1/support/sessions/{sid}/messages", json={"message": "Winter ones?", "stream": stream}, headers=KEY
        )
        assert held.status_code == 202 and held.json()["held"] and held.json()["handoff_id"] == hid
    history = store.history(sid)
    assert [m["role"] for m in history[before:]] == ["user", "user"]  # stored, and no bot answer
    assert client.get(f"/v1/support/handoffs/{hid}", headers=ADMIN).json()["conversation"][-1]["text"] == "Winter ones?"

    error(client.post(f"/v1/support/handoffs/{hid}/close", json={"agent": "Sam"}, headers=ADMIN), 409)
    closed = client.post(f"/v1/support/handoffs/{hid}/close", json={"agent": "Dana"}, headers=ADMIN)
    assert closed.status_code == 200 and closed.json()["status"] == "closed"
    rated = client.post(f"/v1/support/sessions/{sid}/csat", json={"rating": 5, "comment": "Great"}, headers=KEY)
    assert rated.status_code == 200 and rated.json() == {"handoff_id": hid, "rating": 5}
    assert client.get(f"/v1/support/handoffs/{hid}", headers=ADMIN).json()["csat"] == 5
    error(client.post(f"/v1/support/sessions/{sid}/csat", json={"rating": 4}, headers=KEY), 409)

    # the bot answers again once the conversation is closed
    after = client.post(f"/v1/support/sessions/{sid}/messages", json={"message": OUT_OF_KB}, headers=KEY)
    assert after.status_code == 200 and after.json()["handoff"] and after.json()["handoff_id"] != hid

    report = client.get("/v1/support/analytics", params={"days": 7}, headers=ADMIN).json()
    today = report["series"][-1]
    assert len(report["series"]) == 7 and today["conversations"] == 1 and today["handed_off"] == 1
    assert today["deflection_rate"] == 0.0 and today["csat"]["mean"] == 5.0 and today["csat"]["count"] == 1
    assert report["top_unanswered"][0] == {"question": OUT_OF_KB.lower().rstrip("?"), "count": 2}
    assert report["now"] == {"open": 1, "taken": 0}
    stats = client.get("/v1/support/stats", headers=ADMIN).json()
    assert stats["open_handoffs"] == 1 and stats["taken_handoffs"] == 0


def test_no_agent_in_time_lets_the_customer_leave_an_email(client: TestClient) -> None:
    sid, hid = handed_off(client)
    saved = client.post(f"/v1/support/sessions/{sid}/contact", json={"email": "jane@example.com"}, headers=KEY)
    assert saved.status_code == 200 and saved.json()["handoff_id"] == hid and "jane" not in saved.text
    one = client.get(f"/v1/support/handoffs/{hid}", headers=ADMIN).json()
    assert one["contact_email"] == "jane@example.com" and one["has_contact"]


def test_bad_input_on_every_new_route_is_a_4xx_and_changes_nothing(client: TestClient) -> None:
    sid, hid = handed_off(client)
    client.post(f"/v1/support/handoffs/{hid}/take", json={"agent": "Dana"}, headers=ADMIN)
    fresh = client.post("/v1/support/sessions", json={}, headers=KEY).json()["session_id"]  # no handoff
    missing_session, missing_handoff = uuid.uuid4().hex, "0" * 16
    inbox = inbox_of(client)
    before = raw_dump(inbox)
    h = f"/v1/support/handoffs/{hid}"
    s = f"/v1/support/sessions/{sid}"
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        # the agents' routes
        ("GET", "/v1/support/handoffs?status=pending", {}, 422),
        ("GET", "/v1/support/handoffs?limit=0", {}, 422),
        ("GET", "/v1/support/handoffs/not-an-id", {}, 404),
        ("GET", f"/v1/support/handoffs/{missing_handoff}", {}, 404),
        ("POST", f"{h}/take", {}, 422),
        ("POST", f"{h}/take", {"json": {"agent": ""}}, 422),
        ("POST", f"{h}/take", {"json": {"agent": "x" * 65}}, 422),
        ("POST", f"{h}/take", {"json": {"agent": "Dana\nSam"}}, 400),
        ("POST", f"{h}/take", {"json": {"agent": "Sam"}}, 409),
        ("POST", f"{h}/take", {"json": {"agent": "Dana", "extra": 1}}, 422),
        ("POST", f"{h}/take", {"content": b'{"agent": ', "headers": JSON}, 400),
        ("POST", f"/v1/support/handoffs/{missing_handoff}/take", {"json": {"agent": "Dana"}}, 404),
        ("POST", "/v1/support/handoffs/../../take", {"json": {"agent": "Dana"}}, 404),
        ("POST", f"{h}/messages", {"json": {"agent": "Dana", "text": ""}}, 422),
        ("POST", f"{h}/messages", {"json": {"agent": "Dana", "text": "   "}}, 400),
        ("POST", f"{h}/messages", {"json": {"agent": "Dana", "text": "x" * 2001}}, 413),
        ("POST", f"{h}/messages", {"content": b'{"agent": "Dana", "text": "\\ud800"}', "headers": JSON}, 422),
        ("POST", f"{h}/messages", {"json": {"text": "hi"}}, 422),
        ("POST", f"{h}/messages", {"json": {"agent": "Sam", "text": "hi"}}, 409),
        ("POST", f"{h}/close", {"json": {}}, 422),
        ("POST", f"{h}/close", {"json": {"agent": "Sam"}}, 409),
        ("GET", "/v1/support/inbox/events?after=$", {}, 400),
        ("GET", "/v1/support/inbox/events?after=1-2-3", {}, 400),
        ("GET", "/v1/support/analytics?days=0", {}, 422),
        ("GET", "/v1/support/analytics?days=91", {}, 422),
        ("GET", "/v1/support/analytics?days=week", {}, 422),
        # the customer's routes
        ("GET", f"/v1/support/sessions/{missing_session}/events", {}, 404),
        ("GET", "/v1/support/sessions/nope/events", {}, 404),
        ("GET", f"{s}/events?after=latest", {}, 400),
        *[("POST", f"{s}/csat", {"json": {"rating": bad}}, 422) for bad in (0, 6, -1, "5", 4.5, True, None)],
        ("POST", f"{s}/csat", {"json": {}}, 422),
        ("POST", f"{s}/csat", {"json": {"rating": 5, "comment": "x" * 1001}}, 422),
        ("POST", f"{s}/csat", {"json": {"rating": 5}}, 409),  # taken, not closed: nothing to rate yet
        ("POST", f"/v1/support/sessions/{missing_session}/csat", {"json": {"rating": 5}}, 404),
        *[
            ("POST", f"{s}/contact", {"json": {"email": bad}}, 422)
            for bad in ("", "jane", "jane@example", "jane@@example.com", "a b@example.com", 42, None)
        ],
        ("POST", f"{s}/contact", {"json": {"email": "jane@example.com", "name": "Jane"}}, 422),
        ("POST", f"/v1/support/sessions/{fresh}/contact", {"json": {"email": "jane@example.com"}}, 409),
        ("POST", f"/v1/support/sessions/{missing_session}/contact", {"json": {"email": "jane@example.com"}}, 404),
        ("POST", f"{s}/messages", {"json": {"message": ""}}, 400),
        ("POST", f"{s}/messages", {"json": {"message": "x" * 2001}}, 413),
    ]
    for method, url, kwargs, status in cases:
        headers = {**ADMIN, **KEY, **kwargs.pop("headers", {})}
        r = client.request(method, url, headers=headers, **kwargs)
        assert r.status_code == status, (method, url, r.status_code, r.text)
        error(r, status)
    # and without the keys
    for method, url, body in [
        ("GET", "/v1/support/handoffs", None),
        ("GET", h, None),
        ("POST", f"{h}/take", {"agent": "Dana"}),
        ("POST", f"{h}/messages", {"agent": "Dana", "text": "hi"}),
        ("POST", f"{h}/close", {"agent": "Dana"}),
        ("GET", "/v1/support/inbox/events", None),
        ("GET", "/v1/support/analytics", None),
    ]:
        error(client.request(method, url, json=body, headers={**KEY, "X-Admin-Key": "wrong"}), 401)
    for url, body in [(f"{s}/csat", {"rating": 5}), (f"{s}/contact", {"email": "jane@example.com"})]:
        error(client.post(url, json=body, headers={"X-Support-Key": "pk_wrong"}), 401)
    error(client.get(f"{s}/events", headers={"X-Support-Key": "pk_wrong"}), 401)
    assert raw_dump(inbox) == before


def test_the_inbox_page_is_served(client: TestClient) -> None:
    page = client.get("/inbox")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/inbox/inbox.js" in page.text and page.headers["x-frame-options"] == "DENY"
    script = client.get("/inbox/inbox.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
