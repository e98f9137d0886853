"""Thin tasks: check the arguments, call ``apps.sentiment`` or ``apps.support``, declare retries. No logic
lives here.

Every task is idempotent (see ``apps.sentiment.store`` and ``delivery``), so the retries below and a
redelivery after a lost worker are safe; the support webhook is at least once, and its receivers
dedupe on the event id. Task names and queues: ``apps.sentiment.dispatch``, ``apps.support.webhook``.

Every task has a soft and a hard time limit (settings; ``workers.time_limits`` enforces them on the
threads pool) and retries no longer apart than below the visibility timeout: a retry waits in the
worker unacknowledged, and one that waited past the visibility timeout would be run by a second
worker too.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_ready
from pydantic import BaseModel, ConfigDict, Field

from apps.sentiment import dispatch as names
from apps.sentiment.delivery import TARGETS, DeliveryError, deliver
from apps.sentiment.enrich import enrich_ids
from apps.settings import get_settings
from apps.support import webhook as support_webhook
from apps.tenants.store import DEFAULT_TENANT
from core.errors import EngineOverloadedError, ModelNotReadyError
from finetune.own import TrainingSettings, reap_jobs, run_job
from workers import runtime
from workers.celery_app import app
from workers.time_limits import LimitedTask

log = logging.getLogger(__name__)
_settings = get_settings().sentiment
_support = get_settings().support
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, EngineOverloadedError, ModelNotReadyError)
LIMITS = {"base": LimitedTask, "soft_time_limit": _settings.task_soft_time_limit_s,
          "time_limit": _settings.task_time_limit_s}  # fmt: skip
# shared=False on every task: they belong to this app alone, never to every Celery app finalized later in
# the same process (a test's own app, a second app of an embedding program)
RETRY = {"autoretry_for": TRANSIENT, "retry_backoff": 2, "retry_backoff_max": _settings.task_backoff_max_s,
         "max_retries": 8, "shared": False, **LIMITS}  # fmt: skip


class Scoped(BaseModel):
    model_config = ConfigDict(extra="forbid")
    namespace: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    config: str | None = None


class EnrichArgs(Scoped):
    ids: list[str] = Field(min_length=1, max_length=1024)


class MonitorArgs(Scoped):
    now: float | None = None


class DeliverArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alert_id: str = Field(min_length=1, max_length=64)
    target: str = Field(pattern="^(" + "|".join(TARGETS) + ")$")
    namespace: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")


def _fan_out(task: Any, args: Scoped) -> None:
    """Beat schedules the default tenant's run (no namespace): it queues the same run for every other
    tenant, each on its own namespace, so their items are swept and their alerts raised too."""
    if args.namespace is not None or args.config is not None:
        return
    services = runtime.services()
    for tenant in services.tenants.tenants():
        if tenant.id != DEFAULT_TENANT:
            task.apply_async(
                kwargs={
                    **args.model_dump(exclude_none=True),
                    "namespace": services.apps_of(tenant.id).sentiment.namespace,
                }
            )


@app.task(name=names.ENRICH, **{**RETRY, "soft_time_limit": _settings.enrich_soft_time_limit_s,
                                 "time_limit": _settings.enrich_time_limit_s})  # fmt: skip
def enrich(**kwargs: Any) -> dict[str, Any]:
    """At the soft time limit the batch stops; what it committed stays counted, the rest stays pending
    and the sweeper queues it again after the visibility timeout."""
    args = EnrichArgs(**kwargs)
    ctx = runtime.context(args.namespace, args.config)
    stats = enrich_ids(
        ctx.store,
        runtime.enricher(args.namespace, args.config),
        args.ids,
        delay_s=_settings.fault_enrich_delay_s,
        router=ctx.router,
    )
    log.info("enrich: %d counted, %d already, %d missing in %.2fs", stats.counted, stats.already, stats.missing,
             stats.seconds)  # fmt: skip
    return asdict(stats)


@app.task(name=names.POLL_FEEDS, **RETRY)
def poll_feeds(**kwargs: Any) -> list[dict[str, Any]]:
    args = Scoped(**kwargs)
    polls = runtime.context(args.namespace, args.config).poll_feeds()
    return [{"url": p.url, "status": p.status, "new": p.result.accepted, "error": p.error} for p in polls]


@app.task(name=names.SCAN_INBOX, **RETRY)
def scan_inbox(**kwargs: Any) -> int:
    args = Scoped(**kwargs)
    return len(runtime.context(args.namespace, args.config).scan_inbox())


@app.task(name=names.SWEEP, **RETRY)
def sweep(**kwargs: Any) -> int:
    args = Scoped(**kwargs)
    _fan_out(sweep, args)
    return runtime.context(args.namespace, args.config).sweep()


@app.task(name=names.MONITOR, **RETRY)
def monitor(**kwargs: Any) -> list[str]:
    args = MonitorArgs(**kwargs)
    _fan_out(monitor, args)
    return [a.id for a in runtime.context(args.namespace, args.config).monitor(args.now)]


@app.task(name=names.DRAIN_OUTBOX, **RETRY)
def drain_outbox(**kwargs: Any) -> int:
    """Queue the deliveries of alerts whose monitor run did not (it died, the broker was down)."""
    args = Scoped(**kwargs)
    _fan_out(drain_outbox, args)
    queued = runtime.context(args.namespace, args.config).drain_outbox()
    if queued:
        log.warning("outbox: %d deliveries left behind by a monitor run queued now", len(queued))
    return len(queued)


class DeliverTask(LimitedTask):
    """When the retries run out, the delivery goes to the dead-letter list instead of vanishing."""

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        self._dead_letter(kwargs, str(exc))

    def on_soft_time_limit(self, kwargs: dict[str, Any]) -> Any:
        # the limit struck outside the send (the body turns it into a retry): not sent, not retried
        self._dead_letter(kwargs, "stopped at the soft time limit")
        return "dead"

    def _dead_letter(self, kwargs: dict[str, Any], why: str) -> None:
        try:
            parsed = DeliverArgs(**kwargs)
        except Exception:  # bad arguments never reached a target: nothing to dead-letter
            return
        ctx = runtime.context(parsed.namespace)
        if ctx.alerts.record(parsed.alert_id, parsed.target, "dead", why):
            log.error("delivery of %s to %s dead-lettered after retries: %s", parsed.alert_id, parsed.target, why)
        else:  # another copy of the task sent it meanwhile
            log.info("delivery of %s to %s: this copy gave up, another one sent it", parsed.alert_id, parsed.target)


@app.task(
    name=names.DELIVER,
    shared=False,
    base=DeliverTask,
    autoretry_for=(DeliveryError, *TRANSIENT),
    retry_backoff=_settings.delivery_backoff_s,
    retry_backoff_max=_settings.retry_backoff_max_s,
    retry_jitter=False,
    max_retries=_settings.delivery_max_retries,
    soft_time_limit=_settings.delivery_soft_time_limit_s,
    time_limit=_settings.delivery_time_limit_s,
)
def deliver_alert(**kwargs: Any) -> str:
    """Claimed before sending (``deliver``): a copy that finds it claimed raises ``DeliveryInProgress``
    and retries, so it sends only if the holder died without sending."""
    args = DeliverArgs(**kwargs)
    ctx = runtime.context(args.namespace)  # a tenant's targets are its own (none of the operator's)
    try:
        return deliver(ctx.alerts, args.alert_id, args.target, ctx.delivery_settings())
    except SoftTimeLimitExceeded:  # ``deliver`` gave its claim up on the way out: the retry may send
        why = f"delivery of {args.alert_id} to {args.target} stopped at the soft time limit"
        ctx.alerts.record(args.alert_id, args.target, "failed", why)
        raise DeliveryError(why) from None


class SupportWebhookArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event: dict[str, Any]


@app.task(
    name=support_webhook.DELIVER_TASK,
    shared=False,
    autoretry_for=(support_webhook.WebhookDeliveryError, *TRANSIENT),
    retry_backoff=_support.webhook_backoff_s,
    # kept below the visibility timeout whatever the support settings say (see the module docstring)
    retry_backoff_max=min(_support.webhook_backoff_max_s, _settings.visibility_timeout_s - 1),
    max_retries=_support.webhook_max_retries,
    **LIMITS,
)
def deliver_support_webhook(**kwargs: Any) -> str:
    """One handoff event to the support team's own helpdesk (queue ``alerts``, sent by the API)."""
    args = SupportWebhookArgs(**kwargs)
    try:
        target = runtime.support_webhook_target(str(args.event.get("tenant", "")))
        if target is None:
            log.warning("support webhook %s dropped: no webhook configured", args.event.get("type"))
            return "no target"
        support_webhook.deliver(args.event, target)
    except support_webhook.WebhookRejectedError as exc:
        log.error("%s; not retried", exc.message)
        return "rejected"
    return "sent"


