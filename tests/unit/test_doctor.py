"""``domainllm doctor`` names each fault of a broken deployment: a missing model, Redis down, a corrupt
adapter (bad config, truncated weights, another base's), a full disk (simulated by its threshold, or a
disk-usage function), Redis persisting nothing, a queue nobody consumes, a replica whose clock is
off; and finds nothing wrong with a healthy one. Redis here is a server of the module's own."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from apps.ops_settings import OpsSettings
from apps.replicas import Heartbeats, start_heartbeat
from apps.sentiment.dispatch import client_app
from apps.settings import AppSettings
from core.config import Settings
from domainllm import doctor
from domainllm.doctor import Finding, exit_status, report, run_doctor
from tests.doubles.redis import RedisProcess, free_port

pytestmark = pytest.mark.unit

ALL_QUEUES = ["alerts", "enrich", "ingest", "train"]
Usage = namedtuple("Usage", "total used free")


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisProcess(tmp_path_factory.mktemp("doctor-redis")).start()
    client = redis.Redis.from_url(server.url)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    yield server.url
    server.stop()


@pytest.fixture
def r(own_redis: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def settings_for(tiny_settings: Settings, redis_url: str, **update: object) -> AppSettings:
    return AppSettings.of(tiny_settings.model_copy(update={"redis_url": redis_url, **update}))


def ops(**overrides: object) -> OpsSettings:
    return OpsSettings(
        **{"namespace": f"ops-{uuid.uuid4().hex[:6]}", "min_free_disk_mb": 1, "min_free_disk_pct": 0.01, **overrides}
    )


def healthy_replicas(client: redis.Redis, namespace: str) -> None:
    beats = Heartbeats(client, namespace)
    beats.beat("worker", period_s=60, replica_id="worker-1", queues=ALL_QUEUES)
    beats.beat("beat", period_s=60, replica_id="beat-1")
    beats.beat("api", period_s=60, replica_id="api-1")


def failing(findings: list[Finding]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in findings:
        if f.status == "fail":
            out.setdefault(f.check, []).append(f.detail)
    return out


def test_a_healthy_deployment_has_no_faults(tiny_settings: Settings, r: redis.Redis, own_redis: str) -> None:
    o = ops()
    healthy_replicas(r, o.namespace)
    findings = run_doctor(settings_for(tiny_settings, own_redis), o)
    assert failing(findings) == {}, report(findings)
    assert exit_status(findings) == 0
    checks = {f.check for f in findings if f.status == "ok"}
    assert {"model", "adapter", "redis", "persistence", "disk", "queues", "replicas", "clock"} <= checks
    assert "no faults found" in report(findings) or "warning" in report(findings)


def test_a_broken_deployment_names_each_fault(
    tiny_settings: Settings, tmp_path: Path, tiny_adapters: dict[str, Path]
) -> None:
    """The line 5 check: a missing model, Redis down, a corrupt adapter, a full disk (simulated)."""
    adapters = tmp_path / "adapters"
    shutil.copytree(tiny_adapters["alpha"], adapters / "bad-config")
    (adapters / "bad-config" / "adapter_config.json").write_text("{ not json")
    shutil.copytree(tiny_adapters["beta"], adapters / "truncated")
    weights = adapters / "truncated" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    shutil.copytree(tiny_adapters["alpha"], adapters / "fine")
    dead_redis = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    settings = settings_for(
        tiny_settings, dead_redis, base_model=str(tmp_path / "models" / "gone"), adapters_dir=adapters
    )
    findings = run_doctor(settings, ops(min_free_disk_mb=10**9))  # more than any disk has: "full"
    faults = failing(findings)
    assert set(faults) == {"model", "redis", "adapter", "disk"}, report(findings)
    assert "gone does not exist" in faults["model"][0]
    assert "is unreachable" in faults["redis"][0] and "s3cret" not in report(findings)
    assert any(d.startswith("bad-config:") and "not valid JSON" in d for d in faults["adapter"])
    assert any(d.startswith("truncated:") and "truncated" in d for d in faults["adapter"])
    assert not any(d.startswith("fine:") for d in faults["adapter"])
    assert "nearly) full" in faults["disk"][0]
    skipped = {f.check for f in findings if f.status == "skip"}
    assert skipped == {"persistence", "queues", "replicas", "clock"}
    assert exit_status(findings) == 1
    text = report(findings)
    for fix in ("domainllm prepare-model", "domainllm redis", "free space", "retrain it"):
        assert fix in text
    assert "4 fault(s)" not in text  # one per corrupt adapter: five faults
    assert "5 fault(s)" in text


def test_the_command_prints_the_faults_and_exits_1(
    tiny_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(tiny_settings, f"redis://127.0.0.1:{free_port()}/0", base_model=str(tmp_path / "nope"))
    assert doctor.main(settings=settings, quiet=True) == 1
    out = capsys.readouterr().out
    assert "model" in out and "nope does not exist" in out and "is unreachable" in out
    assert doctor.main(settings=settings, as_json=True) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {"check": "redis", "status": "fail"}.items() <= next(x for x in lines if x["check"] == "redis").items()


def test_a_full_disk_by_its_usage(tmp_path: Path) -> None:
    tiny = lambda _path: Usage(total=100 * 2**30, used=100 * 2**30 - 200 * 2**20, free=200 * 2**20)  # noqa: E731
    (finding,) = doctor.check_disk([tmp_path], ops(min_free_disk_mb=1024), disk_usage=tiny)
    assert finding.status == "fail" and "200 MB free" in finding.detail and "1024 MB floor" in finding.detail
    (finding,) = doctor.check_disk([tmp_path], ops(min_free_disk_mb=1, min_free_disk_pct=5), disk_usage=tiny)
    assert finding.status == "fail" and "5.0% floor" in finding.detail
    (finding,) = doctor.check_disk([tmp_path / "not" / "made" / "yet"], ops(), disk_usage=tiny)
    assert finding.status == "ok"  # a folder to be made is judged by the disk it will be on


def test_an_adapter_trained_on_another_base(
    tiny_settings: Settings, tmp_path: Path, tiny_model_dir: Path, tiny_adapters: dict[str, Path]
) -> None:
    other = tmp_path / "other-base"
    shutil.copytree(tiny_model_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["hidden_size"] *= 2
    config["intermediate_size"] *= 2
    (other / "config.json").write_text(json.dumps(config))
    findings = doctor.check_adapters(settings_for(tiny_settings, "redis://x", base_model=str(other)), None)
    bad = [f.detail for f in findings if f.status == "fail"]
    assert len(bad) == 2 and all("trained on another base" in d for d in bad)


def test_redis_that_persists_nothing(tiny_settings: Settings, r: redis.Redis, own_redis: str) -> None:
    r.config_set("appendonly", "no")
    r.config_set("save", "")
    try:
        faults = failing(doctor.check_persistence(r))
        assert "persists nothing" in faults["persistence"][0]
        r.config_set("save", "60 1")
        (warn,) = doctor.check_persistence(r)
        assert warn.status == "warn" and "RDB snapshots only" in warn.detail
        r.config_set("maxmemory-policy", "allkeys-lru")
        assert any("evicts keys" in f.detail for f in doctor.check_persistence(r))
    finally:
        r.config_set("appendonly", "yes")
        r.config_set("maxmemory-policy", "noeviction")
    assert [f.status for f in doctor.check_persistence(r)] == ["ok"]


def test_a_queue_nobody_consumes(tiny_settings: Settings, r: redis.Redis, own_redis: str) -> None:
    o = ops()
    beats = Heartbeats(r, o.namespace)
    beats.beat("worker", period_s=60, replica_id="worker-ingest", queues=["ingest", "alerts"])
    client_app(own_redis).send_task("sentiment.enrich", kwargs={"ids": ["x"]}, queue="enrich")
    faults = failing(run_doctor(settings_for(tiny_settings, own_redis), o))
    assert list(faults) == ["queues"]
    (detail,) = faults["queues"]
    assert detail.startswith("queue enrich: 1 waiting, the oldest for ") and detail.endswith(
        "no live worker consumes it"
    )


def test_a_queue_that_waited_too_long(r: redis.Redis, own_redis: str) -> None:
    o = ops(queue_max_age_s=0.05)
    Heartbeats(r, o.namespace).beat("worker", period_s=60, replica_id="w", queues=ALL_QUEUES)
    client_app(own_redis).send_task("sentiment.sweep", queue="ingest")
    time.sleep(0.1)
    findings = doctor.check_queues(r, Heartbeats(r, o.namespace).live(), o)
    (slow,) = [f for f in findings if f.status == "warn"]
    assert slow.detail.startswith("queue ingest: 1 waiting") and "1 worker(s)" in slow.detail


def test_clock_skew_between_replicas_names_the_one_that_is_off(
    tiny_settings: Settings, r: redis.Redis, own_redis: str
) -> None:
    o = ops()
    healthy_replicas(r, o.namespace)
    Heartbeats(r, o.namespace, clock=lambda: time.time() + 90).beat(
        "worker", period_s=60, replica_id="worker-fast-clock", queues=ALL_QUEUES
    )
    faults = failing(run_doctor(settings_for(tiny_settings, own_redis), o))
    assert list(faults) == ["clock"]
    (detail,) = faults["clock"]
    assert "worker-fast-clock is 90" in detail and "ahead of the others" in detail
    assert "api-1" not in detail and "beat-1" not in detail


def test_replicas_without_a_beat_and_without_heartbeats(r: redis.Redis) -> None:
    o = ops()
    (none,) = doctor.check_replicas([], o)
    assert none.status == "warn" and "no live replica" in none.detail
    Heartbeats(r, o.namespace).beat("worker", period_s=60, queues=ALL_QUEUES)
    found = doctor.check_replicas(Heartbeats(r, o.namespace).live(), o)
    assert [f.status for f in found] == ["ok", "warn"] and "no beat runs" in found[1].detail


def test_heartbeats_expire_and_a_stopped_replica_leaves(r: redis.Redis) -> None:
    beats = Heartbeats(r, "ops-expiry")
    beats.beat("worker", period_s=0.1, replica_id="short-lived")  # live for three periods (1 s at least)
    beats.beat("api", period_s=60, replica_id="stays")
    assert {x.id for x in beats.live()} == {"short-lived", "stays"}
    beats.forget("stays")
    time.sleep(1.1)
    assert beats.live() == []
    assert r.zcard("ops-expiry:replicas") == 0  # the index is pruned too


def test_the_redis_url_is_printed_without_its_password() -> None:
    assert doctor.safe_url("redis://:p%40ss@host:6379/0") == "redis://:***@host:6379/0"
    assert doctor.safe_url("rediss://user:pw@host/1") == "rediss://user:***@host/1"
    assert doctor.safe_url("redis://127.0.0.1:6390/0") == "redis://127.0.0.1:6390/0"


def test_a_heartbeat_thread_beats_until_stopped(r: redis.Redis) -> None:
    thread = start_heartbeat(r, "api", period_s=0.05, namespace="ops-thread", metrics_port=None)
    assert thread is not None
    try:
        deadline = time.monotonic() + 10
        while not (live := Heartbeats(r, "ops-thread").live()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert live[0].role == "api" and abs(live[0].offset_s) < 1
    finally:
        thread.stop()
    assert Heartbeats(r, "ops-thread").live() == []  # a clean stop leaves at once
    assert start_heartbeat(r, "api", period_s=0, namespace="ops-thread") is None  # heartbeats off
