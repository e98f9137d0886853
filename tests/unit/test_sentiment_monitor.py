"""Monitoring and delivery as plain functions on a real embedded Redis: the rules fire once per
cooldown, two concurrent monitors store one alert, deliveries reach a real webhook receiver and a
real SMTP server, failures are recorded and dead letters can be taken back. Trends and the chart."""

from __future__ import annotations

import json
import threading
import uuid

import pytest

from apps.sentiment.alerts import AlertStore
from apps.sentiment.config import MonitorConfig, Rule, TopicConfig, parse_duration
from apps.sentiment.delivery import DeliveryError, deliver, sign, verify_signature
from apps.sentiment.items import NewsItem
from apps.sentiment.monitor import evaluate, run_monitor
from apps.sentiment.settings import SentimentSettings
from apps.sentiment.store import NewsStore
from apps.sentiment.trends import chart_png, series
from core.redis_client import connect
from tests.doubles.redis import free_port
from tests.doubles.sentiment import SmtpSink, WebhookReceiver

pytestmark = pytest.mark.unit

T0 = 1_790_000_000.0  # a fixed "now" (2026-09) so the test does not depend on the clock
SECRET = "test-webhook-secret"


@pytest.fixture
def stores(redis_url: str) -> tuple[NewsStore, AlertStore]:
    ns, client = f"t{uuid.uuid4().hex[:8]}", connect(redis_url, decode=True)
    return NewsStore(client, ns), AlertStore(client, ns)


def rule(**kw: object) -> Rule:
    base: dict[str, object] = dict(name="z", kind="zscore", scopes=("entity",), window_s=3600, baseline_s=7 * 86400,
                                   min_items=5, cooldown_s=6 * 3600)  # fmt: skip
    return Rule(**{**base, **kw})  # type: ignore[arg-type]


def config(*rules: Rule) -> MonitorConfig:
    return MonitorConfig(bucket_s=300, rules=list(rules), topics=TopicConfig(labels={"x": ["x"]}))


def add(store: NewsStore, n: int, label: str, at: float, entity: str = "GLBX", tag: str = "") -> None:
    for i in range(n):
        item = NewsItem(id=f"{tag}{label}{at}{i}", title=f"{entity} {label} {i}", published_at=at + i)
        store.add([item])
        enrichment = {"label": label, "scores": {label: 0.9}, "entities_keys": [entity], "topic_keys": []}
        assert store.commit_enrichment(item, enrichment, 300) == 1


def test_rule_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="baseline must be longer"):
        rule(baseline_s=60)
    with pytest.raises(ValueError, match="multiple of the bucket"):
        MonitorConfig(bucket_s=300, rules=[rule(window_s=400)], topics=TopicConfig(labels={"x": ["x"]}))
    assert parse_duration("7d") == 604800 and rule().level(2.5) == "warning" and rule().level(9) == "critical"


def test_zscore_burst_fires_once_then_cooldown(stores: tuple[NewsStore, AlertStore]) -> None:
    store, alerts = stores
    for day in range(1, 6):  # a calm baseline: a few items a day, mostly not negative
        add(store, 3, "neutral", T0 - day * 86400, tag="b")
        add(store, 1, "negative", T0 - day * 86400 + 7200, tag="b")
    add(store, 8, "negative", T0 - 1200)
    cfg = config(rule())
    first = run_monitor(store, alerts, cfg, now=T0)
    assert len(first) == 1
    alert = first[0]
    assert (alert.scope, alert.severity, alert.numbers["items"], alert.numbers["negative"]) == (
        "entity:GLBX",
        "critical",
        8,
        8,
    )
    assert alert.numbers["z"] > 3 and len(alert.items) == 8 and alert.items[0]["label"] == "negative"
    add(store, 8, "negative", T0 + 600, tag="again")
    assert run_monitor(store, alerts, cfg, now=T0 + 900) == []  # inside the cooldown
    assert len(run_monitor(store, alerts, cfg, now=T0 + 7 * 3600)) == 0  # the window has moved on: nothing new
    assert [a.id for a in alerts.recent()] == [alert.id]


def test_too_few_items_or_mostly_positive_does_not_fire(stores: tuple[NewsStore, AlertStore]) -> None:
    store, _ = stores
    add(store, 4, "negative", T0 - 600)
    assert evaluate(store, rule(), "entity:GLBX", T0, 300) is None
    add(store, 20, "positive", T0 - 300)
    finding = evaluate(store, rule(), "entity:GLBX", T0, 300)
    assert finding is not None and finding.severity is None


