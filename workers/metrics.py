"""A worker's Prometheus metrics: its tasks, its deliveries, and its engine, on a port of its own.

Why an HTTP exporter per worker process, not the API's /metrics: a worker is another process, often
on another machine (a GPU box consuming ``enrich``), and runs the model too, so its engine counters
(tokens per adapter, batches, queue wait) live in its own memory. The default pool is threads: one
process, one registry, so the exporter serves that registry as it is, with no shared files. A worker
takes the first free port from ``DOMAINLLM_OPS_WORKER_METRICS_PORT`` (9540) on, so the worker and the
trainer of one host answer on 9540 and 9541; each writes its port into its heartbeat
(``apps.replicas``), which ``domainllm doctor`` lists.

For a prefork pool (``-P prefork``) the tasks run in child processes: set ``PROMETHEUS_MULTIPROC_DIR``
to an empty folder before the worker starts, and the exporter serves prometheus_client's
multiprocess collector over the children's files (each child's files are marked dead when it exits).

Task metrics come from Celery's signals (no task changes): every task's runs by final state, its
duration, how long its message waited (sent to started, from the send time our publisher stamps,
after any countdown), and the outcomes of alert deliveries and support webhooks, from their results.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from apps.http.logging import TASK_SENT_AT
from apps.kpis import QUEUES
from apps.ops_settings import OpsSettings
from apps.sentiment import dispatch as names
from apps.sentiment.delivery import TARGETS
from apps.support import webhook as support_webhook

log = logging.getLogger(__name__)

TASKS = Counter(
    "domainllm_celery_tasks_total", "Task runs by final state (success, failure, retry, ...)", ["task", "state"]
)
TASK_SECONDS = Histogram(
    "domainllm_celery_task_duration_seconds",
    "Wall time of one task run",
    ["task"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600),
)
TASK_WAIT = Histogram(
    "domainllm_celery_task_wait_seconds",
    "Time a task's message waited in its queue: sent (or due, after a countdown) to started",
    ["queue"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600),
)
TASKS_RUNNING = Gauge("domainllm_celery_tasks_running", "Tasks running now in this worker", ["task"])
ALERT_DELIVERIES = Counter(
    "domainllm_alert_deliveries_total",
    "Alert delivery attempts by target and result: sent, already (sent before), retry, dead (gave up)",
    ["target", "result"],
)
SUPPORT_WEBHOOKS = Counter(
    "domainllm_support_webhooks_total",
    "Support handoff events to the helpdesk by result: sent, no_target, rejected, retry, dead",
    ["result"],
)

_started: dict[str, float] = {}
_lock = threading.Lock()
_port: int | None = None


def _queue_of(task: Any) -> str:
    info = getattr(task.request, "delivery_info", None) or {}
    queue = info.get("routing_key") or info.get("exchange") or ""
    return queue if queue in QUEUES else "other"


def _due_at(task: Any) -> float | None:
    """When the message became due: its send time, or its ETA when a countdown put that later."""
    sent = task.request.get(TASK_SENT_AT)
    if not isinstance(sent, int | float):
        return None
    eta = task.request.eta
    if isinstance(eta, str):
        try:
            return max(float(sent), datetime.fromisoformat(eta).timestamp())
        except ValueError:
            return float(sent)
    return float(sent)


def on_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task is None or task_id is None:
        return
    now = time.time()
    with _lock:
        _started[task_id] = time.perf_counter()
    TASKS_RUNNING.labels(task.name).inc()
    due = _due_at(task)
    if due is not None:
        TASK_WAIT.labels(_queue_of(task)).observe(max(0.0, now - due))


def on_postrun(
    task_id: str | None = None, task: Any = None, retval: Any = None, state: str | None = None, **_: Any
) -> None:
    if task is None or task_id is None:
        return
    with _lock:
        started = _started.pop(task_id, None)
    if started is not None:
        TASKS_RUNNING.labels(task.name).dec()
        TASK_SECONDS.labels(task.name).observe(time.perf_counter() - started)
    final = (state or "unknown").lower()
    TASKS.labels(task.name, final).inc()
    if task.name == names.DELIVER:
        target = (task.request.kwargs or {}).get("target")
        target = target if target in TARGETS else "unknown"
        result = {"retry": "retry", "failure": "dead"}.get(final) or (
            retval if retval in ("sent", "already", "dead") else "other"
        )
        ALERT_DELIVERIES.labels(target, result).inc()
    elif task.name == support_webhook.DELIVER_TASK:
        outcome = {"sent": "sent", "no target": "no_target", "rejected": "rejected"}
        result = {"retry": "retry", "failure": "dead"}.get(final) or outcome.get(str(retval), "other")
        SUPPORT_WEBHOOKS.labels(result).inc()


def exporter_registry() -> CollectorRegistry:
    """What the exporter serves: this process's registry, or, with ``PROMETHEUS_MULTIPROC_DIR`` set
    (a prefork pool), the children's files merged."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def start_exporter(ops: OpsSettings) -> int | None:
    """Serve the metrics on the first free port of ``worker_metrics_ports`` from ``worker_metrics_port``;
    the port, or None (off, or every port taken: logged, and the worker runs on without it)."""
    global _port
    if _port is not None or ops.worker_metrics_port == 0:
        return _port
    registry = exporter_registry()
    last = min(65535, ops.worker_metrics_port + ops.worker_metrics_ports - 1)
    for port in range(ops.worker_metrics_port, last + 1):
        try:
            start_http_server(port, addr=ops.worker_metrics_host, registry=registry)
        except OSError:
            continue
        _port = port
        log.info("worker metrics on http://%s:%d/metrics", ops.worker_metrics_host, port)
        return port
    log.warning("worker metrics not served: ports %d-%d on %s are all taken (DOMAINLLM_OPS_WORKER_METRICS_PORT)",
                ops.worker_metrics_port, last, ops.worker_metrics_host)  # fmt: skip
    return None


def exporter_port() -> int | None:
    return _port


def mark_child_dead(pid: int | None = None, **_: Any) -> None:
    """A prefork child exited: its live gauges leave the multiprocess files."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())


def install() -> None:
    """Connect the task signals (once per process; every Celery app in it)."""
    from celery.signals import task_postrun, task_prerun, worker_process_shutdown

    task_prerun.connect(on_prerun, weak=False, dispatch_uid="domainllm.metrics.prerun")
    task_postrun.connect(on_postrun, weak=False, dispatch_uid="domainllm.metrics.postrun")
    worker_process_shutdown.connect(mark_child_dead, weak=False, dispatch_uid="domainllm.metrics.child_dead")
