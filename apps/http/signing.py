"""Signing outbound webhooks, shared by every app that sends them (sentiment alerts, support handoffs).

The scheme is Stripe's and Slack's: the sender puts a Unix timestamp in ``X-Domainllm-Timestamp`` and
``sha256=<hex>`` in ``X-Domainllm-Signature``, the HMAC-SHA256 under the shared secret of
``"{timestamp}.{raw body}"``. A receiver recomputes it over the bytes it received, compares in
constant time, and refuses old timestamps so that a captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Domainllm-Signature"
TIMESTAMP_HEADER = "X-Domainllm-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(secret: str, timestamp: str, body: bytes, signature: str, max_age_s: float = 300) -> bool:
    try:
        fresh = abs(time.time() - float(timestamp)) <= max_age_s
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


def signed_headers(secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The timestamp and signature headers for ``body``, signed now."""
    ts = str(int(time.time() if now is None else now))
    return {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: sign(secret, ts, body)}
