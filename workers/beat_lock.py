"""A beat that sends its schedule only while it holds a Redis lock, so two beats never double-schedule.

celery-redbeat does this (and keeps the schedule in Redis); it is not a dependency here, and this is
the part of it that matters: ``LockedScheduler`` is Celery's own file-backed scheduler that, before
each tick, takes the lock (SET NX PX) or renews it if it is its own, in one Lua step. A second beat
started by mistake (or a standby) waits and checks every ``ttl/3`` seconds; when the holder stops
(it gives the lock up on a clean exit) or dies (the lock expires after ``ttl``), the standby takes
over. The one window left, a holder frozen for longer than the lease between its renewal and its
send, could send one tick twice; every scheduled task is idempotent.

    app.conf.beat_scheduler = "workers.beat_lock:LockedScheduler"
    app.conf.beat_lock_ttl_s = 30                  # the lease; renewed every ttl/3
    app.conf.beat_lock_key = "domainllm:beat:lock"  # on the broker's Redis (or beat_lock_url)
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from typing import Any

import redis
from celery.beat import PersistentScheduler

from core.redis_client import client_for

log = logging.getLogger(__name__)
DEFAULT_KEY = "domainllm:beat:lock"

_HOLD = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class BeatLock:
    """A lease in Redis: ``hold()`` takes it when free or renews it when ours."""

    def __init__(self, client: redis.Redis, key: str = DEFAULT_KEY, ttl_s: float = 30.0) -> None:
        self.key, self.ttl_ms = key, max(1, int(ttl_s * 1000))
        self.token = secrets.token_hex(8)
        self._hold = client.register_script(_HOLD)
        self._release = client.register_script(_RELEASE)

    def hold(self) -> bool:
        return bool(self._hold(keys=[self.key], args=[self.token, self.ttl_ms]))

    def release(self) -> None:
        self._release(keys=[self.key], args=[self.token])


class LockedScheduler(PersistentScheduler):
    """Celery's persistent scheduler, ticking only while it holds the beat lock."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        conf = self.app.conf
        ttl_s = float(conf.get("beat_lock_ttl_s") or 30.0)
        client = client_for(conf.get("beat_lock_url") or conf.broker_url)
        self.lock = BeatLock(client, conf.get("beat_lock_key") or DEFAULT_KEY, ttl_s)
        self.check_every_s = ttl_s / 3
        self.holding: bool | None = None  # unknown until the first tick

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            held = self.lock.hold()
        except redis.RedisError as exc:  # Redis away: nobody can tell who holds the lock; send nothing
            log.warning("beat lock: Redis unreachable (%s); not sending", exc)
            held = False
        if held != self.holding:
            self.holding = held
            if held:
                log.info("beat lock %s taken: this beat sends the schedule", self.lock.key)
            else:
                log.warning("beat lock %s held by another beat: standing by", self.lock.key)
        if not held:
            return self.check_every_s
        return float(min(super().tick(*args, **kwargs), self.check_every_s))

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.holding:
                with contextlib.suppress(redis.RedisError):  # then the lease runs out by itself
                    self.lock.release()  # the standby takes over at its next check, not after the lease
                self.holding = False
