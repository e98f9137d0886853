"""The alert path's exactly-once pieces, as plain functions on the run's real Redis: an alert and its
delivery outbox are stored in one step and drained by beat when the monitor died before queuing; the
sweeper re-queues an item only once per visibility timeout; a delivery is claimed before it is sent,
so two copies never both send; the e-mail Message-ID is the same on every try; and the settings
refuse a retry backoff that reaches the visibility timeout."""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from apps.sentiment.alerts import Alert, AlertStore
from apps.sentiment.config import MonitorConfig, Rule, TopicConfig
from apps.sentiment.delivery import DeliveryError, DeliveryInProgress, deliver, message_id, send_email
from apps.sentiment.items import NewsItem
from apps.sentiment.service import SentimentContext
from apps.sentiment.settings import SentimentSettings
from apps.sentiment.store import NewsStore
from core.redis_client import connect
from tests.doubles.redis import free_port
from tests.doubles.sentiment import SmtpSink

pytestmark = pytest.mark.unit

T0 = 1_790_000_000.0
SECRET = "outbox-webhook-secret"


class Dispatcher:
    """Records what would be queued; ``fail`` makes ``deliver`` raise it (a broker down, a kill)."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.deliveries: list[tuple[str, str]] = []
        self.enriched: list[str] = []
        self.fail = fail
        self._lock = threading.Lock()

    def enrich(self, ids: list[str], *, namespace: str, config: str | None = None) -> None:
        with self._lock:
            self.enriched += ids

    def deliver(self, alert_id: str, target: str, *, namespace: str) -> None:
        if self.fail is not None:
            raise self.fail
        with self._lock:
            self.deliveries.append((alert_id, target))


def context(redis_url: str, dispatcher: Dispatcher | None, **settings: Any) -> SentimentContext:
    """A monitor on its own namespace with the log and a webhook as targets (nothing is sent here)."""
    ns, client = f"t{uuid.uuid4().hex[:8]}", connect(redis_url, decode=True)
    rule = Rule(name="z", kind="zscore", scopes=("entity",), window_s=3600, baseline_s=7 * 86400, min_items=5,
                cooldown_s=6 * 3600)  # fmt: skip
    return SentimentContext(
        settings=SentimentSettings(webhook_url="http://127.0.0.1:9/hook", webhook_secret=SECRET, **settings),
        config=MonitorConfig(bucket_s=300, rules=[rule], topics=TopicConfig(labels={"x": ["x"]})),
        store=NewsStore(client, ns),
        alerts=AlertStore(client, ns),
        dispatcher=dispatcher,
    )


def burst(store: NewsStore, at: float, n: int = 8) -> None:
    for i in range(n):
        item = NewsItem(id=f"neg{at}{i}", title=f"Globex falls {i}", published_at=at + i)
        store.add([item])
        enrichment = {"label": "negative", "scores": {"negative": 0.9}, "entities_keys": ["GLBX"], "topic_keys": []}
        store.commit_enrichment(item, enrichment, 300)


def an_alert(i: int = 0, scope: str = "entity:GLBX") -> Alert:
    return Alert(id=f"al_{i}_{uuid.uuid4().hex[:6]}", rule="z", kind="zscore", scope=scope, severity="warning",
                 fired_at=T0 + i, message="Globex surge", numbers={"items": 8})  # fmt: skip


# ---- the outbox ----------------------------------------------------------------------------------


def test_an_alert_and_its_outbox_are_stored_together_or_not_at_all(redis_url: str) -> None:
    alerts = AlertStore(connect(redis_url, decode=True), f"t{uuid.uuid4().hex[:8]}")
    first, again = an_alert(0), an_alert(1)
    assert alerts.fire(first, cooldown_s=3600, targets=["log", "webhook"])
    assert sorted(alerts.outbox()) == [(first.id, "log"), (first.id, "webhook")]
    assert not alerts.fire(again, cooldown_s=3600, targets=["log", "webhook"])  # inside the cooldown
    assert alerts.get(again.id) is None and len(alerts.outbox()) == 2


def test_a_monitor_killed_before_queuing_leaves_its_deliveries_to_the_drain(redis_url: str) -> None:
    """The bug: the alert was stored, the worker died before queuing its delivery, and the cooldown then
    blocked a re-fire. Now the deliveries wait in the outbox, and beat's drain queues each once."""
    killed = Dispatcher(fail=SystemExit(137))  # the worker is gone between the fire and the queuing
    ctx = context(redis_url, killed)
    burst(ctx.store, T0 - 600)
    with pytest.raises(SystemExit):
        ctx.monitor(T0)
    (alert,) = ctx.alerts.recent()
    assert sorted(ctx.alerts.outbox()) == [(alert.id, "log"), (alert.id, "webhook")]

    ctx.dispatcher = live = Dispatcher()  # the next worker
    assert ctx.monitor(T0 + 60) == []  # the cooldown holds: no second alert
    assert ctx.drain_outbox(now=time.time()) == []  # too fresh: its own monitor run may still be queuing
    queued = ctx.drain_outbox(now=time.time() + ctx.settings.outbox_grace_s + 1)
    assert sorted(queued) == sorted(live.deliveries) == [(alert.id, "log"), (alert.id, "webhook")]
    assert ctx.alerts.outbox() == []
    assert ctx.drain_outbox(now=time.time() + 10 * ctx.settings.outbox_grace_s) == []  # idempotent
    assert len(live.deliveries) == 2


