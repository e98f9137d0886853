"""The handoff end to end, two people in two browser contexts against the real server: a customer
asks the widget something the help centre does not cover; the handoff shows up in the agent's
inbox within 2 s; the agent takes it and replies, and the reply appears in the widget; the
customer writes again and the bot stays silent; the agent closes, the customer rates it, and the
rating is recorded (checked through the API). Screenshots of both pages go to docs/screenshots."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import pytest

from core.config import PROJECT_ROOT
from tests.e2e.conftest import new_page
from tests.e2e.test_support_widget import ANSWER_TIMEOUT_MS, ask, open_widget, session_ids

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Route

    from tests.e2e.conftest import SupportServer

expect = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing (`make setup`)").expect

pytestmark = pytest.mark.e2e

OUT_OF_KB = "Do you sell winter tyres for my car?"
REPLY = "Hi, Dana here. We don't sell tyres, but our car-care kits fit most models."
FOLLOW_UP = "Thanks! Do the kits fit a 2019 Golf?"
INBOX_SHOT = PROJECT_ROOT / "docs" / "screenshots" / "support-inbox.png"
WIDGET_SHOT = PROJECT_ROOT / "docs" / "screenshots" / "support-widget-handoff.png"


def test_an_agent_takes_over_a_handed_off_conversation(browser: Browser, support_server: SupportServer) -> None:
    customer = new_page(browser, support_server)
    agent = new_page(browser, support_server, width=1440, height=900)
    try:
        # the agent signs in once; the key stays in the tab's sessionStorage
        agent.goto("/inbox")
        agent.get_by_test_id("inbox-key").fill(support_server.admin_key)
        agent.get_by_test_id("inbox-agent").fill("Dana")
        agent.get_by_test_id("inbox-open").click()
        expect(agent.get_by_test_id("inbox-live")).to_have_attribute("data-state", "live")
        expect(agent.get_by_test_id("inbox-signin")).to_be_hidden()

        # the customer asks something the help centre does not cover: the bot hands off
        open_widget(customer)
        ask(customer, OUT_OF_KB)
        answer = customer.get_by_test_id("message-assistant").last
        expect(answer).to_have_attribute("data-handoff", "true", timeout=ANSWER_TIMEOUT_MS)
        shown_at = time.monotonic()
        (session_id,) = session_ids(customer)
        expect(customer.get_by_test_id("support-panel")).to_have_attribute("data-live", "true")

        # ... and it appears in the inbox, live, within 2 s
        item = agent.get_by_test_id("handoff-item").filter(has_text=OUT_OF_KB)
        expect(item).to_be_visible(timeout=2_000)
        assert time.monotonic() - shown_at < 2.5
        handoff_id = item.get_attribute("data-handoff-id")
        assert handoff_id and item.get_attribute("data-status") == "open"
        with support_server.client() as http:
            record = http.get(f"/v1/support/handoffs/{handoff_id}").json()
        assert record["session_id"] == session_id

        item.click()
        detail = agent.get_by_test_id("handoff-detail")
        expect(detail.get_by_test_id("handoff-question")).to_have_text(OUT_OF_KB)
        expect(detail.get_by_test_id("handoff-reason")).to_have_text(f"reason: {record['reason']}")
        expect(detail.get_by_test_id("conversation-message").first).to_contain_text(OUT_OF_KB)
        if record["passages"]:
            expect(detail.get_by_test_id("passage")).to_have_count(len(record["passages"]))

        # the agent takes it and replies; the customer sees both
        detail.get_by_test_id("take-button").click()
        expect(customer.get_by_test_id("agent-joined")).to_have_text("Dana joined the conversation.")
        expect(detail.get_by_test_id("handoff-status")).to_have_text("taken")
        detail.get_by_test_id("reply-input").fill(REPLY)
        detail.get_by_test_id("reply-send").click()
        agent_message = customer.get_by_test_id("message-agent").last
        expect(agent_message).to_contain_text(REPLY)
        expect(agent_message).to_contain_text("Dana")

        # the customer writes again: it goes to Dana, and the bot says nothing
        bot_messages = customer.get_by_test_id("message-assistant").count()
        customer.get_by_test_id("support-input").fill(FOLLOW_UP)
        customer.get_by_test_id("support-input").press("Enter")
        sent = customer.get_by_test_id("message-user").last
        expect(sent.get_by_test_id("message-text")).to_have_text(FOLLOW_UP)
        expect(sent.get_by_test_id("message-delivered")).to_have_text("Sent to Dana")
        expect(detail.get_by_test_id("conversation-message").last).to_contain_text(FOLLOW_UP)
        customer.wait_for_timeout(1_000)
        assert customer.get_by_test_id("message-assistant").count() == bot_messages
        INBOX_SHOT.parent.mkdir(parents=True, exist_ok=True)
        agent.screenshot(path=str(INBOX_SHOT), full_page=True)

        # the agent closes; the customer is asked for a rating and gives one
        detail.get_by_test_id("close-button").click()
        expect(customer.get_by_test_id("handoff-closed")).to_have_text("Dana closed the conversation.")
        customer.get_by_test_id("csat-5").click()
        expect(customer.get_by_test_id("csat-thanks")).to_have_text("Thanks for rating us 5 out of 5.")
        customer.screenshot(path=str(WIDGET_SHOT))

        with support_server.client() as http:
            record = http.get(f"/v1/support/handoffs/{handoff_id}").json()
            report = http.get("/v1/support/analytics", params={"days": 1}).json()
        assert record["status"] == "closed" and record["taken_by"] == "Dana" and record["csat"] == 5
        after_handoff = [m for m in record["conversation"] if m["created_at"] > record["taken_at"]]
        assert [m["role"] for m in after_handoff] == ["agent", "user", "system"]  # no bot turn among them
        assert [m["text"] for m in after_handoff[:2]] == [REPLY, FOLLOW_UP]
        assert report["series"][-1]["csat"]["count"] >= 1 and report["series"][-1]["handed_off"] >= 1
        expect(detail.get_by_test_id("handoff-status")).to_have_text("closed")
    finally:
        customer.context.close()
        agent.context.close()


def test_the_widget_asks_for_an_email_when_nobody_is_free(browser: Browser, support_server: SupportServer) -> None:
    """The no-agent notice, with the stream and the contact route stubbed (the real timer is two
    minutes; the integration tests run it for real, across replicas)."""
    state = {"handoff": {"id": "a" * 16, "status": "open", "taken_by": None, "created_at": 1.0}, "csat_pending": None}
    notice = {"handoff_id": "a" * 16, "message": "Everyone is busy right now. Leave your e-mail.", "ask_email": True}
    stream = f"event: state\ndata: {json.dumps(state)}\n\nid: 1-0\nevent: no_agent\ndata: {json.dumps(notice)}\n\n"
    sent: list[Any] = []

    def contact(route: Route) -> None:
        sent.append(route.request.post_data_json)
        body = {"handoff_id": "a" * 16, "message": "Thanks: we'll answer you by e-mail."}
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    page = new_page(browser, support_server)
    try:
        page.route(
            "**/v1/support/sessions/*/events*",
            lambda r: r.fulfill(status=200, content_type="text/event-stream", body=stream),
        )
        page.route("**/v1/support/sessions/*/contact", contact)
        open_widget(page)
        page.get_by_test_id("support-handoff").click()
        expect(page.get_by_test_id("no-agent-notice")).to_contain_text("Everyone is busy right now.")
        page.get_by_test_id("contact-email").fill("jane@example.com")
        page.get_by_test_id("contact-send").click()
        expect(page.get_by_test_id("contact-thanks")).to_have_text("Thanks: we'll answer you by e-mail.")
        assert sent == [{"email": "jane@example.com"}]
        page.wait_for_timeout(1_200)  # the stub ends each stream; the widget resumes, and asks only once
        expect(page.get_by_test_id("no-agent-notice")).to_have_count(1)
    finally:
        page.context.close()
