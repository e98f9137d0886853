"""Request rates per key and per client address, counted in Redis by the ``limits`` library, so a
limit holds across every replica. A sliding-window counter: cheap (two counters per identity) and
without the burst a fixed window lets through at its edge.

Every keyed request counts against its client address (``DOMAINLLM_RATE_LIMIT_PER_IP``, also what
guards against key guessing: a refused key counts too) and then, once the key is known, against the
key (``DOMAINLLM_RATE_LIMIT_PER_KEY``): a busy tenant's backend cannot use up another's share. Over
either: 429 with ``Retry-After``. If Redis cannot be reached the limiter lets requests through (the
routes then answer 503 on their own): an outage of the counter must not refuse every customer.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from core.errors import RateLimitedError
from core.redis_client import sentinel_target

log = logging.getLogger(__name__)


def check_limit(text: str) -> str:
    """``text`` when it is a rate ("600/minute", "10/second", "5 per 10 seconds") or empty (off)."""
    if text.strip():
        parse(text)  # raises ValueError naming what is wrong
    return text


def storage_uri(redis_url: str) -> tuple[str, dict[str, Any]]:
    """The counters' storage URI and options; for a Redis behind Sentinel the ``limits`` form of its URL
    (the sentinels in the URI, the master's password and db as options, none sent to the sentinels),
    every read from the master."""
    target = sentinel_target(redis_url)
    if target is None:
        return redis_url, {}
    hosts = ",".join(f"{host}:{port}" for host, port in target.sentinels)
    options = {"use_replicas": False, "sentinel_kwargs": {"password": None}, **target.master_kwargs()}
    return f"redis+sentinel://{hosts}/{target.master}", options


class RateLimits:
    def __init__(self, redis_url: str, per_key: str, per_ip: str, *, namespace: str = "ratelimit") -> None:
        self.per_key: RateLimitItem | None = parse(per_key) if per_key.strip() else None
        self.per_ip: RateLimitItem | None = parse(per_ip) if per_ip.strip() else None
        self.namespace = namespace
        uri, options = storage_uri(redis_url)
        self._limiter = (
            SlidingWindowCounterRateLimiter(storage_from_string(uri, key_prefix=namespace, **options))
            if self.per_key or self.per_ip
            else None
        )

    def _hit(self, item: RateLimitItem | None, kind: str, identity: str) -> None:
        if item is None or self._limiter is None:
            return
        try:
            allowed = self._limiter.hit(item, kind, identity)
            if allowed:
                return
            reset = self._limiter.get_window_stats(item, kind, identity).reset_time
        except Exception as exc:  # the counter's store is down: let the request through
            log.warning("rate limiter unavailable (%s); not limiting", type(exc).__name__)
            return
        wait = max(1, math.ceil(reset - time.time()))
        raise RateLimitedError(f"over the {kind} rate limit of {item}; retry in {wait} s", retry_after_s=wait)

    def hit_ip(self, address: str) -> None:
        self._hit(self.per_ip, "address", address or "unknown")

    def hit_key(self, identity: str) -> None:
        self._hit(self.per_key, "key", identity)
