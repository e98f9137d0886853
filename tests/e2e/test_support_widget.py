"""The support widget in a real browser against the real server: the demo help-centre page at "/",
the launcher, an answer streamed token by token with its sources, feedback that lands in the stats,
and the hand-off to a person. The last tests stub single API answers (page.route) to check that the
widget shows errors and never renders server text as HTML."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import pytest

from core.config import PROJECT_ROOT

if TYPE_CHECKING:
    from playwright.sync_api import Page, Route

    from tests.e2e.conftest import SupportServer

expect = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing (`make setup`)").expect

pytestmark = pytest.mark.e2e

QUESTION = "How long does shipping to the UK take?"
ANSWER_TIMEOUT_MS = 180_000  # the real model on a CPU, maybe beside other work
SCREENSHOT = PROJECT_ROOT / "docs" / "screenshots" / "support-widget.png"
MESSAGES = "**/v1/support/sessions/*/messages"


def open_widget(page: Page) -> None:
    page.goto("/")
    launcher = page.get_by_test_id("support-launcher")
    expect(launcher).to_have_attribute("aria-expanded", "false")
    launcher.click()
    expect(launcher).to_have_attribute("aria-expanded", "true")
    expect(page.get_by_test_id("support-panel")).to_be_visible()
    expect(page.get_by_test_id("support-input")).to_be_focused()


def ask(page: Page, question: str) -> None:
    box = page.get_by_test_id("support-input")
    box.fill(question)
    box.press("Enter")
    expect(page.get_by_test_id("message-user").last).to_have_text(question)


def session_ids(page: Page) -> list[str]:
    ids: list[str] = page.evaluate(
        "() => Object.keys(sessionStorage).filter(k => k.startsWith('support-session:')).map(k => sessionStorage[k])"
    )
    return ids


def test_widget_streams_an_answer_with_sources_and_takes_feedback(page: Page, support_server: SupportServer) -> None:
    before = support_server.stats()["feedback"]
    open_widget(page)
    page.wait_for_function("() => Object.keys(sessionStorage).some(k => k.startsWith('support-session:'))")
    assert len(session_ids(page)) == 1  # made on first open, kept for the tab

    ask(page, QUESTION)
    answer = page.get_by_test_id("message-assistant").last
    expect(answer).to_have_attribute("data-state", "done", timeout=ANSWER_TIMEOUT_MS)
    assert answer.get_by_test_id("message-text").inner_text().strip()
    assert int(answer.get_attribute("data-token-count") or 0) > 1  # streamed, not one blob
    assert answer.get_attribute("data-message-id")

    link = answer.get_by_test_id("source-link").first
    expect(link).to_be_visible()
    expect(link).to_have_text(re.compile(r"^\[\d+\] \S"))
    expect(link).to_have_attribute("target", "_blank")
    href = link.get_attribute("href") or ""
    assert re.search(r"/help/[\w.-]+$", href), href
    with support_server.client() as http:
        article = http.get(href)
    assert article.status_code == 200 and "text/html" in article.headers["content-type"], article.text[:300]

    up = answer.get_by_test_id("thumbs-up")
    up.click()
    expect(answer.get_by_test_id("feedback-thanks")).to_have_text("Thanks for your feedback")
    expect(up).to_be_disabled()
    expect(answer.get_by_test_id("thumbs-down")).to_be_disabled()
    expect(up).to_have_attribute("aria-pressed", "true")

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))

    after = support_server.stats()
    assert after["feedback"]["up"] == before["up"] + 1
    assert after["feedback"]["down"] == before["down"]
    if before == {"up": 0, "down": 0}:  # a fresh server: this was the only rating
        assert after["thumbs_up_rate"] == 1.0


def test_talk_to_a_person_opens_a_handoff(page: Page, support_server: SupportServer) -> None:
    open_widget(page)
    button = page.get_by_test_id("support-handoff")
    expect(button).to_have_attribute("aria-label", "Talk to a person")
    button.click()
    notice = page.get_by_test_id("handoff-message")
    expect(notice).to_be_visible()
    assert notice.inner_text().strip()
    expect(button).to_be_disabled()
    handoff_id = notice.get_attribute("data-handoff-id")
    assert handoff_id
    with support_server.client() as http:
        r = http.get("/v1/support/handoffs")
    assert r.status_code == 200, r.text
    assert handoff_id in r.text


def test_host_page_styles_do_not_reach_the_widget(page: Page, support_server: SupportServer) -> None:
    page.goto("/")
    # the demo page paints every <button> yellow with a black border; the widget's shadow root keeps its own look
    launcher = page.get_by_test_id("support-launcher")
    assert launcher.evaluate("b => getComputedStyle(b).backgroundColor") != "rgb(255, 255, 0)"
    assert launcher.evaluate("b => getComputedStyle(b).borderTopWidth") == "0px"


def test_api_errors_are_shown_in_the_panel(page: Page, support_server: SupportServer) -> None:
    def refuse(route: Route) -> None:
        body = {"error": {"type": "overloaded", "message": "The assistant is busy, please retry in a minute."}}
        route.fulfill(status=503, content_type="application/json", body=json.dumps(body))

    page.route(MESSAGES, refuse)
    open_widget(page)
    ask(page, QUESTION)
    expect(page.get_by_test_id("message-error")).to_have_text("The assistant is busy, please retry in a minute.")
    expect(page.get_by_test_id("support-send")).to_be_enabled()  # and the customer can try again


def test_stream_error_event_is_shown(page: Page, support_server: SupportServer) -> None:
    stream = 'event: token\ndata: {"text": "Ship"}\n\nevent: error\ndata: {"error": {"type": "internal", "message": "The model stopped."}}\n\n'
    page.route(MESSAGES, lambda route: route.fulfill(status=200, content_type="text/event-stream", body=stream))
    open_widget(page)
    ask(page, QUESTION)
    expect(page.get_by_test_id("message-error")).to_have_text("The model stopped.")
    expect(page.get_by_test_id("message-assistant").last).to_have_attribute("data-state", "error")


def test_server_text_is_never_rendered_as_html(page: Page, support_server: SupportServer) -> None:
    evil = '<img src=x onerror="window.__pwned=1">'
    final = {
        "message_id": "m-1",
        "answer": f"Plain text {evil}",
        "citations": [
            {"n": 1, "doc_id": "a", "title": evil, "url": "/help/a"},
            {"n": 2, "doc_id": "b", "title": "Script link", "url": "javascript:window.__pwned=1"},
        ],
        "confidence": 0.2,
        "intent": "shipping",
        "handoff": False,
        "source": "extracted",
    }
    tokens = "".join(f"event: token\r\ndata: {json.dumps({'text': t})}\r\n\r\n" for t in ["Plain ", "text ", evil])
    stream = f": ping\r\n\r\n{tokens}event: final\r\ndata: {json.dumps(final)}\r\n\r\n"
    page.route(MESSAGES, lambda route: route.fulfill(status=200, content_type="text/event-stream", body=stream))
    open_widget(page)
    ask(page, QUESTION)
    answer = page.get_by_test_id("message-assistant").last
    expect(answer).to_have_attribute("data-state", "done")
    expect(answer.get_by_test_id("message-text")).to_have_text(f"Plain text {evil}")
    assert answer.get_attribute("data-token-count") == "3"
    assert answer.locator("img").count() == 0
    links = answer.get_by_test_id("source-link")
    expect(links).to_have_count(1)  # the javascript: URL is listed as text, not as a link
    expect(links).to_have_text(f"[1] {evil}")
    expect(answer.get_by_test_id("source-item")).to_have_text("[2] Script link")
    expect(answer.get_by_test_id("confidence-hint")).to_be_visible()
    assert page.evaluate("() => window.__pwned") is None
