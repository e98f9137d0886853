"""The team's own helpdesk, told about handoffs: one signed JSON POST per event, per tenant.

Events (``type``): ``handoff.opened`` (with the conversation so far and the passages the bot had),
``handoff.taken``, ``handoff.customer_message`` (the customer wrote while the handoff was active),
``handoff.closed`` and ``handoff.contact`` (nobody took it in time and the customer left an e-mail
address). Every payload carries the handoff's current summary, so a receiver that gets them out of
order (a retried delivery) can go by ``handoff.status`` and ``created_at``::

    {"id": "evt_…", "type": "handoff.opened", "created_at": 1712345678.9, "tenant": "default",
     "handoff": {"id", "session_id", "status", "reason", "question", "created_at", "taken_by", …},
     "conversation": [...], "passages": [...],      # handoff.opened
     "message": {"id", "role", "text", ...},        # handoff.customer_message
     "contact": {"email": "..."}}                   # handoff.contact

Headers: ``X-Domainllm-Event`` (the type), ``X-Domainllm-Event-Id`` (dedupe on it: a delivery may be
retried), ``X-Domainllm-Timestamp`` and ``X-Domainllm-Signature: sha256=<hex>``, the HMAC-SHA256 of
``"{timestamp}.{body}"`` under ``DOMAINLLM_SUPPORT_WEBHOOK_SECRET`` (``apps.http.signing``).

Delivery runs in the worker (``support.deliver_webhook`` on the ``alerts`` queue): the API only
enqueues, so a slow helpdesk never slows a chat. A transport error, 408, 429 or 5xx is retried with
exponential backoff; any other 4xx means the receiver refuses this event, and it is dropped (logged).
Payloads are never logged: they hold the customer's conversation and, for ``handoff.contact``, the
address the customer gave in order to be answered.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from celery import Celery

from apps.http.signing import signed_headers
from apps.support.settings import SupportSettings
from core.errors import DomainLLMError

log = logging.getLogger(__name__)

DELIVER_TASK = "support.deliver_webhook"
DELIVER_QUEUE = "alerts"  # delivery work, beside the sentiment alerts: every worker already consumes it
EVENT_TYPES = (
    "handoff.opened",
    "handoff.taken",
    "handoff.customer_message",
    "handoff.closed",
    "handoff.contact",
)
RETRIED_STATUSES = {408, 425, 429}


class WebhookDeliveryError(DomainLLMError):
    """The receiver could not be reached or failed (5xx, 408, 429): the task retries."""

    error_type = "webhook_delivery_error"


class WebhookRejectedError(DomainLLMError):
    """The receiver refused the event (another 4xx): retrying would not help."""

    error_type = "webhook_rejected"


@dataclass(frozen=True)
class WebhookTarget:
    url: str
    secret: str
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("https://", "http://")):
            raise ValueError(f"a webhook URL must be http(s), got {self.url!r}")
        if not self.secret:
            raise ValueError("a webhook needs a secret to sign with")


def target_for(settings: SupportSettings, tenant: str) -> WebhookTarget | None:
    """Where a tenant's events go. Today: the one webhook in the settings, for every tenant there is
    (only ``default``); the tenants issue gives each tenant its own URL and secret here."""
    if not settings.webhook_url:
        return None
    return WebhookTarget(settings.webhook_url, settings.webhook_secret.get_secret_value(), settings.webhook_timeout_s)


def build_event(event_type: str, tenant: str, handoff: dict[str, Any], **extra: Any) -> dict[str, Any]:
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event {event_type!r}")
    summary = {k: v for k, v in handoff.items() if k not in ("conversation", "passages", "contact_email")}
    return {
        "id": "evt_" + uuid.uuid4().hex,
        "type": event_type,
        "created_at": round(time.time(), 3),
        "tenant": tenant,
        "handoff": summary,
        **extra,
    }


def deliver(event: dict[str, Any], target: WebhookTarget, client: httpx.Client | None = None) -> int:
    """POST one signed event; the receiver's status on success. Raises ``WebhookDeliveryError`` (to
    be retried) or ``WebhookRejectedError`` (not to be)."""
    body = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "domainllm-support-webhook/1",
        "X-Domainllm-Event": str(event.get("type", "")),
        "X-Domainllm-Event-Id": str(event.get("id", "")),
        **signed_headers(target.secret, body),
    }
    what = f"webhook {event.get('type')} {event.get('id')}"
    try:
        if client is None:
            response = httpx.post(target.url, content=body, headers=headers, timeout=target.timeout_s)
        else:
            response = client.post(target.url, content=body, headers=headers, timeout=target.timeout_s)
    except httpx.HTTPError as exc:
        raise WebhookDeliveryError(f"{what}: {target.url} unreachable: {type(exc).__name__}") from None
    status = response.status_code
    if status < 300:
        log.info("%s delivered: HTTP %d", what, status)
        return status
    if status >= 500 or status in RETRIED_STATUSES:
        raise WebhookDeliveryError(f"{what}: {target.url} answered HTTP {status}")
    raise WebhookRejectedError(f"{what}: {target.url} refused it with HTTP {status}")


class WebhookQueue(Protocol):
    """Hands an event to whatever delivers it (the worker in production, a list in tests)."""

    def enqueue(self, event: dict[str, Any]) -> None: ...


class CeleryWebhookQueue:
    """Sends each event to the worker's ``support.deliver_webhook`` task; the Celery app only sends
    (no task modules, no result backend), so the API never imports ``workers``."""

    def __init__(self, broker_url: str) -> None:
        self.app = Celery("domainllm-support-client", broker=broker_url, set_as_current=False)

    def enqueue(self, event: dict[str, Any]) -> None:
        self.app.send_task(DELIVER_TASK, kwargs={"event": event}, queue=DELIVER_QUEUE)
