"""Fault tests with a real Redis and real Celery workers (tiny random model: what is tested here is
delivery and counting, not the labels): a worker killed while it holds a batch, a webhook receiver
that is down and comes back, an alert whose monitor died before queuing its deliveries (beat's
outbox drain sends it, once), and Redis restarted under the pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from fastapi.testclient import TestClient

from apps.deps import get_sentiment_context
from apps.sentiment.alerts import Alert
from apps.sentiment.dispatch import DRAIN_OUTBOX, QUEUE_OF, CeleryDispatcher, client_app
from apps.sentiment.items import NewsItem
from apps.sentiment.service import SentimentContext
from apps.sentiment.settings import SentimentSettings
from apps.server import create_app
from core.config import PROJECT_ROOT, Settings
from tests.doubles.redis import RedisProcess, free_port
from tests.doubles.sentiment import WebhookReceiver
from tests.doubles.servers import KEYED

pytestmark = pytest.mark.integration

SECRET = "fault-webhook-secret"
ADMIN = {"Authorization": "Bearer test-admin-key"}  # tiny_settings' admin key
RULES = """
bucket: 1m
watchlist: {file: %s}
topics: {labels: {litigation: [company sued in court lawsuit]}}
rules:
  - {name: z, kind: zscore, scope: [entity], window: 5m, baseline: 1h, min_items: 3, min_negative_share: 0.5,
     severity: {warning: 2.0}, cooldown: 1h}