def test_a_broker_down_at_fire_time_keeps_the_deliveries_for_the_drain(redis_url: str) -> None:
    ctx = context(redis_url, Dispatcher(fail=ConnectionError("broker down")))
    burst(ctx.store, T0 - 600)
    (alert,) = ctx.monitor(T0)  # the alert fires and the monitor carries on
    assert len(ctx.alerts.outbox()) == 2
    ctx.dispatcher = live = Dispatcher()
    assert len(ctx.drain_outbox(now=time.time() + ctx.settings.outbox_grace_s + 1)) == 2
    assert sorted(live.deliveries) == [(alert.id, "log"), (alert.id, "webhook")]


def test_the_monitor_queues_its_own_deliveries_and_the_drain_then_has_nothing(redis_url: str) -> None:
    ctx = context(redis_url, live := Dispatcher())
    burst(ctx.store, T0 - 600)
    (alert,) = ctx.monitor(T0)
    assert live.deliveries == [(alert.id, "log"), (alert.id, "webhook")] and ctx.alerts.outbox() == []
    assert ctx.drain_outbox(now=time.time() + 3600) == [] and len(live.deliveries) == 2


def test_without_a_dispatcher_nothing_is_put_in_the_outbox(redis_url: str) -> None:
    ctx = context(redis_url, None)  # a bare replay: it never delivered
    burst(ctx.store, T0 - 600)
    assert len(ctx.monitor(T0)) == 1 and ctx.alerts.outbox() == []


