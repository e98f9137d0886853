"""Replica heartbeats in Redis: which processes run (API replicas, workers, beat), what each consumes,
where its metrics are, and how far its clock is from Redis's.

    {ns}:replica:{id}   string  JSON: id, role, host, pid, queues, metrics_port, offset_s, rtt_s, at,
                                started_at; expires after three missed beats
    {ns}:replicas       zset    id -> the Redis time of its last beat (ids whose key expired are pruned)

Clock offsets are measured the way NTP does: read Redis's ``TIME`` between two local readings; the
offset is the local midpoint minus Redis's time, good to half the round trip. Redis's clock is only
the common ruler: what matters is the spread between replicas (beat schedules, alert cooldowns,
token expiries and the visibility timeout all compare one process's clock with another's).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

log = logging.getLogger(__name__)
TTL_BEATS = 3  # a replica is live while its last beat is younger than this many periods


@dataclass(frozen=True)
class Replica:
    id: str
    role: str  # api, worker, beat
    host: str
    pid: int
    offset_s: float  # its clock minus Redis's
    rtt_s: float  # the round trip the offset was measured over
    at: float  # Redis's time at its last beat
    started_at: float
    queues: list[str] = field(default_factory=list)
    metrics_port: int | None = None

    @classmethod
    def from_json(cls, raw: str) -> Replica:
        data = json.loads(raw)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def redis_time(client: redis.Redis) -> float:
    sec, usec = client.time()
    return int(sec) + int(usec) / 1e6


def measure_offset(client: redis.Redis, clock: Callable[[], float] = time.time) -> tuple[float, float]:
    """(this clock minus Redis's, the round trip) from one ``TIME`` between two local readings."""
    before = clock()
    server = redis_time(client)
    after = clock()
    return (before + after) / 2 - server, after - before


class Heartbeats:
    """The heartbeats of every replica, on one Redis client (bytes or str)."""

    def __init__(self, client: redis.Redis, namespace: str = "ops", clock: Callable[[], float] = time.time) -> None:
        self.r: Any = client
        self.ns = namespace
        self.clock = clock

    def key(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    def beat(
        self,
        role: str,
        *,
        period_s: float,
        replica_id: str | None = None,
        queues: Sequence[str] = (),
        metrics_port: int | None = None,
        started_at: float | None = None,
    ) -> Replica:
        """Record this process as live for ``TTL_BEATS`` periods; returns what was written."""
        offset, rtt = measure_offset(self.r, self.clock)
        now = self.clock() - offset  # Redis's time, near enough
        host, pid = socket.gethostname(), os.getpid()
        replica = Replica(
            id=replica_id or f"{role}:{host}:{pid}",
            role=role,
            host=host,
            pid=pid,
            offset_s=round(offset, 6),
            rtt_s=round(rtt, 6),
            at=now,
            started_at=started_at if started_at is not None else now,
            queues=sorted(queues),
            metrics_port=metrics_port,
        )
        ttl_ms = max(1000, int(period_s * TTL_BEATS * 1000))
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self.key("replica", replica.id), json.dumps(asdict(replica)), px=ttl_ms)
        pipe.zadd(self.key("replicas"), {replica.id: now})
        pipe.zremrangebyscore(self.key("replicas"), "-inf", now - 86400)  # ids gone for a day
        pipe.execute()
        return replica

    def live(self) -> list[Replica]:
        """Every replica whose heartbeat has not expired, by id."""
        ids = [i.decode() if isinstance(i, bytes) else i for i in self.r.zrange(self.key("replicas"), 0, -1)]
        if not ids:
            return []
        raws = self.r.mget([self.key("replica", i) for i in ids])
        gone = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
        if gone:
            self.r.zrem(self.key("replicas"), *gone)
        return [Replica.from_json(raw.decode() if isinstance(raw, bytes) else raw) for raw in raws if raw is not None]

    def forget(self, replica_id: str) -> None:
        """A replica that stops cleanly leaves at once, rather than after its heartbeat expires."""
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self.key("replica", replica_id))
        pipe.zrem(self.key("replicas"), replica_id)
        pipe.execute()


class HeartbeatThread:
    """Beats every ``period_s`` on a daemon thread until ``stop``; a Redis error is logged once per
    outage and the next beat tries again."""

    def __init__(
        self,
        heartbeats: Heartbeats,
        role: str,
        period_s: float,
        *,
        queues: Sequence[str] = (),
        metrics_port: int | None = None,
    ) -> None:
        self.heartbeats = heartbeats
        self.role = role
        self.period_s = period_s
        self.queues = list(queues)
        self.metrics_port = metrics_port
        self.replica_id = f"{role}:{socket.gethostname()}:{os.getpid()}"
        self.started_at = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{role}", daemon=True)
        self._failing = False

    def start(self) -> HeartbeatThread:
        self._thread.start()
        return self

    def beat_once(self) -> Replica | None:
        try:
            replica = self.heartbeats.beat(
                self.role,
                period_s=self.period_s,
                replica_id=self.replica_id,
                queues=self.queues,
                metrics_port=self.metrics_port,
                started_at=self.started_at,
            )
        except redis.RedisError as exc:
            if not self._failing:
                log.warning(
                    "heartbeat of %s not written (Redis: %s); retrying every %.0fs", self.role, exc, self.period_s
                )
            self._failing = True
            return None
        if self._failing:
            log.info("heartbeat of %s written again", self.role)
        self._failing = False
        return replica

    def _run(self) -> None:
        while True:
            self.beat_once()
            if self._stop.wait(self.period_s):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if not self._failing:  # else Redis is away, and the heartbeat expires by itself
            with contextlib.suppress(redis.RedisError):
                self.heartbeats.forget(self.replica_id)


def start_heartbeat(
    client: redis.Redis,
    role: str,
    *,
    period_s: float,
    namespace: str = "ops",
    queues: Sequence[str] = (),
    metrics_port: int | None = None,
) -> HeartbeatThread | None:
    """Start beating for this process (None when ``period_s`` is 0: heartbeats off)."""
    if period_s <= 0:
        return None
    return HeartbeatThread(
        Heartbeats(client, namespace), role, period_s, queues=queues, metrics_port=metrics_port
    ).start()
