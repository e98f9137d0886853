"""Each tenant's daily token budget for generation (``DOMAINLLM_TENANT_DAILY_TOKENS``; 0: none).

    {tenancy_ns}:tokens:{tenant}:{YYYY-MM-DD}   string  prompt + completion tokens generated that UTC day

A chat or text completion is refused with 429 (``QuotaExceededError``, Retry-After: the seconds to
the next UTC midnight) once its tenant has spent the day's budget; each generation is counted when
it ends, streams cut short included (the tokens were computed). A request is checked before it
runs, so the last one of a day may go past the budget by its own size. One counter per tenant and
day in Redis holds across replicas and expires two days later. If Redis cannot be reached the
budget lets requests through (like the rate limiter): the generation routes still work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from apps.tenants.store import DEFAULT_TENANT
from core.errors import QuotaExceededError
from core.sampling import Completion

log = logging.getLogger(__name__)

KEY_TTL_S = 2 * 86_400  # a day's counter outlives its day, for whoever looks at yesterday


def seconds_to_utc_midnight(now: float) -> int:
    """Whole seconds from ``now`` (epoch) to the next 00:00 UTC, at least 1."""
    today = datetime.fromtimestamp(now, UTC).date()
    midnight = datetime(today.year, today.month, today.day, tzinfo=UTC) + timedelta(days=1)
    return max(1, int(midnight.timestamp() - now + 0.999))


class TokenBudget:
    def __init__(self, client: redis.Redis, daily_tokens: int, namespace: str) -> None:
        self.r = client
        self.daily_tokens = daily_tokens
        self.namespace = namespace

    @property
    def enabled(self) -> bool:
        return self.daily_tokens > 0

    def key(self, tenant: str, now: float) -> str:
        return f"{self.namespace}:tokens:{tenant}:{datetime.fromtimestamp(now, UTC).date().isoformat()}"

    def spent(self, tenant: str, now: float | None = None) -> int:
        value: Any = self.r.get(self.key(tenant, time.time() if now is None else now))
        return int(value or 0)

    def check(self, tenant: str, now: float | None = None) -> None:
        """Raise ``QuotaExceededError`` when ``tenant`` has spent today's budget."""
        if not self.enabled:
            return
        now = time.time() if now is None else now
        try:
            spent = self.spent(tenant, now)
        except redis.RedisError as exc:
            log.warning("token budget unavailable (%s); not enforcing it", type(exc).__name__)
            return
        if spent >= self.daily_tokens:
            wait = seconds_to_utc_midnight(now)
            raise QuotaExceededError(
                f"tenant {tenant!r} has used its {self.daily_tokens} tokens for today (UTC); "
                f"the budget renews in {wait} s (DOMAINLLM_TENANT_DAILY_TOKENS)",
                retry_after_s=wait,
            )

    def spend(self, tenant: str, tokens: int, now: float | None = None) -> int:
        """Add ``tokens`` to ``tenant``'s count for today; the new count."""
        key = self.key(tenant, time.time() if now is None else now)
        pipe = self.r.pipeline()
        pipe.incrby(key, tokens)
        pipe.expire(key, KEY_TTL_S)
        total, _ = pipe.execute()
        return int(total)


def tenant_of(request: Request) -> str:
    """The tenant of the request's key (``apps.tenants.auth`` sets the principal); "default" without one."""
    principal = getattr(request.state, "principal", None)
    return str(getattr(principal, "tenant", None) or DEFAULT_TENANT)


def budget_of(request: Request) -> TokenBudget:
    """The app's budget, on the Redis client of its current services (rebuilt with them)."""
    services = request.app.state.services
    cached: tuple[Any, TokenBudget] | None = getattr(request.app.state, "token_budget", None)
    if cached is None or cached[0] is not services:
        settings = request.app.state.settings
        budget = TokenBudget(services.redis.text, settings.tenant_daily_tokens, settings.tenancy_namespace)
        request.app.state.token_budget = cached = (services, budget)
    return cached[1]


async def check_budget(request: Request) -> None:
    """429 when the request's tenant has spent today's tokens (nothing to do when there is no budget)."""
    budget = budget_of(request)
    if budget.enabled:
        await run_in_threadpool(budget.check, tenant_of(request))


_pending: set[asyncio.Task[Any]] = set()  # counting tasks in flight (a task nobody holds may be collected)


def charge_when_done(request: Request, future: Future[Completion]) -> None:
    """Count the generation's prompt and completion tokens against its tenant once ``future`` ends
    (also when its client left mid-stream: the tokens were computed). A job cancelled while queued
    generated nothing and costs nothing."""
    budget = budget_of(request)
    if not budget.enabled:
        return
    tenant = tenant_of(request)
    loop = asyncio.get_running_loop()

    def spend(tokens: int) -> None:  # on the event loop; Redis on a thread
        task = asyncio.ensure_future(run_in_threadpool(_spend_logged, budget, tenant, tokens))
        _pending.add(task)
        task.add_done_callback(_pending.discard)

    def done(f: Future[Completion]) -> None:  # on the engine thread: hand over, never block it
        if f.cancelled() or f.exception() is not None:
            return
        completion = f.result()
        with contextlib.suppress(RuntimeError):  # RuntimeError: the loop closed (shutdown), nobody to count
            loop.call_soon_threadsafe(spend, completion.prompt_tokens + completion.completion_tokens)

    future.add_done_callback(done)


def _spend_logged(budget: TokenBudget, tenant: str, tokens: int) -> None:
    try:
        budget.spend(tenant, tokens)
    except redis.RedisError as exc:
        log.warning("token budget unavailable (%s); %d tokens of %s not counted", type(exc).__name__, tokens, tenant)