""" % (PROJECT_ROOT / "apps" / "sentiment" / "rules" / "watchlist.yaml")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 45.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)
    return value


def answers(client: Any) -> bool:
    """Redis is up and done loading its data (while it loads it answers BusyLoadingError)."""
    try:
        return bool(client.ping())
    except (redis_lib.BusyLoadingError, redis_lib.ConnectionError):
        return False


class Worker:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        cmd = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "ingest,enrich,alerts",
               "-c", "2", "-n", f"w{uuid.uuid4().hex[:6]}@%h", "-l", "INFO"]  # fmt: skip
        with log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        wait_for("the worker", lambda: "worker engine ready" in log.read_text(), timeout=90)

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def world(tiny_settings: Settings, tmp_path: Path) -> Iterator[dict[str, Any]]:
    redis = RedisProcess(tmp_path / "redis").start()
    config = tmp_path / "rules.yaml"
    config.write_text(RULES)
    ns = f"f{uuid.uuid4().hex[:6]}"
    hook_port = free_port()
    env = {
        **os.environ,
        "DOMAINLLM_ENVIRONMENT": "test",
        "DOMAINLLM_ADMIN_KEY": "fault-admin-key",
        "DOMAINLLM_REDIS_URL": redis.url,
        "DOMAINLLM_BASE_MODEL": tiny_settings.base_model,
        "DOMAINLLM_ADAPTERS_DIR": str(tiny_settings.adapters_path),
        "DOMAINLLM_SENTIMENT_NAMESPACE": ns,
        "DOMAINLLM_SENTIMENT_CONFIG_PATH": str(config),
        "DOMAINLLM_SENTIMENT_INBOX_DIR": str(tmp_path / "inbox"),
        "DOMAINLLM_SENTIMENT_WEBHOOK_URL": f"http://127.0.0.1:{hook_port}/hook",
        "DOMAINLLM_SENTIMENT_WEBHOOK_SECRET": SECRET,
        "DOMAINLLM_SENTIMENT_DELIVERY_MAX_RETRIES": "2",
        "DOMAINLLM_SENTIMENT_DELIVERY_BACKOFF_S": "1",
        "DOMAINLLM_SENTIMENT_DELIVERY_TIMEOUT_S": "2",
        "DOMAINLLM_SENTIMENT_VISIBILITY_TIMEOUT_S": "4",
    }
    settings = SentimentSettings(namespace=ns, config_path=config, webhook_url=env["DOMAINLLM_SENTIMENT_WEBHOOK_URL"],
                                 webhook_secret=SECRET)  # fmt: skip
    core = tiny_settings.model_copy(update={"redis_url": redis.url})
    ctx = SentimentContext.build(settings, core, dispatcher=CeleryDispatcher(client_app(redis.url)))
    yield {"redis": redis, "env": env, "ctx": ctx, "core": core, "settings": settings, "hook_port": hook_port,
           "tmp": tmp_path}  # fmt: skip
    redis.stop()


def push(ctx: SentimentContext, titles: list[str], at: float | None = None) -> list[str]:
    records = [(f"r{i}", {"title": t, "published_at": at or time.time(), "source": "t"}) for i, t in enumerate(titles)]
    return ctx.ingest_records(records, via="api", source="t").new_ids


def snapshot(ctx: SentimentContext) -> dict[str, Any]:
    """Every key of the namespace with its value (items, buckets, indexes, stats)."""
    r, out = ctx.store.r, {}
    for key in r.scan_iter(f"{ctx.namespace}:*"):
        kind = r.type(key)
        out[key] = {"hash": r.hgetall, "zset": lambda k: r.zrange(k, 0, -1, withscores=True), "string": r.get}[kind](
            key
        )
    return out


def counted(ctx: SentimentContext, scope: str = "all") -> int:
    now = time.time()
    return sum(b.n for b in ctx.store.buckets(scope, now - 3600, now + 120, ctx.config.bucket_s))


def test_worker_killed_holding_a_batch_loses_and_doubles_nothing(world: dict[str, Any]) -> None:
    ctx, env, log = world["ctx"], world["env"], world["tmp"] / "worker.log"
    slow = Worker({**env, "DOMAINLLM_SENTIMENT_FAULT_ENRICH_DELAY_S": "30"}, log)
    ids = push(ctx, [f"Globex update number {i}" for i in range(10)])
    assert len(ids) == 10
    wait_for("the batch to be taken", lambda: "sentiment.enrich" in log.read_text() and ctx.store.r.hlen("unacked"))
    time.sleep(1.0)  # inside the batch: scored, sleeping before the commit
    slow.stop(kill=True)
    assert ctx.store.pending_count() == 10 and counted(ctx) == 0  # nothing committed, nothing lost
    fresh = Worker(env, world["tmp"] / "worker2.log")
    try:
        wait_for("the redelivered batch", lambda: ctx.store.pending_count() == 0, timeout=60)
        time.sleep(1.5)
        assert counted(ctx) == 10 and counted(ctx, "entity:GLBX") == 10
        assert ctx.store.stats()["enriched"] == 10
        # the sweeper's extra copy of the same batch changes nothing either
        ctx.dispatcher.enrich(ids, namespace=ctx.namespace)  # type: ignore[union-attr]
        wait_for("the duplicate batch", lambda: "0 counted, 10 already" in (world["tmp"] / "worker2.log").read_text())
        assert counted(ctx) == 10
    finally:
        fresh.stop()


def test_webhook_down_retried_dead_lettered_then_resent(world: dict[str, Any]) -> None:
    ctx, core = world["ctx"], world["core"]
    worker = Worker(world["env"], world["tmp"] / "worker.log")
    receiver = WebhookReceiver(SECRET, port=world["hook_port"])
    try:
        now = time.time()
        for i in range(4):
            item = NewsItem(id=f"neg{i}", title=f"Globex bad news {i}", published_at=now - 30)
            ctx.store.add([item])
            ctx.store.commit_enrichment(item, {"label": "negative", "scores": {"negative": 0.9}, "entities_keys": ["GLBX"],
                                               "topic_keys": []}, ctx.config.bucket_s)  # fmt: skip
        (alert,) = ctx.monitor(now)  # hands the deliveries to the worker
        dead = wait_for("the dead letter", lambda: ctx.alerts.dead_letters(), timeout=45)
        assert dead == [(alert.id, "webhook")]
        status = ctx.alerts.delivery(alert.id)
        assert status["webhook"]["state"] == "dead" and status["webhook"]["attempts"] == 3  # first try + 2 retries
        assert status["log"]["state"] == "sent"
        receiver.start()  # the receiver is back; resend on request
        app = create_app(settings=core)
        app.dependency_overrides[get_sentiment_context] = lambda: ctx
        with TestClient(app, headers=KEYED) as client:
            anonymous = client.post(f"/v1/sentiment/alerts/{alert.id}/resend", headers={"X-Api-Key": ""})
            assert anonymous.status_code == 401
            r = client.post(f"/v1/sentiment/alerts/{alert.id}/resend", headers=ADMIN)
            assert r.status_code == 200 and r.json()["queued"] == [{"alert_id": alert.id, "target": "webhook"}]
            wait_for("the resent webhook", lambda: receiver.received, timeout=30)
            body = client.get("/v1/sentiment/alerts").json()["alerts"]
        assert [a["id"] for a in body] == [alert.id] and body[0]["deliveries"]["webhook"]["state"] == "sent"
        assert ctx.alerts.dead_letters() == [] and len(receiver.received) == 1
    finally:
        receiver.stop()
        worker.stop()


def test_an_alert_whose_monitor_died_before_queuing_is_delivered_once_by_beats_drain(world: dict[str, Any]) -> None:
    ctx = world["ctx"]
    worker = Worker({**world["env"], "DOMAINLLM_SENTIMENT_OUTBOX_GRACE_S": "0"}, world["tmp"] / "worker.log")
    receiver = WebhookReceiver(SECRET, port=world["hook_port"])
    receiver.start()
    try:
        alert = Alert(f"al_{uuid.uuid4().hex[:8]}", "z", "zscore", "entity:GLBX", "warning", time.time(), "Globex", {})
        # what the monitor stored before it died: the alert and its outbox, nothing queued
        assert ctx.alerts.fire(alert, cooldown_s=3600, targets=ctx.settings.targets())
        beat = client_app(world["redis"].url)
        for _ in range(3):  # beat's ticks (and a second beat's): the drain is idempotent
            beat.send_task(DRAIN_OUTBOX, kwargs={}, queue=QUEUE_OF[DRAIN_OUTBOX])
        wait_for("the webhook", lambda: receiver.received)
        wait_for("both targets", lambda: {t: d["state"] for t, d in ctx.alerts.delivery(alert.id).items()}
                 == {"log": "sent", "webhook": "sent"})  # fmt: skip
        assert ctx.alerts.outbox() == []
        time.sleep(2)  # the other ticks' drains have run by now: nothing more arrives
        assert [r["alert"]["id"] for r in receiver.received] == [alert.id]
    finally:
        receiver.stop()
        worker.stop()


def test_redis_restart_with_persistence_loses_nothing(world: dict[str, Any]) -> None:
    ctx, redis = world["ctx"], world["redis"]
    worker = Worker(world["env"], world["tmp"] / "worker.log")
    try:
        push(ctx, [f"Globex headline {i}" for i in range(6)])
        wait_for("enrichment", lambda: ctx.store.pending_count() == 0 and ctx.store.stats()["enriched"] == 6)
        before = snapshot(ctx)
        assert len(before) > 10 and counted(ctx) == 6
        redis.stop()  # graceful: the append-only file is flushed
        redis.start()
        wait_for("redis back", lambda: answers(ctx.store.r))
        assert snapshot(ctx) == before
        time.sleep(1.5)  # appendfsync everysec: a hard kill loses at most the last second
        redis.stop(kill=True)
        redis.start()
        wait_for("redis back after the kill", lambda: answers(ctx.store.r))  # it loads the AOF first
        assert snapshot(ctx) == before
        # the worker reconnects and the pipeline keeps going
        push(ctx, ["Globex after the restart"])
        wait_for("enrichment after restart", lambda: ctx.store.stats()["enriched"] == 7, timeout=60)
    finally:
        worker.stop()