def test_concurrent_drains_take_each_entry_once(redis_url: str) -> None:
    alerts = AlertStore(connect(redis_url, decode=True), f"t{uuid.uuid4().hex[:8]}")
    for i in range(60):
        assert alerts.fire(an_alert(i, scope=f"entity:E{i}"), cooldown_s=0, targets=["log", "webhook"])
    taken: list[tuple[str, str]] = []
    lock, start, later = threading.Lock(), threading.Barrier(4), time.time() + 61

    def drain() -> None:
        start.wait()
        for _ in range(10):
            got = alerts.take_outbox(60, limit=7, now=later)
            with lock:
                taken.extend(got)

    threads = [threading.Thread(target=drain) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == len(set(taken)) == 120  # none twice: a taken entry is re-stamped in the same step


# ---- the sweeper ---------------------------------------------------------------------------------


def test_the_sweeper_requeues_only_past_the_visibility_timeout_and_once(redis_url: str) -> None:
    """The bug: every minute the sweeper re-queued every item pending over 2 minutes, stacking copies
    while one was still queued. Now: only past the visibility timeout since it was last queued."""
    ctx = context(redis_url, sweeper := Dispatcher(), visibility_timeout_s=600)
    now = time.time()
    ctx.store.add([NewsItem(id=f"p{i}", title=f"Globex item {i}", published_at=now, ingested_at=now) for i in range(3)])
    assert ctx.sweep(now=now + 300) == 0  # a copy may still be queued or running
    assert ctx.sweep(now=now + 601) == 3 and sorted(sweeper.enriched) == ["p0", "p1", "p2"]
    for minute in range(1, 10):  # beat's every-minute sweeps within the next visibility timeout
        assert ctx.sweep(now=now + 601 + 60 * minute) == 0
    assert ctx.sweep(now=now + 1202) == 3  # still pending a whole timeout later: that copy was lost too
    assert len(sweeper.enriched) == 6 and ctx.store.pending_count() == 3


def test_two_sweeps_at_once_queue_each_item_once(redis_url: str) -> None:
    ctx = context(redis_url, sweeper := Dispatcher(), visibility_timeout_s=60)
    now = time.time()
    ctx.store.add(
        [NewsItem(id=f"s{i}", title=f"Globex item {i}", published_at=now, ingested_at=now) for i in range(50)]
    )
    start = threading.Barrier(4)

    def sweep() -> None:
        start.wait()
        ctx.sweep(now=now + 61)

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(sweeper.enriched) == sorted(f"s{i}" for i in range(50))


# ---- the delivery claim --------------------------------------------------------------------------


class GatedReceiver:
    """A webhook receiver that holds each request until ``release`` is set: a send in flight."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.arrived, self.release = threading.Event(), threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.bodies.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
                outer.arrived.set()
                outer.release.wait(timeout=30)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[GatedReceiver]:
    r = GatedReceiver()
    yield r
    r.close()


def fired(redis_url: str) -> tuple[AlertStore, Alert]:
    alerts = AlertStore(connect(redis_url, decode=True), f"t{uuid.uuid4().hex[:8]}")
    alert = an_alert()
    assert alerts.fire(alert, cooldown_s=0)
    return alerts, alert


def test_a_second_copy_does_not_send_while_the_first_is_sending(redis_url: str, receiver: GatedReceiver) -> None:
    alerts, alert = fired(redis_url)
    settings = SentimentSettings(webhook_url=receiver.url, webhook_secret=SECRET, delivery_timeout_s=30)
    outcome: list[str] = []
    first = threading.Thread(target=lambda: outcome.append(deliver(alerts, alert.id, "webhook", settings)))
    first.start()
    assert receiver.arrived.wait(timeout=30)  # the first copy is mid-send
    with pytest.raises(DeliveryInProgress):  # a retry or redelivery of the same task: claimed, not sent
        deliver(alerts, alert.id, "webhook", settings)
    receiver.release.set()
    first.join(timeout=30)
    assert outcome == ["sent"] and len(receiver.bodies) == 1
    assert deliver(alerts, alert.id, "webhook", settings) == "already"  # the retry of that copy then stops
    assert len(receiver.bodies) == 1 and alerts.delivery(alert.id)["webhook"]["attempts"] == 1


def test_a_failed_send_gives_its_claim_up_for_the_retry(redis_url: str) -> None:
    alerts, alert = fired(redis_url)
    down = SentimentSettings(webhook_url=f"http://127.0.0.1:{free_port()}/hook", webhook_secret=SECRET,
                             delivery_timeout_s=2)  # fmt: skip
    with pytest.raises(DeliveryError, match="unreachable") as failed:
        deliver(alerts, alert.id, "webhook", down)
    assert not isinstance(failed.value, DeliveryInProgress)
    assert alerts.delivery(alert.id)["webhook"]["state"] == "failed"
    token = alerts.claim(alert.id, "webhook", 60)  # free at once: no waiting out a TTL
    assert token is not None
    alerts.unclaim(alert.id, "webhook", token)


def test_the_claim_of_a_worker_that_died_expires_and_the_retry_sends(redis_url: str, receiver: GatedReceiver) -> None:
    alerts, alert = fired(redis_url)
    receiver.release.set()
    settings = SentimentSettings(webhook_url=receiver.url, webhook_secret=SECRET)
    assert alerts.claim(alert.id, "webhook", ttl_s=0.3) is not None  # its holder is killed mid-send
    with pytest.raises(DeliveryInProgress):
        deliver(alerts, alert.id, "webhook", settings)
    assert receiver.bodies == []
    deadline = time.monotonic() + 30
    while True:  # the task's retry, a little later
        try:
            assert deliver(alerts, alert.id, "webhook", settings) == "sent"
            break
        except DeliveryInProgress:
            assert time.monotonic() < deadline, "the dead holder's claim never expired"
            time.sleep(0.05)
    assert len(receiver.bodies) == 1


def test_a_delivery_once_sent_stays_sent(redis_url: str) -> None:
    alerts, alert = fired(redis_url)
    assert alerts.record(alert.id, "webhook", "sent")
    # a second copy that ran out of retries while the first was sending gives up: it must not undo it
    assert not alerts.record(alert.id, "webhook", "dead", "gave up")
    assert not alerts.record(alert.id, "webhook", "failed", "late")
    assert alerts.delivery(alert.id)["webhook"]["state"] == "sent" and alerts.dead_letters() == []
    assert alerts.record(alert.id, "email", "dead", "gave up") and alerts.dead_letters() == [(alert.id, "email")]


def test_the_email_message_id_is_the_same_on_every_try(redis_url: str) -> None:
    alerts, alert = fired(redis_url)
    smtp = SmtpSink().start()
    try:
        settings = SentimentSettings(smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_to=["risk@example.com"])
        send_email(alert, settings)  # sent, then the worker died before recording it: the retry sends again
        assert deliver(alerts, alert.id, "email", settings) == "sent"
        assert len(smtp.messages) == 2
        assert smtp.messages[0]["Message-ID"] == smtp.messages[1]["Message-ID"] == message_id(alert.id, "email")
        assert message_id(alert.id, "email") != message_id(alert.id, "webhook") != message_id("al_other", "email")
    finally:
        smtp.stop()


# ---- settings ------------------------------------------------------------------------------------


def test_the_delivery_backoff_stays_below_the_visibility_timeout() -> None:
    with pytest.raises(ValueError, match=r"BACKOFF_MAX_S .* must be below"):
        SentimentSettings(visibility_timeout_s=600, delivery_backoff_max_s=600)
    assert SentimentSettings().retry_backoff_max_s < SentimentSettings().visibility_timeout_s
    short = SentimentSettings(visibility_timeout_s=4)  # the default follows a short timeout down
    assert short.retry_backoff_max_s == short.task_backoff_max_s == 2
    with pytest.raises(ValueError, match=r"SOFT_TIME_LIMIT_S .* must be below"):
        SentimentSettings(delivery_soft_time_limit_s=90, delivery_time_limit_s=90)
    with pytest.raises(ValueError, match=r"must be above the send timeouts"):
        SentimentSettings(delivery_soft_time_limit_s=10, smtp_timeout_s=10)


def test_every_task_has_time_limits_and_retries_shorter_than_the_visibility_timeout() -> None:
    from workers.celery_app import app
    from workers.tasks import TRANSIENT  # noqa: F401  (registers the tasks)
    from workers.time_limits import LimitedTask

    visibility = app.conf.broker_transport_options["visibility_timeout"]
    ours = {name: task for name, task in app.tasks.items() if not name.startswith("celery.")}
    assert len(ours) >= 8
    for name, task in ours.items():
        assert isinstance(task, LimitedTask), name
        assert task.soft_time_limit and task.time_limit and task.soft_time_limit < task.time_limit, name
        if task.max_retries:
            assert (task.retry_backoff_max or 0) < visibility, name
