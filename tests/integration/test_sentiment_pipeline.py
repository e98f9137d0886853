"""The whole monitor, live: a real embedded Redis, a real Celery worker and beat (subprocesses), a
real RSS feed over HTTP on loopback, a real webhook receiver and a real SMTP server (aiosmtpd).
Two beats run: the beat lock lets one send the schedule (the other stands by), and the monitor's own
lock and cooldown would keep alerts single even if both sent.

The worker runs the real SmolLM2 base with the trained sentiment adapter: telling a burst of
negative headlines from calm ones is the point here, and a random tiny model cannot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from apps.sentiment.alerts import AlertStore
from apps.sentiment.settings import SentimentSettings
from apps.sentiment.store import NewsStore
from apps.server import create_app
from apps.settings import AppSettings
from core.config import PROJECT_ROOT, Settings
from core.redis_client import connect
from tests.doubles.redis import RedisProcess
from tests.doubles.sentiment import BURST, FeedServer, SmtpSink, WebhookReceiver
from tests.doubles.servers import KEYED, start_process, stop_process

pytestmark = pytest.mark.integration

SECRET = "integration-webhook-secret"
RULES = """
bucket: 1m
watchlist: {file: %s}
topics: {threshold: 0.3, labels: {litigation: [company sued in court lawsuit], earnings: [quarterly earnings results]}}
rules:
  - {name: entity_negative_z, kind: zscore, scope: [entity], window: 5m, baseline: 1h, min_items: 5,
     min_negative_share: 0.5, prior_share: 0.25, severity: {warning: 2.0, critical: 3.5}, cooldown: 1h}
