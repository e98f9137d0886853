"""The Celery app: broker, queues, reliability settings and the beat schedule, in one place.

    celery -A workers.celery_app worker -Q ingest,enrich,alerts     # everything, one process
    celery -A workers.celery_app worker -Q enrich                   # a model (GPU) worker
    celery -A workers.celery_app worker -Q train -c 1              # tenants' adapter training, one job at a time
    celery -A workers.celery_app beat

Queues: ``ingest`` (feeds, inbox, sweeper, the training-job reaper), ``enrich`` (the model work),
``alerts`` (monitor, outbox drain and delivery), ``train`` (a tenant's adapter training: acknowledged
on receipt, since a run outlasts the visibility timeout; a job whose worker dies is failed by the
reaper, never left running). Tasks are acknowledged after they finish (``acks_late``): a worker killed
mid-task leaves its message unacknowledged, and a live worker hands it out again once the visibility
timeout has passed (checked every few seconds: the ``unacked_restore_*`` transport options, which
need kombu >= 5.7.0; older kombu ignores them and checks every ~100 s); every task is idempotent, so
running it twice changes nothing. Every task has soft and hard time limits (``workers/tasks.py``).
The default pool is threads: one engine per process (loaded once, thread-safe), and concurrent
enrichment tasks share its micro-batches. The broker is the embedded Redis unless
``DOMAINLLM_REDIS_URL`` names another.

Beat sends the schedule only while it holds a Redis lock (``workers/beat_lock.py``): a second beat
stands by instead of double-scheduling, and takes over when the first stops.
"""

from __future__ import annotations

import logging
from typing import Any

import kombu
from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    beat_init,
    worker_init,
    worker_ready,
    worker_shutdown,
)

from apps.http.logging import configure_logging, install_task_request_ids, set_process_role
from apps.ops_settings import ops_settings
from apps.replicas import HeartbeatThread, start_heartbeat
from apps.sentiment import dispatch as names
from apps.settings import get_settings
from core.redis_client import celery_broker, connect
from workers import metrics as worker_metrics
from workers.redis_transport import transport_for

log = logging.getLogger(__name__)
KOMBU_RESTORE_OPTIONS = (5, 7)  # unacked_restore_interval / _throttle first shipped in kombu 5.7.0

# observability: the request id rides in each task's headers and is bound while it runs; task metrics
install_task_request_ids()
worker_metrics.install()
_heartbeat: dict[str, HeartbeatThread | None] = {"thread": None}


@after_setup_logger.connect
@after_setup_task_logger.connect
def _mask_pii(**_: Any) -> None:
    """Celery sets up its own handlers: mask personal data in the worker's and beat's logs too, and
    write JSON lines when ``DOMAINLLM_OPS_LOG_FORMAT=json``."""
    configure_logging(ops_settings(get_settings()).log_format)


@worker_init.connect
def _serve_metrics(**_: Any) -> None:
    """A worker serves its own metrics (``workers.metrics``): its tasks, and its engine's counters."""
    set_process_role("worker")
    worker_metrics.start_exporter(ops_settings(get_settings()))


def _beat(role: str, queues: list[str]) -> None:
    settings = get_settings()
    ops = ops_settings(settings)
    if _heartbeat["thread"] is None:
        client = connect(settings.effective_redis_url, decode=True)
        _heartbeat["thread"] = start_heartbeat(
            client, role, period_s=ops.heartbeat_s, namespace=ops.namespace, queues=queues,
            metrics_port=worker_metrics.exporter_port(),
        )  # fmt: skip


@worker_ready.connect
def _worker_heartbeat(sender: Any = None, **_: Any) -> None:
    """Heartbeats name the queues this worker consumes: doctor finds a queue nobody does."""
    _beat("worker", sorted(q.name for q in getattr(getattr(sender, "task_consumer", None), "queues", [])))


@beat_init.connect
def _beat_heartbeat(**_: Any) -> None:
    set_process_role("beat")
    _beat("beat", [])


@worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    thread, _heartbeat["thread"] = _heartbeat["thread"], None
    if thread is not None:
        thread.stop()


def _every(seconds: float, task: str) -> dict[str, object]:
    # a tick that waited longer than its period is stale: drop it rather than run a backlog
    return {"task": task, "schedule": seconds, "options": {"queue": names.QUEUE_OF[task], "expires": seconds}}


def make_app() -> Celery:
    core = get_settings()
    sentiment = core.sentiment
    broker = celery_broker(core.effective_redis_url)  # kombu's sentinel:// form for a Redis behind Sentinel
    app = Celery("domainllm", broker=broker.url, include=["workers.tasks"])
    if tuple(kombu.VERSION[:2]) < KOMBU_RESTORE_OPTIONS:
        log.warning("kombu %s ignores unacked_restore_interval: lost workers' tasks come back after ~100 s, "
                    "not the visibility timeout; install kombu>=5.7.0", kombu.__version__)  # fmt: skip
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue="ingest",
        task_routes={name: {"queue": queue} for name, queue in names.QUEUE_OF.items()},
        broker_transport=transport_for(broker.url),  # kombu's, surviving a Redis restart (workers/redis_transport.py)
        broker_use_ssl=broker.use_ssl,
        broker_transport_options={
            **broker.transport_options,
            "visibility_timeout": sentiment.visibility_timeout_s,
            # look for messages of lost workers every few seconds (kombu's default is ~100 s)
            "unacked_restore_interval": max(1, min(10, sentiment.visibility_timeout_s // 2)),
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        worker_pool="threads",
        worker_concurrency=4,
        timezone="UTC",
        beat_scheduler="workers.beat_lock:LockedScheduler",
        beat_lock_ttl_s=sentiment.beat_lock_ttl_s,
        beat_lock_url=core.effective_redis_url,
        beat_schedule={
            "poll-feeds": _every(sentiment.poll_interval_s, names.POLL_FEEDS),
            "scan-inbox": _every(sentiment.poll_interval_s, names.SCAN_INBOX),
            "monitor": _every(sentiment.monitor_interval_s, names.MONITOR),
            "sweep": _every(sentiment.sweep_interval_s, names.SWEEP),
            "retry-dead-letters": _every(sentiment.deadletter_retry_interval_s, names.RETRY_DEAD),
            "drain-outbox": _every(sentiment.outbox_interval_s, names.DRAIN_OUTBOX),
            "reap-training-jobs": _every(60, names.REAP_TRAINING),
        },
    )
    return app


app = make_app()
