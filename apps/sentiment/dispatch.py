"""Handing work to the Celery workers, by task name, so ``apps`` never imports ``workers``.

The names and queues are defined here once; ``workers/tasks.py`` registers its tasks under them.
The API process and the CLI send with a bare client app (``client_app``) that knows only the broker.
Every task a process that imports this module sends, with any Celery app, carries the request id
bound where it is sent and its send time (``apps.http.logging.stamp_task``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from celery import Celery

from apps.http.logging import install_task_request_ids
from core.redis_client import celery_broker

POLL_FEEDS = "sentiment.poll_feeds"
SCAN_INBOX = "sentiment.scan_inbox"
ENRICH = "sentiment.enrich"
SWEEP = "sentiment.sweep"
MONITOR = "sentiment.monitor"
DELIVER = "sentiment.deliver"
RETRY_DEAD = "sentiment.retry_dead_letters"
DRAIN_OUTBOX = "sentiment.drain_outbox"
TRAIN = "adapters.train"  # a tenant's adapter training job (finetune.own), one at a time per worker
REAP_TRAINING = "adapters.reap_jobs"  # fail the training jobs whose worker died

install_task_request_ids()  # Celery's signals are per process: once here covers every sender

QUEUE_OF = {
    POLL_FEEDS: "ingest",
    SCAN_INBOX: "ingest",
    SWEEP: "ingest",
    ENRICH: "enrich",  # model work: a GPU worker consumes only this queue
    MONITOR: "alerts",
    DELIVER: "alerts",
    RETRY_DEAD: "alerts",
    DRAIN_OUTBOX: "alerts",
    TRAIN: "train",  # model work too: only workers on model machines consume it
    REAP_TRAINING: "ingest",
}


class Dispatcher(Protocol):
    def enrich(self, ids: list[str], *, namespace: str, config: str | None = None) -> None: ...

    def deliver(self, alert_id: str, target: str, *, namespace: str) -> None: ...


def chunks(ids: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


def client_app(redis_url: str) -> Celery:
    """A Celery app that only sends: no task modules, no result backend."""
    broker = celery_broker(redis_url)  # kombu's sentinel:// form for a Redis behind Sentinel
    app = Celery("domainllm-client", broker=broker.url, set_as_current=False)
    app.conf.update(broker_transport_options=broker.transport_options, broker_use_ssl=broker.use_ssl)
    return app


class CeleryDispatcher:
    def __init__(self, app: Celery, batch_size: int = 32) -> None:
        self.app = app
        self.batch_size = batch_size

    def send(self, name: str, **kwargs: Any) -> None:
        self.app.send_task(name, kwargs=kwargs, queue=QUEUE_OF[name])

    def enrich(self, ids: list[str], *, namespace: str, config: str | None = None) -> None:
        for part in chunks(ids, self.batch_size):
            self.send(ENRICH, ids=part, namespace=namespace, config=config)

    def deliver(self, alert_id: str, target: str, *, namespace: str) -> None:
        self.send(DELIVER, alert_id=alert_id, target=target, namespace=namespace)
