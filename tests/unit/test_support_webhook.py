"""The support team's webhook: the signed request a receiver verifies, the events' shape, and which
failures are retried (transport, 408, 429, 5xx) and which are not (other 4xx)."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from apps.http.signing import sign, signed_headers, verify_signature
from apps.support.settings import SupportSettings
from apps.support.webhook import (
    WebhookDeliveryError,
    WebhookRejectedError,
    WebhookTarget,
    build_event,
    deliver,
    target_for,
)
from tests.doubles.redis import free_port
from tests.doubles.sentiment import WebhookReceiver

pytestmark = pytest.mark.unit

SECRET = "whsec-test-0123456789"
HANDOFF = {
    "id": "a" * 16,
    "session_id": "b" * 32,
    "status": "open",
    "reason": "no_match",
    "created_at": 1.0,
    "conversation": [{"role": "user", "text": "hi"}],
    "passages": [],
    "contact_email": "x@example.com",
}


def test_a_receiver_verifies_the_signed_event() -> None:
    event = build_event("handoff.opened", "default", HANDOFF, conversation=HANDOFF["conversation"])
    assert event["id"].startswith("evt_") and event["type"] == "handoff.opened" and event["tenant"] == "default"
    assert "conversation" not in event["handoff"] and "contact_email" not in event["handoff"]
    assert event["conversation"] == [{"role": "user", "text": "hi"}]
    with WebhookReceiver(SECRET) as receiver:
        assert deliver(event, WebhookTarget(receiver.url + "/hook", SECRET, 5)) == 204
        assert receiver.received == [event] and receiver.refused == 0
        with pytest.raises(WebhookRejectedError, match="401"):  # a wrong secret: the receiver refuses it
            deliver(event, WebhookTarget(receiver.url + "/hook", "another-secret", 5))
        assert receiver.refused == 1


def test_signatures_are_timestamped_and_cover_the_body() -> None:
    body = b'{"type":"handoff.closed"}'
    headers = signed_headers(SECRET, body)
    ts, signature = headers["X-Domainllm-Timestamp"], headers["X-Domainllm-Signature"]
    assert signature == sign(SECRET, ts, body) and signature.startswith("sha256=")
    assert verify_signature(SECRET, ts, body, signature)
    assert not verify_signature(SECRET, ts, body + b" ", signature)
    old = str(int(time.time()) - 3600)
    assert not verify_signature(SECRET, old, body, sign(SECRET, old, body))  # a replay


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, WebhookDeliveryError),
        (503, WebhookDeliveryError),
        (429, WebhookDeliveryError),
        (408, WebhookDeliveryError),
        (400, WebhookRejectedError),
        (404, WebhookRejectedError),
    ],
)
def test_which_failures_are_retried(status: int, error: type[Exception]) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status)

    event = build_event("handoff.taken", "default", HANDOFF)
    with httpx.Client(transport=httpx.MockTransport(answer)) as client, pytest.raises(error):
        deliver(event, WebhookTarget("https://helpdesk.example/hook", SECRET), client)
    request = seen[0]
    assert request.headers["X-Domainllm-Event"] == "handoff.taken"
    assert request.headers["X-Domainllm-Event-Id"] == event["id"]
    assert verify_signature(
        SECRET, request.headers["X-Domainllm-Timestamp"], request.content, request.headers["X-Domainllm-Signature"]
    )
    assert json.loads(request.content) == event


def test_an_unreachable_receiver_is_retried() -> None:
    target = WebhookTarget(f"http://127.0.0.1:{free_port()}/hook", SECRET, 2)
    with pytest.raises(WebhookDeliveryError, match="unreachable"):
        deliver(build_event("handoff.closed", "default", HANDOFF), target)


def test_the_target_comes_from_the_settings() -> None:
    assert target_for(SupportSettings(), "default") is None
    settings = SupportSettings(webhook_url="https://helpdesk.example/hook", webhook_secret=SECRET)
    target = target_for(settings, "default")
    assert target is not None and target.url == "https://helpdesk.example/hook" and target.secret == SECRET
    with pytest.raises(ValueError, match="real secret"):
        SupportSettings(webhook_url="https://helpdesk.example/hook")
    with pytest.raises(ValueError, match="http"):
        SupportSettings(webhook_url="ftp://helpdesk.example/hook", webhook_secret=SECRET)
    with pytest.raises(ValueError, match="unknown webhook event"):
        build_event("handoff.deleted", "default", HANDOFF)