def test_two_monitors_at_once_store_one_alert(stores: tuple[NewsStore, AlertStore]) -> None:
    store, alerts = stores
    add(store, 10, "negative", T0 - 900)
    cfg = config(rule())
    results: list[int] = []
    # the run lock lets one through; the others skip
    threads = [
        threading.Thread(target=lambda: results.append(len(run_monitor(store, alerts, cfg, now=T0)))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 1 and len(alerts.recent()) == 1


def test_concurrent_fires_without_the_lock_store_one_alert(stores: tuple[NewsStore, AlertStore]) -> None:
    """Even past the lock (a lock that expired mid-run), the cooldown check and the store are one step."""
    from apps.sentiment.alerts import Alert

    _, alerts = stores
    stored: list[bool] = []

    def fire(i: int) -> None:
        alert = Alert(id=f"a{i}", rule="z", kind="zscore", scope="entity:GLBX", severity="warning",
                      fired_at=T0 + i, message="m", numbers={})  # fmt: skip
        stored.append(alerts.fire(alert, cooldown_s=3600))

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stored.count(True) == 1 and len(alerts.recent()) == 1


def test_ewma_volume_surge(stores: tuple[NewsStore, AlertStore]) -> None:
    store, alerts = stores
    for h in range(2, 48):
        add(store, 1, "negative", T0 - h * 3600, entity="X", tag="calm")
    add(store, 15, "negative", T0 - 1000, entity="X")
    r = rule(name="vol", kind="ewma", scopes=("all",), baseline_s=2 * 86400, min_items=10, severity={"warning": 3.0})
    fired = run_monitor(store, alerts, config(r), now=T0)
    assert [a.scope for a in fired] == ["all"] and fired[0].numbers["surge"] >= 3


# ---- delivery ------------------------------------------------------------------------------------


def test_webhook_signature_round_trip() -> None:
    import time

    ts = str(int(time.time()))
    assert verify_signature(SECRET, ts, b"{}", sign(SECRET, ts, b"{}"))
    assert not verify_signature(SECRET, ts, b"{ }", sign(SECRET, ts, b"{}"))
    assert not verify_signature(SECRET, "100", b"{}", sign(SECRET, "100", b"{}"))  # too old


def test_deliver_to_webhook_and_smtp_once_each(stores: tuple[NewsStore, AlertStore]) -> None:
    store, alerts = stores
    add(store, 8, "negative", T0 - 600)
    (alert,) = run_monitor(store, alerts, config(rule()), now=T0)
    receiver, smtp = WebhookReceiver(SECRET).start(), SmtpSink().start()
    try:
        settings = SentimentSettings(webhook_url=receiver.url + "/hook", webhook_secret=SECRET, smtp_host="127.0.0.1",
                                     smtp_port=smtp.port, smtp_to=["risk@example.com"])  # fmt: skip
        assert settings.targets() == ["log", "webhook", "email"]
        for target in settings.targets():
            assert deliver(alerts, alert.id, target, settings) == "sent"
            assert deliver(alerts, alert.id, target, settings) == "already"
        assert len(receiver.received) == 1 and receiver.received[0]["alert"]["id"] == alert.id
        assert len(smtp.messages) == 1 and "GLBX" in smtp.messages[0]["Subject"]
        assert "X-Domainllm-Alert-Id" in smtp.messages[0]
    finally:
        receiver.stop()
        smtp.stop()


def test_unreachable_webhook_fails_then_dead_letter_is_taken_back(stores: tuple[NewsStore, AlertStore]) -> None:
    store, alerts = stores
    add(store, 8, "negative", T0 - 600)
    (alert,) = run_monitor(store, alerts, config(rule()), now=T0)
    url = f"http://127.0.0.1:{free_port()}/services/T000/B000/secret-token-in-the-path"  # Slack-style
    settings = SentimentSettings(webhook_url=url, webhook_secret=SECRET, delivery_timeout_s=2)
    with pytest.raises(DeliveryError, match="unreachable"):
        deliver(alerts, alert.id, "webhook", settings)
    assert alerts.delivery(alert.id)["webhook"]["state"] == "failed"
    assert "secret-token" not in json.dumps(alerts.delivery(alert.id))  # the stored error names the host only
    alerts.record(alert.id, "webhook", "dead", "gave up")
    assert alerts.dead_letters() == [(alert.id, "webhook")]
    assert alerts.take_dead_letters(alert.id) == [(alert.id, "webhook")] and alerts.dead_letters() == []


def test_webhook_secret_placeholder_is_refused() -> None:
    with pytest.raises(ValueError, match="WEBHOOK_SECRET"):
        SentimentSettings(webhook_url="http://127.0.0.1:1/hook")


# ---- trends --------------------------------------------------------------------------------------


def test_series_and_chart(stores: tuple[NewsStore, AlertStore]) -> None:
    store, alerts = stores
    add(store, 3, "neutral", T0 - 5000)
    add(store, 8, "negative", T0 - 600)
    (alert,) = run_monitor(store, alerts, config(rule()), now=T0)
    points = series(store, "entity:GLBX", T0, 3 * 3600, 300, 900)
    assert sum(p["n"] for p in points) == 11 and sum(p["negative"] for p in points) == 8
    assert points[-1]["negative_share"] in (None, 1.0)
    png = chart_png(points, [alert], "entity:GLBX")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