@app.task(name=names.RETRY_DEAD, **RETRY)
def retry_dead_letters(**kwargs: Any) -> int:
    args = Scoped(**kwargs)
    _fan_out(retry_dead_letters, args)
    return len(runtime.context(args.namespace, args.config).resend())


class TrainArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_id: str = Field(pattern=r"^job_[0-9a-f]{16}$")


_train_budget = TrainingSettings().budget_s


@app.task(
    name=names.TRAIN,
    shared=False,
    acks_late=False,  # a training outlasts the visibility timeout: taken once; a dead worker's job is reaped
    max_retries=0,  # a failed run is recorded on its job with the reason, not run again behind the tenant's back
    base=LimitedTask,
    soft_time_limit=_train_budget + 1800,  # the run stops itself at its budget; this bounds the gate after it
    time_limit=_train_budget + 1860,
)
def train_adapter(**kwargs: Any) -> str:
    """One tenant's adapter training job (queue ``train``): train, card, gate, promote (finetune.own)."""
    args = TrainArgs(**kwargs)
    services = runtime.services()
    job = services.jobs.get(args.job_id)
    record = run_job(
        args.job_id,
        settings=services.settings,
        engine=runtime.engine(),
        versions=services.versions,
        jobs=services.jobs,
        shared_adapter=services.shared_adapter(job["domain"]),
    )
    return "done" if record is not None else "failed"


@app.task(name=names.REAP_TRAINING, **RETRY)
def reap_training_jobs(**kwargs: Any) -> int:
    """Fail the training jobs whose worker stopped beating (and the versions they trained)."""
    Scoped(**kwargs)
    services = runtime.services()
    return len(reap_jobs(services.jobs, services.versions))


@worker_ready.connect
def _warm_engine(sender: Any = None, **_: Any) -> None:
    """Load the engine when a worker that consumes ``enrich`` starts (threads pool: one engine per
    process), not on the first task; ingest- or alerts-only workers never load it."""
    queues = {q.name for q in getattr(getattr(sender, "task_consumer", None), "queues", [])}
    if app.conf.worker_pool in ("threads", "solo") and (not queues or "enrich" in queues):
        import threading

        threading.Thread(target=runtime.engine, name="engine-warm-up", daemon=True).start()
