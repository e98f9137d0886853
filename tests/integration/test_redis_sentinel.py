"""A Redis behind Sentinel, named by one ``redis+sentinel://`` URL: a real master with a password and
a real sentinel (redis-server in sentinel mode) on loopback. The stores, single clients, the rate
limiter and the Celery broker all find the master through the sentinel."""

from __future__ import annotations

import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from apps.sentiment.dispatch import client_app
from apps.tenants.limits import RateLimits
from core.errors import RateLimitedError
from core.redis_client import (
    CeleryBroker,
    RedisClients,
    SentinelTarget,
    celery_broker,
    client_for,
    sentinel_target,
)
from core.redis_server import redis_command, redis_executable, wait_for_port
from domainllm.doctor import safe_url
from tests.doubles.redis import free_port

pytestmark = pytest.mark.integration

PASSWORD = "s3cret/pw"  # a character that must be quoted in URLs
MASTER = "domainllm"


@pytest.fixture(scope="module")
def sentinel_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis+sentinel://`` for a master (password, AOF) watched by one sentinel; the first
    sentinel in the URL is a dead address, which clients must skip."""
    tmp = tmp_path_factory.mktemp("sentinel")
    master_port, sentinel_port = free_port(), free_port()
    master = subprocess.Popen(
        redis_command(master_port, tmp / "master", password=PASSWORD, maxmemory="64mb"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    conf = tmp / "sentinel.conf"  # a sentinel rewrites its own file: it must be writable
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 1\n"
        f'sentinel auth-pass {MASTER} "{PASSWORD}"\n',
        encoding="utf-8",
    )
    sentinel = subprocess.Popen(
        [redis_executable(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port("127.0.0.1", master_port)
        wait_for_port("127.0.0.1", sentinel_port)
        watcher = redis.Redis(port=sentinel_port)
        deadline = time.monotonic() + 15
        while watcher.sentinel_get_master_addr_by_name(MASTER) is None:
            assert time.monotonic() < deadline, "the sentinel never learnt the master"
            time.sleep(0.1)
        watcher.close()
        yield f"redis+sentinel://:s3cret%2Fpw@127.0.0.1:{free_port()},127.0.0.1:{sentinel_port}/{MASTER}/3"
    finally:
        for proc in (sentinel, master):
            proc.terminate()
            proc.wait(timeout=20)


def test_a_sentinel_url_is_parsed_and_other_urls_are_left_alone() -> None:
    target = sentinel_target("rediss+sentinel://app:p%40ss@s1:26380,s2,[::1]:26381/main/2")
    assert target == SentinelTarget(
        sentinels=(("s1", 26380), ("s2", 26379), ("::1", 26381)), master="main", db=2,
        username="app", password="p@ss", ssl=True,
    )  # fmt: skip
    assert sentinel_target("redis://:pw@host:6379/0") is None
    assert celery_broker("redis://:pw@host:6379/0") == CeleryBroker("redis://:pw@host:6379/0", {})
    assert celery_broker("rediss+sentinel://:p%40ss@s1,s2:26380/main/2") == CeleryBroker(
        "sentinel://:p%40ss@s1:26379/2;sentinel://:p%40ss@s2:26380/2",
        {"master_name": "main"},
        {"ssl_cert_reqs": ssl.CERT_REQUIRED},
    )
    assert celery_broker("rediss://:pw@host:6380/0").use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    with pytest.raises(ValueError, match="master"):
        sentinel_target("redis+sentinel://s1:26379")
    assert (
        safe_url("redis+sentinel://:p%40ss@s1:26380,s2:26379/main/2")
        == "redis+sentinel://:***@s1:26380,s2:26379/main/2"
    )


def test_the_stores_and_single_clients_reach_the_master(sentinel_url: str) -> None:
    clients = RedisClients(sentinel_url, max_connections=4)
    try:
        key = f"sentinel-test:{uuid.uuid4().hex}"
        clients.raw.set(key, b"\x00bytes")
        assert clients.text.get(key) == "\x00bytes"
        assert client_for(sentinel_url).get(key) == b"\x00bytes"
        assert clients.text.info("keyspace").get("db3", {}).get("keys", 0) >= 1  # the URL's db, not 0
    finally:
        clients.close()


def test_the_rate_limiter_counts_on_the_master(sentinel_url: str) -> None:
    limits = RateLimits(sentinel_url, per_key="2/minute", per_ip="", namespace=f"rl-{uuid.uuid4().hex[:8]}")
    limits.hit_key("k")
    limits.hit_key("k")
    with pytest.raises(RateLimitedError):  # a limiter that cannot reach its store lets requests through
        limits.hit_key("k")


def test_celery_sends_and_reads_tasks_through_the_sentinel(sentinel_url: str) -> None:
    app = client_app(sentinel_url)
    queue = f"sentinel-test-{uuid.uuid4().hex[:8]}"
    app.send_task("sentiment.sweep", kwargs={"namespace": "x"}, queue=queue)
    master = client_for(sentinel_url)
    assert master.llen(queue) == 1  # in the master's db 3, where the workers will look
    with app.connection_for_read() as conn:
        message = conn.SimpleQueue(queue, no_ack=True).get(timeout=10)
    assert message.headers["task"] == "sentiment.sweep"
    master.delete(queue)