""" % (PROJECT_ROOT / "apps" / "sentiment" / "rules" / "watchlist.yaml")

REPEAT = [
    "Globex shares slump again as losses widen and lenders cut credit lines",
    "Globex faces second lawsuit from pension funds over accounting fraud",
    "Globex plunges to record low after warning it may breach debt covenants",
    "Globex suspends dividend and warns of heavy losses",
    "Globex sued by former employees over collapsed share plan",
    "Regulators widen fraud probe into Globex accounts",
]


def rss(titles: list[str], tag: str, when: float | None = None) -> bytes:
    stamp = format_datetime(datetime.fromtimestamp(when or time.time(), UTC), usegmt=True)
    entries = "".join(
        f"<item><title>{t}</title><link>https://news.example.com/{tag}/{i}</link><pubDate>{stamp}</pubDate></item>"
        for i, t in enumerate(titles)
    )
    return f'<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>Wire</title>{entries}</channel></rss>'.encode()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


@dataclass
class Pipeline:
    ns: str
    redis: RedisProcess
    feeds: FeedServer
    webhook: WebhookReceiver
    smtp: SmtpSink
    env: dict[str, str]
    config: Path
    tmp: Path

    @property
    def store(self) -> NewsStore:
        return NewsStore(connect(self.redis.url, decode=True), self.ns)

    @property
    def alerts(self) -> AlertStore:
        return AlertStore(connect(self.redis.url, decode=True), self.ns)


@pytest.fixture(scope="module")
def pipeline(real_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    tmp = tmp_path_factory.mktemp("sentiment-pipeline")
    redis = RedisProcess(tmp / "redis").start()
    feeds, webhook, smtp = FeedServer().start(), WebhookReceiver(SECRET).start(), SmtpSink().start()
    feeds.set("/burst.xml", rss([], "none"))
    feeds.set("/same.xml", rss([], "none"))
    config = tmp / "rules.yaml"
    config.write_text(RULES)
    ns = f"it{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "DOMAINLLM_ENVIRONMENT": "test",
        "DOMAINLLM_ADMIN_KEY": "integration-admin-key",
        "DOMAINLLM_REDIS_URL": redis.url,
        "DOMAINLLM_BASE_MODEL": str(real_model_dir),
        "DOMAINLLM_ADAPTERS_DIR": str(PROJECT_ROOT / "data" / "adapters"),
        "DOMAINLLM_SENTIMENT_NAMESPACE": ns,
        "DOMAINLLM_SENTIMENT_CONFIG_PATH": str(config),
        "DOMAINLLM_SENTIMENT_FEEDS": json.dumps([feeds.url + "/burst.xml", feeds.url + "/same.xml"]),
        "DOMAINLLM_SENTIMENT_INBOX_DIR": str(tmp / "inbox"),
        "DOMAINLLM_SENTIMENT_POLL_INTERVAL_S": "1",
        "DOMAINLLM_SENTIMENT_MONITOR_INTERVAL_S": "1",
        "DOMAINLLM_SENTIMENT_SWEEP_INTERVAL_S": "5",
        "DOMAINLLM_SENTIMENT_WEBHOOK_URL": webhook.url + "/hook",
        "DOMAINLLM_SENTIMENT_WEBHOOK_SECRET": SECRET,
        "DOMAINLLM_SENTIMENT_SMTP_HOST": "127.0.0.1",
        "DOMAINLLM_SENTIMENT_SMTP_PORT": str(smtp.port),
        "DOMAINLLM_SENTIMENT_SMTP_TO": '["risk@example.com"]',
    }
    celery = [sys.executable, "-m", "celery", "-A", "workers.celery_app"]
    worker_log, beat_log = tmp / "worker.log", tmp / "beat.log"
    worker = start_process([*celery, "worker", "-Q", "ingest,enrich,alerts", "-c", "4", "-n", f"w-{ns}@%h", "-l", "INFO"],
                   env, worker_log)  # fmt: skip
    # two beats, as after a botched deploy: the monitor's lock and cooldown must keep alerts single
    beats = [
        start_process([*celery, "beat", "-s", str(tmp / f"beat-schedule-{i}"), "-l", "INFO"], env, beat_log)
        for i in range(2)
    ]
    try:
        wait_for("the worker's engine", lambda: "worker engine ready" in worker_log.read_text(), timeout=120)
        yield Pipeline(ns, redis, feeds, webhook, smtp, env, config, tmp)
        # counted before the beats stop: the first to stop gives the lock up, and the other may take it
        assert beat_log.read_text().count("this beat sends the schedule") == 1  # one beat held it throughout
    finally:
        for beat in beats:
            stop_process(beat)
        stop_process(worker)
        feeds.stop()
        webhook.stop()
        smtp.stop()
        redis.stop()
        text = worker_log.read_text()
        assert "Traceback" not in text, text[-5000:]


def test_burst_raises_exactly_one_alert_delivered_to_webhook_and_smtp(pipeline: Pipeline) -> None:
    pipeline.feeds.set("/burst.xml", rss(BURST, "burst"))
    alerts = wait_for("an alert", lambda: pipeline.alerts.recent(), timeout=90)
    wait_for("the webhook", lambda: pipeline.webhook.received, timeout=30)
    wait_for("the email", lambda: pipeline.smtp.messages, timeout=30)
    time.sleep(4)  # several more monitor ticks: nothing more may fire
    alerts = pipeline.alerts.recent()
    assert len(alerts) == 1, [a.message for a in alerts]
    alert = alerts[0]
    assert alert.scope == "entity:GLBX" and alert.numbers["negative"] >= 5
    assert {i["title"] for i in alert.items} <= set(BURST) and alert.items
    assert [r["alert"]["id"] for r in pipeline.webhook.received] == [alert.id] and pipeline.webhook.refused == 0
    assert len(pipeline.smtp.messages) == 1 and alert.id in pipeline.smtp.messages[0]["X-Domainllm-Alert-Id"]
    deliveries = pipeline.alerts.delivery(alert.id)
    assert {t: d["state"] for t, d in deliveries.items()} == {"log": "sent", "webhook": "sent", "email": "sent"}

    # the same kind of burst again, inside the cooldown: stored and counted, but no second alert
    pipeline.feeds.set("/burst.xml", rss(BURST + REPEAT, "burst"))  # the old entries again, plus new ones
    wait_for("the repeat burst enriched", lambda: pipeline.store.stats()["enriched"] >= len(BURST) + len(REPEAT))
    time.sleep(4)
    assert len(pipeline.alerts.recent()) == 1
    assert len(pipeline.webhook.received) == 1 and len(pipeline.smtp.messages) == 1
    assert pipeline.store.stats()["duplicates"] >= len(BURST)


def test_same_item_three_ways_twice_is_stored_and_counted_once(pipeline: Pipeline, tiny_settings: Settings) -> None:
    item = {"title": "Initech opens a new office in Austin", "url": "https://news.example.com/initech-austin",
            "source": "Wire", "published_at": time.time()}  # fmt: skip
    store = pipeline.store
    before = store.stats()
    # 1. the API, twice
    core = tiny_settings.model_copy(update={"redis_url": pipeline.redis.url})
    app = create_app(
        settings=AppSettings.of(core, sentiment=SentimentSettings(namespace=pipeline.ns, config_path=pipeline.config))
    )
    with TestClient(app, headers=KEYED) as client:
        answers = [client.post("/v1/sentiment/news", json=item).json() for _ in range(2)]
    assert [a["accepted"] for a in answers] == [1, 0] and answers[0]["ids"] == answers[1]["ids"]
    item_id = answers[0]["ids"][0]
    # 2. a file, twice, through the CLI
    path = pipeline.tmp / "drop.jsonl"
    path.write_text(json.dumps(item) + "\n")
    cli = [sys.executable, "-m", "domainllm.cli", "sentiment", "ingest", str(path)]
    for _ in range(2):
        done = subprocess.run(cli, cwd=PROJECT_ROOT, env=pipeline.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "0 new, 1 already stored" in done.stdout, done.stdout + done.stderr
    # 3. the RSS feed the beat polls, twice (changed bytes, so the second is not a 304)
    stamp = item["published_at"]
    pipeline.feeds.set(
        "/same.xml",
        rss([item["title"]], "x", stamp).replace(b"news.example.com/x/0", b"news.example.com/initech-austin"),
    )
    wait_for("the first poll", lambda: store.stats()["duplicates"] >= before["duplicates"] + 4, timeout=30)
    pipeline.feeds.set("/same.xml", pipeline.feeds.feeds["/same.xml"][0] + b"\n<!-- changed -->")
    wait_for("the second poll", lambda: store.stats()["duplicates"] >= before["duplicates"] + 5, timeout=30)
    wait_for("the enrichment", lambda: (store.get([item_id])[0] or {}).get("enrichment"), timeout=30)
    time.sleep(2)
    record = store.get([item_id])[0]
    assert record is not None and record["enrichment"]["entities_keys"] == ["INIT"]
    assert record["enrichment"]["model"] == "sentiment"  # the trained adapter, not the base
    bucket = store.buckets("entity:INIT", stamp - 120, stamp + 120, 60)
    assert sum(b.n for b in bucket) == 1  # counted once
    after = store.stats()
    assert after["accepted"] - before["accepted"] == 1 and after["duplicates"] - before["duplicates"] == 5


def test_files_dropped_in_the_inbox_are_ingested_and_moved(pipeline: Pipeline) -> None:
    inbox = pipeline.tmp / "inbox"
    inbox.mkdir(exist_ok=True)
    good = {"title": "Northwind Traders wins a large supply contract", "url": "https://news.example.com/nrth-contract"}
    (inbox / "morning.jsonl").write_text(json.dumps(good) + "\n" + '{"body": "no headline"}\n')
    (inbox / "broken.csv").write_text("text,url\nno title column,https://x.example\n")
    wait_for("the inbox to be scanned", lambda: (inbox / "done" / "morning.jsonl").exists(), timeout=30)
    wait_for("the bad file set aside", lambda: (inbox / "failed" / "broken.csv").exists(), timeout=30)
    wait_for("the enrichment", lambda: pipeline.store.r.zrange(f"{pipeline.ns}:ix:entity:NRTH", 0, -1), timeout=30)
    ids = pipeline.store.r.zrange(f"{pipeline.ns}:ix:entity:NRTH", 0, -1)
    assert len(ids) == 1 and pipeline.store.get(ids)[0]["url"] == good["url"]  # type: ignore[index]
    assert not [p for p in inbox.iterdir() if p.is_file()]
