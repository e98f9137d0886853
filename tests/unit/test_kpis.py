"""The KPIs: what /metrics reads from Redis (support, alerts, recommend, queues, replicas) equals what
the apps' own stats say, a dead Redis gives ``domainllm_kpi_up 0`` and never a failed scrape, reads
are cached and bounded; and a worker's exporter reports its tasks and alert deliveries."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from apps.kpis import KpiCollector, queue_stats
from apps.ops_settings import OpsSettings
from apps.recommend.settings import RecommendSettings
from apps.replicas import Heartbeats
from apps.sentiment.alerts import Alert
from apps.sentiment.dispatch import DELIVER, client_app
from apps.sentiment.settings import SentimentSettings
from apps.server import create_app
from apps.settings import AppSettings
from apps.support.settings import SupportSettings
from core.config import Settings
from core.engine import LocalEngine
from tests.doubles.recommend import HashEmbedder
from tests.doubles.redis import free_port
from tests.doubles.workers import running_worker, wait_for, worker_app
from workers import metrics as worker_metrics

pytestmark = pytest.mark.unit

ADMIN = {"X-Admin-Key": "test-admin-key"}
WIDGET = {"X-Support-Key": "pk_test"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(scrape: dict[Any, float], name: str, **labels: str) -> float:
    return scrape[(name, tuple(sorted(labels.items())))]


def app_settings(tiny_settings: Settings, redis_url: str, tmp_path: Path) -> AppSettings:
    ns = uuid.uuid4().hex[:8]
    return AppSettings.of(
        tiny_settings.model_copy(update={"redis_url": redis_url}),
        tenancy_namespace=f"k{ns}-tenancy",
        support=SupportSettings(namespace=f"k{ns}-support", kb_dir=tmp_path / "kb", public_keys=["pk_test"]),
        sentiment=SentimentSettings(namespace=f"k{ns}-sentiment"),
        recommend=RecommendSettings(namespace=f"k{ns}-recommend", ranker_path=tmp_path / "no-ranker.json"),
    )


@pytest.fixture
def ops_ns(monkeypatch: pytest.MonkeyPatch) -> str:
    """The heartbeats' namespace of this test (read by the app's ops settings from the environment)."""
    ns = f"ops-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("DOMAINLLM_OPS_NAMESPACE", ns)
    monkeypatch.setenv("DOMAINLLM_OPS_KPI_CACHE_S", "0")
    return ns


@pytest.fixture
def client(
    tiny_settings: Settings, tiny_engine: LocalEngine, redis_url: str, tmp_path: Path, ops_ns: str
) -> Iterator[TestClient]:
    tiny_engine.embedder = HashEmbedder()  # type: ignore[assignment]
    with TestClient(create_app(app_settings(tiny_settings, redis_url, tmp_path), engine=tiny_engine)) as c:
        yield c


def test_kpis_equal_what_the_apps_stored(client: TestClient, redis_url: str, ops_ns: str) -> None:
    services = client.app.state.services  # type: ignore[attr-defined]
    # support: two sessions, a bot turn in each (an empty KB: handed off), each turn rated
    for question, rating in (("Where is my parcel?", "up"), ("How do I return a jacket?", "down")):
        sid = client.post("/v1/support/sessions", json={}, headers=WIDGET).json()["session_id"]
        reply = client.post(f"/v1/support/sessions/{sid}/messages", json={"message": question}, headers=WIDGET).json()
        body = {"session_id": sid, "message_id": reply["message_id"], "rating": rating}
        assert client.post("/v1/support/feedback", json=body, headers=WIDGET).status_code == 200
    stats = client.get("/v1/support/stats", headers=ADMIN).json()
    # sentiment: an alert to two targets (both in the outbox), one of them dead-lettered
    alerts = services.sentiment.alerts
    alert = Alert("al_kpi", "surge", "surge", "entity:ACME", "high", time.time(), "ACME turns negative", {})
    assert alerts.fire(alert, cooldown_s=60, targets=["log", "webhook"])
    alerts.record("al_kpi", "webhook", "dead", "gave up")
    # recommend: a list shown and clicked
    rec = services.recommend
    rec.upsert_items([{"id": f"i{n}", "title": f"Item {n}", "category": "c"} for n in range(4)])
    listed = rec.recommend("shopper-1", k=2)
    rec.impressions(listed["recommendation_id"])
    rec.feedback(listed["recommendation_id"], listed["items"][0]["item_id"], "click")
    rstats = rec.stats()
    # replicas: two workers, one clock two minutes ahead
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    Heartbeats(r, ops_ns).beat("worker", period_s=30, replica_id="w1", queues=["enrich"])
    Heartbeats(r, ops_ns, clock=lambda: time.time() + 120).beat("worker", period_s=30, replica_id="w2")

    scrape = samples(client.get("/metrics").text)
    t = {"tenant": "default"}
    assert value(scrape, "domainllm_kpi_up") == 1
    assert value(scrape, "domainllm_support_sessions_total", **t) == stats["sessions"] == 2
    assert value(scrape, "domainllm_support_answers_total", **t) == stats["messages"] == 2
    assert value(scrape, "domainllm_support_answered_total", **t) == stats["answered"]
    assert value(scrape, "domainllm_support_handoffs_total", **t) == stats["handoffs"]
    assert stats["answered"] + stats["handoffs"] == 2
    assert value(scrape, "domainllm_support_feedback", rating="up", **t) == stats["feedback"]["up"] == 1
    assert value(scrape, "domainllm_support_feedback", rating="down", **t) == stats["feedback"]["down"] == 1
    assert value(scrape, "domainllm_support_handoffs_active", status="open", **t) == stats["open_handoffs"]
    assert value(scrape, "domainllm_sentiment_alerts_total", **t) == 1
    assert value(scrape, "domainllm_sentiment_alert_outbox", **t) == 2
    assert value(scrape, "domainllm_sentiment_dead_letters", **t) == 1
    assert value(scrape, "domainllm_recommend_requests_total", **t) == rstats["requests"] == 1
    for source, s in rstats["sources"].items():
        assert value(scrape, "domainllm_recommend_impressions_total", source=source, **t) == s["impressions"]
        assert value(scrape, "domainllm_recommend_clicks_total", source=source, **t) == s["clicks"]
    assert sum(s["clicks"] for s in rstats["sources"].values()) == 1
    assert value(scrape, "domainllm_replicas", role="worker") == 2
    assert value(scrape, "domainllm_replicas", role="beat") == 0
    assert 119 < value(scrape, "domainllm_replica_clock_spread_seconds") < 121
    for queue in ("ingest", "enrich", "alerts", "train"):
        assert ("domainllm_celery_queue_length", (("queue", queue),)) in scrape
        assert value(scrape, "domainllm_celery_queue_consumers", queue=queue) == (queue == "enrich")
    # the process's own metrics are there too: HTTP and the model versions' responses
    assert any(name == "domainllm_http_requests_total" for name, _ in scrape)


def test_a_second_tenant_has_its_own_series_and_the_tenants_read_are_capped(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = client.app.state.services  # type: ignore[attr-defined]
    services.tenants.create_tenant("kpi-acme")
    services.apps_of("kpi-acme").recommend.upsert_items([{"id": "a1", "title": "Anvil", "category": "tools"}])
    services.apps_of("kpi-acme").recommend.recommend("coyote", k=1)
    scrape = samples(client.get("/metrics").text)
    assert value(scrape, "domainllm_recommend_requests_total", tenant="kpi-acme") == 1
    assert value(scrape, "domainllm_recommend_requests_total", tenant="default") == 0
    assert value(scrape, "domainllm_kpi_tenants") == 2
    collector = KpiCollector(services.redis.text, services.settings, OpsSettings(kpi_max_tenants=1))
    assert collector.tenant_ids() == ["default"]


def test_a_redis_that_is_down_gives_kpi_up_0_and_a_working_scrape(
    tiny_settings: Settings, tiny_engine: LocalEngine, tmp_path: Path
) -> None:
    settings = app_settings(tiny_settings, f"redis://127.0.0.1:{free_port()}/0", tmp_path)
    with TestClient(create_app(settings, engine=tiny_engine)) as c:
        r = c.get("/metrics")
    assert r.status_code == 200
    scrape = samples(r.text)
    assert value(scrape, "domainllm_kpi_up") == 0
    assert not any(name.startswith("domainllm_support_") for name, _ in scrape)
    assert any(name == "domainllm_http_requests_total" for name, _ in scrape)


def test_reads_are_cached_for_kpi_cache_s(redis_url: str, tiny_settings: Settings, tmp_path: Path) -> None:
    settings = app_settings(tiny_settings, redis_url, tmp_path)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    clock = [0.0]
    collector = KpiCollector(r, settings, OpsSettings(kpi_cache_s=10), monotonic=lambda: clock[0])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    stats_key = f"{settings.support.namespace}:stats"

    def sessions() -> float:
        return value(samples(generate_latest(registry).decode()), "domainllm_support_sessions_total", tenant="default")

    assert sessions() == 0
    r.hincrby(stats_key, "sessions", 5)
    clock[0] = 9.9
    assert sessions() == 0  # within the cache window: Redis not read again
    clock[0] = 10.0
    assert sessions() == 5


def test_queue_stats_count_waiting_messages_and_the_oldest_ones_age(redis_url: str) -> None:
    queue = f"kpi-q-{uuid.uuid4().hex[:8]}"
    r = redis.Redis.from_url(redis_url)
    assert queue_stats(r, [queue])[0][0].depth == 0
    sender = client_app(redis_url)
    for n in range(3):
        sender.send_task("kpi.nothing", kwargs={"n": n}, queue=queue)
    time.sleep(0.05)
    (stats,), _ = queue_stats(r, [queue])
    assert stats.depth == 3
    assert stats.oldest_age_s is not None and 0.05 <= stats.oldest_age_s < 30
    r.delete(queue)


# ---- a worker's exporter ---------------------------------------------------------------------------


def test_a_workers_exporter_reports_its_tasks_and_alert_deliveries(redis_url: str) -> None:
    app, queue = worker_app(redis_url)
    ran: list[str] = []

    @app.task(name=DELIVER, shared=False)  # shared: every app finalized later would get it too
    def deliver(alert_id: str, target: str, namespace: str) -> str:
        ran.append(alert_id)
        return "sent"

    @app.task(name=f"{queue}.broken", shared=False)
    def broken() -> None:
        ran.append("broken")
        raise RuntimeError("this task fails")

    worker_metrics.install()  # as importing workers.celery_app does in a worker
    port = worker_metrics.start_exporter(OpsSettings(worker_metrics_port=free_port(), worker_metrics_ports=1))
    assert port is not None and worker_metrics.exporter_port() == port

    def scrape() -> dict[Any, float]:
        return samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)

    def get(s: dict[Any, float], name: str, **labels: str) -> float:
        return s.get((name, tuple(sorted(labels.items()))), 0.0)

    before = scrape()
    with running_worker(app, queue):
        deliver.apply_async(kwargs={"alert_id": "al_1", "target": "webhook", "namespace": "x"}, queue=queue)
        broken.apply_async(queue=queue)
        wait_for(lambda: len(ran) == 2)
        wait_for(lambda: get(scrape(), "domainllm_celery_tasks_total", task=f"{queue}.broken", state="failure") == 1)
    after = scrape()
    assert (
        get(after, "domainllm_alert_deliveries_total", target="webhook", result="sent")
        - get(before, "domainllm_alert_deliveries_total", target="webhook", result="sent")
        == 1
    )
    assert get(after, "domainllm_celery_tasks_total", task=DELIVER, state="success") >= 1
    # both messages' waits were measured (the test queue is none of ours: "other")
    assert (
        get(after, "domainllm_celery_task_wait_seconds_count", queue="other")
        - get(before, "domainllm_celery_task_wait_seconds_count", queue="other")
        == 2
    )
    assert get(after, "domainllm_celery_task_duration_seconds_count", task=f"{queue}.broken") == 1
    assert get(after, "domainllm_celery_tasks_running", task=f"{queue}.broken") == 0
    # the engine's metrics live in the same registry: a worker that runs the model reports them
    assert ("domainllm_queue_depth", ()) in after
