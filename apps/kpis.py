"""The apps' KPIs, read from Redis when Prometheus scrapes /metrics (a custom collector).

What every replica and worker writes to Redis is the truth across processes, so it is read there,
not counted again in each process: support (sessions, bot answers, answered, handoffs, thumbs, the
handoffs waiting), sentiment alerts (stored, waiting in the outbox, dead-lettered), recommend
(requests, impressions and clicks by source), the Celery queues (length, age of the oldest message,
unacknowledged) and the live replicas with the spread of their clocks. Names and meanings:
docs/operations.md.

Cost is bounded: one pipelined round trip for the tenants (at most ``kpi_max_tenants``), one for the
queues and replicas, and a scrape within ``kpi_cache_s`` of the last reuses its reads. A Redis that
is down gives ``domainllm_kpi_up 0`` and no KPI series, never a failed scrape.

Each replica reports the same values: aggregate with ``max``, never ``sum``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from apps.http.logging import TASK_SENT_AT
from apps.ops_settings import OpsSettings
from apps.replicas import Heartbeats
from apps.sentiment.alerts import AlertStore
from apps.sentiment.dispatch import QUEUE_OF
from apps.settings import AppSettings
from apps.support.conversations import ConversationStore
from apps.support.handoffs import ACTIVE, HandoffDesk
from apps.support.webhook import DELIVER_QUEUE
from apps.tenants.store import DEFAULT_TENANT, TenantStore, tenant_namespace
from core.redis_client import NamespacedStore

log = logging.getLogger(__name__)

QUEUES = tuple(sorted({*QUEUE_OF.values(), DELIVER_QUEUE}))
# kombu's Redis transport: a queue is a list (LPUSH in, BRPOP out: the oldest is the last), with one
# more list per priority step under "{queue}\x06\x16{step}"; taken messages wait in the "unacked" hash
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)
UNACKED_KEY = "unacked"


@dataclass(frozen=True)
class QueueStats:
    name: str
    depth: int  # messages waiting
    oldest_age_s: float | None  # how long the oldest has waited (None: empty, or sent without our stamp)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _sent_at(raw: Any) -> float | None:
    """The send time our publisher stamped on a queued message (``apps.http.logging.stamp_task``)."""
    if raw is None:
        return None
    try:
        stamp = json.loads(_text(raw)).get("headers", {}).get(TASK_SENT_AT)
    except (ValueError, AttributeError):
        return None
    return float(stamp) if isinstance(stamp, int | float) else None


def queue_stats(client: redis.Redis, queues: Sequence[str] = QUEUES) -> tuple[list[QueueStats], int]:
    """Each Celery queue's length and the age of its oldest message, and the messages taken by a
    worker but not yet acknowledged, in one round trip."""
    pipe = client.pipeline(transaction=False)
    pipe.time()
    for q in queues:
        pipe.llen(q)
        for step in PRIORITY_STEPS:
            pipe.llen(f"{q}{PRIORITY_SEP}{step}")
        pipe.lindex(q, -1)
    pipe.hlen(UNACKED_KEY)
    results = pipe.execute()
    sec, usec = results[0]
    now = int(sec) + int(usec) / 1e6
    out, i = [], 1
    for q in queues:
        depth = sum(int(n) for n in results[i : i + 1 + len(PRIORITY_STEPS)])
        sent = _sent_at(results[i + 1 + len(PRIORITY_STEPS)])
        out.append(QueueStats(q, depth, max(0.0, now - sent) if sent is not None and depth else None))
        i += 2 + len(PRIORITY_STEPS)
    return out, int(results[i])


class _TenantKeys:
    """Where one tenant's counters live: the stores' own ``key`` functions, so the layout stays theirs."""

    def __init__(self, client: redis.Redis, settings: AppSettings, tenant: str) -> None:
        support = ConversationStore(client, tenant_namespace(settings.support.namespace, tenant))
        desk = HandoffDesk(support, tenant)
        alerts = AlertStore(client, tenant_namespace(settings.sentiment.namespace, tenant))
        recommend = NamespacedStore(client, tenant_namespace(settings.recommend.namespace, tenant))
        self.support_stats = support.key("stats")
        self.handoffs = [desk.key("handoffs", status) for status in ACTIVE]
        self.alerts = alerts.key("alerts")
        self.outbox = alerts.key("outbox")
        self.deadletter = alerts.key("deadletter")
        self.recommend_stats = recommend.key("stats")  # as RecommendService._key("stats")


class KpiCollector(Collector):
    """A Prometheus collector of the KPIs above, for one deployment's Redis and settings."""

    def __init__(
        self,
        client: redis.Redis,
        settings: AppSettings,
        ops: OpsSettings,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.r: Any = client
        self.settings = settings
        self.ops = ops
        self.monotonic = monotonic
        self._tenants = TenantStore(client, settings.tenancy_namespace)
        self._keys: dict[str, _TenantKeys] = {}
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None
        self._failing = False

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not read Redis

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            now = self.monotonic()
            if self._cached is None or now - self._cached[0] >= self.ops.kpi_cache_s:
                self._cached = (now, self._read())
            return list(self._cached[1])

    # ---- reading -------------------------------------------------------------------------------------

    def _read(self) -> list[Metric]:
        started = time.perf_counter()
        up = GaugeMetricFamily("domainllm_kpi_up", "1 when the last KPI read from Redis succeeded, else 0")
        try:
            families = self._families()
        except (redis.RedisError, OSError) as exc:
            if not self._failing:
                log.warning("KPIs not read: Redis: %s", exc)
            self._failing = True
            up.add_metric([], 0)
            return [up]
        self._failing = False
        up.add_metric([], 1)
        took = GaugeMetricFamily("domainllm_kpi_read_seconds", "How long the last KPI read from Redis took")
        took.add_metric([], time.perf_counter() - started)
        return [up, took, *families]

    def tenant_ids(self) -> list[str]:
        ids = {_text(t) for t in self.r.smembers(self._tenants._k("tenants"))} | {DEFAULT_TENANT}
        return sorted(ids)[: self.ops.kpi_max_tenants]

    def _keys_of(self, tenant: str) -> _TenantKeys:
        if tenant not in self._keys:
            self._keys[tenant] = _TenantKeys(self.r, self.settings, tenant)
        return self._keys[tenant]

    def _families(self) -> list[Metric]:
        tenants = self.tenant_ids()
        pipe = self.r.pipeline(transaction=False)
        for tenant in tenants:
            k = self._keys_of(tenant)
            pipe.hgetall(k.support_stats)
            for key in k.handoffs:
                pipe.zcard(key)
            pipe.zcard(k.alerts)
            pipe.zcard(k.outbox)
            pipe.zcard(k.deadletter)
            pipe.hgetall(k.recommend_stats)
        rows = iter(pipe.execute())
        f = _Families()
        for tenant in tenants:
            support = {_text(a): int(b) for a, b in next(rows).items()}
            for name in ("sessions", "messages", "answered", "handoffs"):
                f.support[name].add_metric([tenant], support.get(name, 0))
            for rating in ("up", "down"):
                f.feedback.add_metric([tenant, rating], support.get(f"feedback_{rating}", 0))
            for status in ACTIVE:
                f.waiting.add_metric([tenant, status], int(next(rows)))
            f.alerts.add_metric([tenant], int(next(rows)))
            f.outbox.add_metric([tenant], int(next(rows)))
            f.dead.add_metric([tenant], int(next(rows)))
            recommend = {_text(a): int(b) for a, b in next(rows).items()}
            f.requests.add_metric([tenant], recommend.get("requests", 0))
            for key, value in sorted(recommend.items()):
                metric, _, source = key.partition(":")
                if source and metric in f.by_source:
                    f.by_source[metric].add_metric([tenant, source], value)
        f.tenants.add_metric([], len(tenants))
        queues, unacked = queue_stats(self.r)
        for q in queues:
            f.queue_length.add_metric([q.name], q.depth)
            f.queue_age.add_metric([q.name], q.oldest_age_s or 0.0)
        f.unacked.add_metric([], unacked)
        self._replicas(f)
        return f.all()

    def _replicas(self, f: _Families) -> None:
        replicas = Heartbeats(self.r, self.ops.namespace).live()
        by_role: dict[str, int] = {}
        consumers = dict.fromkeys(QUEUES, 0)
        for rep in replicas:
            by_role[rep.role] = by_role.get(rep.role, 0) + 1
            if rep.role == "worker":
                for q in rep.queues:
                    if q in consumers:
                        consumers[q] += 1
        for q, n in consumers.items():
            f.consumers.add_metric([q], n)
        for role in sorted({"api", "worker", "beat", *by_role}):
            f.replicas.add_metric([role], by_role.get(role, 0))
        offsets = [rep.offset_s for rep in replicas]
        f.clock_spread.add_metric([], max(offsets) - min(offsets) if offsets else 0.0)


class _Families:
    """The metric families one read fills (see docs/operations.md for each)."""

    def __init__(self) -> None:
        t = ["tenant"]
        self.support = {
            "sessions": CounterMetricFamily("domainllm_support_sessions", "Support chat sessions started", labels=t),
            "messages": CounterMetricFamily(
                "domainllm_support_answers", "Bot turns with a counted outcome (answered or handed off)", labels=t
            ),
            "answered": CounterMetricFamily(
                "domainllm_support_answered", "Bot turns answered without a handoff (deflected)", labels=t
            ),
            "handoffs": CounterMetricFamily(
                "domainllm_support_handoffs", "Bot turns that handed the conversation to a person", labels=t
            ),
        }
        self.feedback = GaugeMetricFamily(
            "domainllm_support_feedback",
            "Answers rated by customers, by rating (a changed rating moves; a gauge)",
            labels=["tenant", "rating"],
        )
        self.waiting = GaugeMetricFamily(
            "domainllm_support_handoffs_active",
            "Handoffs open (waiting for an agent) or taken",
            labels=["tenant", "status"],
        )
        self.alerts = CounterMetricFamily("domainllm_sentiment_alerts", "Sentiment alerts fired (stored)", labels=t)
        self.outbox = GaugeMetricFamily(
            "domainllm_sentiment_alert_outbox", "Alert deliveries stored but not yet queued to a worker", labels=t
        )
        self.dead = GaugeMetricFamily(
            "domainllm_sentiment_dead_letters", "Alert deliveries that gave up after their retries", labels=t
        )
        self.requests = CounterMetricFamily("domainllm_recommend_requests", "Recommendation lists served", labels=t)
        self.by_source = {
            metric: CounterMetricFamily(
                f"domainllm_recommend_{metric}",
                f"Recommended items' {metric}, by ranking source",
                labels=["tenant", "source"],
            )
            for metric in ("impressions", "clicks", "carts", "purchases")
        }
        self.tenants = GaugeMetricFamily("domainllm_kpi_tenants", "Tenants whose KPIs were read")
        self.queue_length = GaugeMetricFamily(
            "domainllm_celery_queue_length", "Messages waiting in a Celery queue", labels=["queue"]
        )
        self.queue_age = GaugeMetricFamily(
            "domainllm_celery_queue_oldest_age_seconds",
            "How long the oldest waiting message has waited; 0 when empty",
            labels=["queue"],
        )
        self.unacked = GaugeMetricFamily(
            "domainllm_celery_unacked", "Messages taken by workers and not acknowledged yet"
        )
        self.consumers = GaugeMetricFamily(
            "domainllm_celery_queue_consumers",
            "Live workers consuming a queue (from their heartbeats)",
            labels=["queue"],
        )
        self.replicas = GaugeMetricFamily(
            "domainllm_replicas", "Live processes by role (from their heartbeats)", labels=["role"]
        )
        self.clock_spread = GaugeMetricFamily(
            "domainllm_replica_clock_spread_seconds", "Largest minus smallest clock offset among live replicas"
        )

    def all(self) -> list[Metric]:
        return [
            *self.support.values(),
            self.feedback,
            self.waiting,
            self.alerts,
            self.outbox,
            self.dead,
            self.requests,
            *self.by_source.values(),
            self.tenants,
            self.queue_length,
            self.queue_age,
            self.unacked,
            self.consumers,
            self.replicas,
            self.clock_spread,
        ]
