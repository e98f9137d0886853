"""A tenant's own delivery targets: the webhook its sentiment alerts go to, and the one its support
handoff events go to (its helpdesk). Set by the tenant's admin; write-only.

    targets = DeliveryTargets(redis_text_client, "tenancy")
    targets.set("acme", "alerts", "https://hooks.acme.example/alerts", secret)
    targets.get("acme", "alerts")       # Webhook(url, secret) for the worker that sends
    targets.public("acme")              # {"alerts": {"host": "hooks.acme.example", "set_at": ...}, ...}

The URL of a Slack-style webhook is itself a secret, so the API never shows it back: only its host
and when it was set. Each URL is checked when it is set and again before every send
(``apps.http.egress``): public addresses only, unless the operator allows private ones
(``DOMAINLLM_TENANT_WEBHOOKS_ALLOW_PRIVATE``, for tests and closed networks).

The default tenant's targets stay in the settings (``DOMAINLLM_SENTIMENT_WEBHOOK_URL``,
``DOMAINLLM_SUPPORT_WEBHOOK_URL``); these are every other tenant's.

Keys (``{ns}`` is the tenancy namespace):

    {ns}:delivery:{tenant}     hash   {kind}.url, {kind}.secret, {kind}.set_at   (kind: alerts, handoffs)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis

from apps.http.egress import destination_problem, host_of
from apps.tenants.store import check_tenant_id
from core.errors import InvalidRequestError

KINDS = {"alerts": "sentiment alerts", "handoffs": "support handoff events"}
MIN_SECRET_CHARS = 16


@dataclass(frozen=True)
class Webhook:
    url: str
    secret: str = field(repr=False)


def check_webhook(url: str, secret: str, *, allow_private: bool) -> None:
    """Refuse (400) a webhook the server must not send to, or a secret too short to sign with."""
    if len(url) > 2000:
        raise InvalidRequestError("the webhook URL is longer than 2000 characters")
    if not url.startswith("https://") and not (allow_private and url.startswith("http://")):
        raise InvalidRequestError("a webhook URL must start with https://")
    if not allow_private:
        problem = destination_problem(url)
        if problem:
            raise InvalidRequestError(f"the webhook URL is refused: {problem}")
    if len(secret) < MIN_SECRET_CHARS:
        raise InvalidRequestError(f"the webhook secret must hold at least {MIN_SECRET_CHARS} characters")


class DeliveryTargets:
    def __init__(self, client: redis.Redis, namespace: str = "tenancy", *, allow_private: bool = False) -> None:
        self.r = client
        self.ns = namespace
        self.allow_private = allow_private

    def _key(self, tenant: str) -> str:
        return f"{self.ns}:delivery:{check_tenant_id(tenant)}"

    @staticmethod
    def _kind(kind: str) -> str:
        if kind not in KINDS:
            raise InvalidRequestError(f"unknown delivery target {kind!r}; known: {', '.join(KINDS)}")
        return kind

    @staticmethod
    def _text(value: Any) -> str:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    def set(self, tenant: str, kind: str, url: str, secret: str) -> dict[str, Any]:
        check_webhook(url, secret, allow_private=self.allow_private)
        kind = self._kind(kind)
        now = round(time.time(), 3)
        self.r.hset(self._key(tenant), mapping={f"{kind}.url": url, f"{kind}.secret": secret, f"{kind}.set_at": now})
        return {"host": host_of(url), "set_at": now}

    def clear(self, tenant: str, kind: str) -> bool:
        kind = self._kind(kind)
        return bool(self.r.hdel(self._key(tenant), f"{kind}.url", f"{kind}.secret", f"{kind}.set_at"))

    def get(self, tenant: str, kind: str) -> Webhook | None:
        url, secret = self.r.hmget(self._key(tenant), f"{self._kind(kind)}.url", f"{kind}.secret")
        return Webhook(self._text(url), self._text(secret)) if url and secret else None

    def public(self, tenant: str) -> dict[str, Any]:
        """What the API shows: per kind, the host and when it was set, or None. Never the URL or secret."""
        raw = {self._text(k): self._text(v) for k, v in self.r.hgetall(self._key(tenant)).items()}
        return {
            kind: {"host": host_of(raw[f"{kind}.url"]), "set_at": float(raw.get(f"{kind}.set_at", 0))}
            if raw.get(f"{kind}.url")
            else None
            for kind in KINDS
        }

    def send_problem(self, url: str) -> str | None:
        """Checked again right before a send: the host may resolve elsewhere now."""
        return None if self.allow_private else destination_problem(url)
