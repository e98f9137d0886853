"""Version keys and the listener thread (core/shared_state.py) on a real Redis, and what replicas build
on them: two knowledge bases on one folder, two recommenders on one ranker file and two adapter sets
(apps/llm/adapter_set.py), each pair as two replicas would hold them, one writing and one reading."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from apps.llm.adapter_set import AdapterSet
from apps.recommend.service import RecommendService, ranker_version
from apps.recommend.settings import RecommendSettings
from apps.support.documents import Document
from apps.support.kb import KnowledgeBase
from core.adapters import AdapterInfo
from core.errors import AdapterLoadError, AdapterNotFoundError
from core.shared_state import SharedVersion, Subscriber, VersionWatch, changed_channel
from domains.recommend.ranking import Rankers, fallback_blender
from tests.doubles.recommend import HashEmbedder
from tests.doubles.redis import RedisProcess, free_port

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    yield r
    r.close()


@pytest.fixture
def key() -> str:
    return f"shared-{uuid.uuid4().hex[:8]}:thing:version"


def wait_for(predicate: object, limit_s: float = 5.0) -> None:
    give_up = time.monotonic() + limit_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < give_up, "timed out"
        time.sleep(0.02)


# ---- the version key ------------------------------------------------------------------------------


def test_bump_counts_up_from_zero_and_publishes_each_version(client: redis.Redis, key: str) -> None:
    version = SharedVersion(client, key)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(changed_channel(key))
    assert version.get() == 0
    assert [version.bump(), version.bump()] == [1, 2]
    assert version.get() == 2
    got: list[bytes] = []
    give_up = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < give_up:
        msg = pubsub.get_message(timeout=0.2)
        if msg is not None:
            got.append(msg["data"])
    pubsub.close()
    assert got == [b"1", b"2"]


def test_set_announces_a_generation_and_reads_back_on_either_client(redis_either: redis.Redis, key: str) -> None:
    version = SharedVersion(redis_either, key)
    version.set(7)
    assert version.get() == 7
    version.set(3)  # a folder started over: the key follows it down
    assert version.get() == 3


def test_a_watch_sees_a_new_version_once_and_only_when_it_looks(client: redis.Redis, key: str) -> None:
    clock = Clock()
    writer = SharedVersion(client, key)
    watch = writer.watch(check_s=0.5, clock=clock)
    assert watch.check() == 0  # nothing accepted yet: whatever is there is new
    watch.accept(0)
    clock.now += 1
    assert watch.check() is None
    writer.bump()
    assert watch.check() is None  # looked 0 s ago: no GET, no news yet
    clock.now += 0.49
    assert watch.check() is None
    clock.now += 0.02
    assert watch.check() == 1
    clock.now += 1
    assert watch.check() == 1  # not accepted (a reload that failed): asked again
    watch.accept(1)
    clock.now += 1
    assert watch.check() is None


def test_a_watch_without_redis_reads_as_no_change_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    away = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    clock = Clock()
    watch = VersionWatch(SharedVersion(away, "nowhere:version"), check_s=0.5, clock=clock)
    watch.accept(4)
    with caplog.at_level(logging.WARNING, logger="core.shared_state"):
        for _ in range(3):
            assert watch.check() is None
            clock.now += 1
        assert watch.look() is None
    assert len([r for r in caplog.records if "unreadable" in r.getMessage()]) == 1
    with pytest.raises(ValueError):
        VersionWatch(SharedVersion(away, "x"), check_s=-1)


# ---- the listener ---------------------------------------------------------------------------------


def test_a_subscriber_reconciles_on_connect_gets_messages_and_outlives_a_failing_handler(
    redis_url: str, key: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    version = SharedVersion(client, key)
    seen: list[tuple[str, str | None]] = []
    lock = threading.Lock()

    def handler(channel: str, message: str | None) -> None:
        with lock:
            seen.append((channel, message))
        if message == "1":
            raise RuntimeError("a handler that fails once")

    sub = Subscriber(client, [version.channel], handler, name="test-subscriber").start()
    try:
        wait_for(lambda: (version.channel, None) in seen)  # subscribed: reconcile first
        wait_for(lambda: client.pubsub_numsub(version.channel)[0][1] == 1)
        version.bump()
        version.bump()
        wait_for(lambda: (version.channel, "2") in seen)
        assert [m for _, m in seen] == [None, "1", "2"]
    finally:
        sub.stop()
        client.close()
    with pytest.raises(ValueError):
        Subscriber(client, [], handler, name="none")


def test_a_subscriber_comes_back_after_redis_restarts_and_reconciles(tmp_path: Path, key: str) -> None:
    server = RedisProcess(tmp_path / "redis").start()
    client = redis.Redis.from_url(server.url, socket_connect_timeout=1)
    wait_for(lambda: _pings(client), limit_s=20)
    reconciles: list[str | None] = []
    sub = Subscriber(
        client, [changed_channel(key)], lambda _c, m: reconciles.append(m) if m is None else None, name="t", retry_s=0.1
    ).start()
    try:
        wait_for(lambda: len(reconciles) == 1)
        server.stop()
        server = RedisProcess(tmp_path / "redis", port=server.port).start()
        wait_for(lambda: len(reconciles) >= 2, limit_s=20)  # what was published meanwhile is read again
    finally:
        sub.stop()
        client.close()
        server.stop()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


# ---- what replicas hold ---------------------------------------------------------------------------


def test_a_kb_written_by_one_replica_is_read_by_another_within_a_check(
    client: redis.Redis, key: str, tmp_path: Path
) -> None:
    version = SharedVersion(client, key)
    writer = KnowledgeBase(tmp_path / "kb", HashEmbedder(), version=version)
    reader = KnowledgeBase(tmp_path / "kb", HashEmbedder(), version=SharedVersion(client, key))
    writer.warm_up()
    reader.warm_up()
    assert reader.refresh_if_changed() is False
    writer.upsert(Document(doc_id="gift", title="Gift cards", text="Gift cards never expire."))
    assert version.get() == writer.generation == 1  # the key holds the generation on disk
    wait_for(reader.refresh_if_changed, limit_s=2)
    assert reader.get("gift") is not None and reader.generation == 1
    time.sleep(0.6)
    assert reader.refresh_if_changed() is False  # accepted: no reload until the next write


def test_a_lost_announcement_is_made_again_by_the_next_write(client: redis.Redis, key: str, tmp_path: Path) -> None:
    version = SharedVersion(client, key)
    writer = KnowledgeBase(tmp_path / "kb", HashEmbedder(), version=version)
    writer.upsert(Document(doc_id="a", title="A", text="First."))
    client.set(key, 0)  # as if Redis lost it (a restart without persistence, a failed SET)
    writer.upsert(Document(doc_id="a", title="A", text="First."))  # unchanged, still announces
    assert version.get() == writer.generation == 1


def test_a_kb_without_a_version_key_never_looks(tmp_path: Path) -> None:
    kb = KnowledgeBase(tmp_path / "kb", HashEmbedder())
    kb.upsert(Document(doc_id="a", title="A", text="First."))
    assert kb.refresh_if_changed() is False


def test_a_ranker_saved_by_one_replica_serves_on_another(redis_url: str, tmp_path: Path) -> None:
    ns = f"r{uuid.uuid4().hex[:8]}"

    def replica(tenant_ns: str) -> RecommendService:
        settings = RecommendSettings(namespace=tenant_ns, ranker_path=tmp_path / "ranker.json")
        return RecommendService(settings, redis.Redis.from_url(redis_url), HashEmbedder())

    writer, reader, tenant = replica(ns), replica(ns), replica(f"{ns}.t-acme")
    assert reader.rankers().final.kind == tenant.rankers().final.kind == "fallback"
    trained = Rankers(
        dataclasses.replace(fallback_blender(True), kind="trained"),
        dataclasses.replace(fallback_blender(False), kind="trained"),
    )
    assert writer.save_rankers(trained) == 1
    assert ranker_version(writer.client, writer.settings).key == f"{ns}:ranker:version"
    wait_for(lambda: reader.rankers().final.kind == "trained", limit_s=2)
    wait_for(lambda: tenant.rankers().final.kind == "trained", limit_s=2)  # one file, one key for all tenants


# ---- the adapter set ------------------------------------------------------------------------------


class FakeEngine:
    """The engine calls the adapter set makes: a registry of names and folders (typed ``Any`` where
    used: it is not a whole ``Engine``)."""

    def __init__(self) -> None:
        self.ready = True
        self.folders: dict[str, Path] = {}

    def adapters(self) -> list[AdapterInfo]:
        return [AdapterInfo(n, p, 4, 8.0, ["q_proj"], 0) for n, p in self.folders.items()]

    def load_adapter(self, name: str, path: Path) -> AdapterInfo:
        if not path.is_dir():
            raise AdapterLoadError(name, str(path), "no such folder")
        self.folders[name] = path
        return self.adapters()[-1]

    def unload_adapter(self, name: str) -> None:
        if name not in self.folders:
            raise AdapterNotFoundError(name, sorted(self.folders))
        del self.folders[name]


def test_an_adapter_loaded_through_one_replica_is_loaded_and_unloaded_on_another(
    redis_url: str, tmp_path: Path
) -> None:
    ns = f"set-{uuid.uuid4().hex[:8]}"
    (tmp_path / "gamma").mkdir()
    here: Any = FakeEngine()
    there: Any = FakeEngine()
    a = AdapterSet(redis.Redis.from_url(redis_url), ns, tmp_path)
    b = AdapterSet(redis.Redis.from_url(redis_url, decode_responses=True), ns, tmp_path)
    following = b.follow(there)
    try:
        wait_for(lambda: a.r.pubsub_numsub(a.version.channel)[0][1] == 1)
        a.load(here, "gamma", tmp_path / "gamma")
        wait_for(lambda: "gamma" in there.folders, limit_s=2)
        assert there.folders["gamma"] == tmp_path / "gamma"
        assert b.recorded() == {"gamma": tmp_path / "gamma"}  # relative to the store: stored as "gamma"
        with pytest.raises(AdapterLoadError):  # refused here: recorded nowhere, tried nowhere else
            a.load(here, "ghost", tmp_path / "ghost")
        a.unload(here, "gamma")
        wait_for(lambda: "gamma" not in there.folders, limit_s=2)
        assert b.recorded() == {"gamma": None}
    finally:
        following.stop()
    # a replica started later (or back from an outage) catches up when it reconciles
    a.load(here, "gamma", tmp_path / "gamma")
    late: Any = FakeEngine()
    late.folders["gamma-old"] = tmp_path
    assert b.reconcile(late) == ["+gamma"] and "gamma" in late.folders
    late.ready = False
    assert b.reconcile(late) == []  # not warm yet: the warm-up reconciles


def test_a_change_made_while_redis_is_away_stands_here_and_is_recorded_when_it_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisProcess(tmp_path / "redis").start()
    client = redis.Redis.from_url(server.url, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    wait_for(lambda: _pings(client), limit_s=20)
    (tmp_path / "gamma").mkdir()
    engine: Any = FakeEngine()
    adapters = AdapterSet(client, "away", tmp_path)
    server.stop()
    with caplog.at_level(logging.WARNING, logger="apps.llm.adapter_set"):
        adapters.load(engine, "gamma", tmp_path / "gamma")
    assert "gamma" in engine.folders and "this replica only" in caplog.text
    server = RedisProcess(tmp_path / "redis", port=server.port).start()
    try:
        wait_for(lambda: _pings(client), limit_s=20)
        assert adapters.reconcile(engine) == []  # its own change recorded first, not undone
        assert adapters.recorded() == {"gamma": tmp_path / "gamma"} and "gamma" in engine.folders
    finally:
        client.close()
        server.stop()
