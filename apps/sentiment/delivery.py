"""Delivering an alert to one target: a signed webhook, an email over SMTP, or the log.

``deliver`` is idempotent per (alert, target): a target already reached is not sent again, so a
redelivered task or a resend of everything does not spam a receiver. Before sending, the worker
claims the (alert, target) with SET NX for ``delivery_time_limit_s`` (the task cannot run longer): a
second copy of the task running at the same time does not send; it raises ``DeliveryInProgress`` and
is retried later, when the first has recorded "sent" (then it stops) or has died and its claim has
expired (then it sends). A failure is recorded and the claim given up at once, so the retry can
proceed. It raises ``DeliveryError``; the Celery task retries it with backoff and, when retries run
out, dead-letters it (``AlertStore.record(..., "dead")``) to be sent again on request or by the
periodic retry.

What no claim can prevent: a worker that dies after the receiver got the alert and before "sent" is
recorded. The retry sends it again, so each target carries a fixed id to dedupe on: the webhook's
``X-Domainllm-Alert-Id`` and the e-mail's ``Message-ID`` (``message_id``: the same on every try).

Webhook signature (verify with ``verify_signature``): header ``X-Domainllm-Signature:
sha256=<hex>``, the HMAC-SHA256 under the shared secret of ``"{X-Domainllm-Timestamp}.{body}"``;
receivers should also refuse old timestamps (replays) and dedupe on ``X-Domainllm-Alert-Id``.
"""

from __future__ import annotations

import json
import logging
import smtplib
import time
from email.message import EmailMessage
from email.utils import formatdate

import httpx

# sign and verify_signature live in the shell (the support handoff webhook signs the same way); they are
# re-exported here for the receivers and tests that import them from this module.
from apps.http.egress import destination_problem, host_of
from apps.http.signing import sign, verify_signature  # noqa: F401
from apps.sentiment.alerts import Alert, AlertStore
from apps.sentiment.settings import SentimentSettings
from core.errors import DomainLLMError

log = logging.getLogger(__name__)
TARGETS = ("log", "webhook", "email")


class DeliveryError(DomainLLMError):
    """A target that could not be reached or refused the alert; retried, then dead-lettered."""

    error_type = "delivery_error"


class DeliveryInProgress(DeliveryError):
    """Another worker holds the claim on this delivery: not sent here; the task retries it later."""

    error_type = "delivery_in_progress"


def message_id(alert_id: str, target: str) -> str:
    """The e-mail Message-ID of one alert to one target, the same on every try: receivers (and mail
    servers) that dedupe on it drop a copy sent again by a retry."""
    return f"<{alert_id}.{target}@domainllm.local>"


def alert_text(alert: Alert) -> str:
    lines = [alert.message, "", f"rule: {alert.rule} ({alert.kind})  scope: {alert.scope}  id: {alert.id}", ""]
    lines += [f"{k}: {v}" for k, v in alert.numbers.items()]
    lines += ["", "items behind it:"]
    lines += [f"- [{i['label']}] {i['title']} {i.get('url') or ''}".rstrip() for i in alert.items]
    return "\n".join(lines)


def send_webhook(alert: Alert, settings: SentimentSettings) -> None:
    assert settings.webhook_url
    if settings.webhook_public_only:
        problem = destination_problem(settings.webhook_url)
        if problem:
            raise DeliveryError(f"webhook {host_of(settings.webhook_url)} refused: {problem}")
    body = json.dumps({"type": "sentiment.alert", "alert": alert.to_dict()}).encode()
    ts = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Domainllm-Alert-Id": alert.id,
        "X-Domainllm-Timestamp": ts,
        "X-Domainllm-Signature": sign(settings.webhook_secret.get_secret_value(), ts, body),
    }
    try:
        response = httpx.post(settings.webhook_url, content=body, headers=headers, timeout=settings.delivery_timeout_s)
    except httpx.HTTPError as exc:
        reason = str(exc).replace(settings.webhook_url, host_of(settings.webhook_url))
        raise DeliveryError(
            f"webhook {host_of(settings.webhook_url)} unreachable: {type(exc).__name__}: {reason}"
        ) from None
    if response.status_code >= 300:
        raise DeliveryError(f"webhook {host_of(settings.webhook_url)} answered HTTP {response.status_code}")


def send_email(alert: Alert, settings: SentimentSettings) -> None:
    assert settings.smtp_host
    msg = EmailMessage()
    msg["Subject"] = f"[{alert.severity}] {alert.message}"[:200]
    msg["From"] = settings.smtp_from
    msg["To"] = ", ".join(settings.smtp_to)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = message_id(alert.id, "email")
    msg["X-Domainllm-Alert-Id"] = alert.id
    msg.set_content(alert_text(alert))
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout_s) as smtp:
            smtp.send_message(msg)
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(
            f"SMTP {settings.smtp_host}:{settings.smtp_port} failed: {type(exc).__name__}: {exc}"
        ) from None


def _send(alert: Alert, target: str, settings: SentimentSettings) -> None:
    if target == "webhook":
        if not settings.webhook_url:
            raise DeliveryError("no webhook configured (DOMAINLLM_SENTIMENT_WEBHOOK_URL)")
        send_webhook(alert, settings)
    elif target == "email":
        if not settings.smtp_host:
            raise DeliveryError("no SMTP server configured (DOMAINLLM_SENTIMENT_SMTP_HOST)")
        send_email(alert, settings)
    else:
        log.warning("ALERT %s [%s] %s", alert.id, alert.severity, alert.message)


def deliver(alerts: AlertStore, alert_id: str, target: str, settings: SentimentSettings) -> str:
    """Send one alert to one target unless it already reached it: "sent" or "already". Raises
    ``DeliveryInProgress`` (not sent) while another worker holds the claim on it."""
    if target not in TARGETS:
        raise DeliveryError(f"unknown delivery target {target!r}; known: {', '.join(TARGETS)}")
    alert = alerts.get(alert_id)
    if alert is None:
        raise DeliveryError(f"alert {alert_id} does not exist")
    if alerts.delivered(alert_id, target):
        return "already"
    token = alerts.claim(alert_id, target, settings.delivery_time_limit_s)
    if token is None:
        raise DeliveryInProgress(f"alert {alert_id} to {target}: another worker is sending it")
    try:
        if alerts.delivered(alert_id, target):  # sent by the claim's last holder since we looked
            return "already"
        try:
            _send(alert, target, settings)
        except DeliveryError as exc:
            alerts.record(alert_id, target, "failed", exc.message)
            raise
        alerts.record(alert_id, target, "sent")
        return "sent"
    finally:
        alerts.unclaim(alert_id, target, token)
