"""Redis clients for every service in a process: one connection pool per response encoding, one
timeout policy. A Redis that hangs must fail a request (503) or a task (retried), never freeze it.

Binary values (vectors, pickled-free JSON bytes) need raw responses and text stores want decoded
ones; redis-py fixes that choice per connection, so a process holds exactly two pools, both built
here and shared by every store.
"""

from __future__ import annotations

import redis

SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 3.0
HEALTH_CHECK_S = 30


class RedisClients:
    """``raw`` answers bytes, ``text`` answers str; both share one URL and one timeout policy."""

    def __init__(self, url: str, *, max_connections: int = 64) -> None:
        self.url = url
        common = {
            "socket_timeout": SOCKET_TIMEOUT_S,
            "socket_connect_timeout": CONNECT_TIMEOUT_S,
            "health_check_interval": HEALTH_CHECK_S,
            "max_connections": max_connections,
        }
        self.raw = redis.Redis(connection_pool=redis.ConnectionPool.from_url(url, **common))
        self.text = redis.Redis(connection_pool=redis.ConnectionPool.from_url(url, decode_responses=True, **common))

    def close(self) -> None:
        self.raw.close()
        self.text.close()
        self.raw.connection_pool.disconnect()
        self.text.connection_pool.disconnect()


def connect(url: str, *, decode: bool = False) -> redis.Redis:
    """One client with the shared timeouts, for a process that needs only one (a CLI, a test)."""
    clients = RedisClients(url, max_connections=8)
    return clients.text if decode else clients.raw


class NamespacedStore:
    """A store whose keys all live under one namespace: ``key("a", "b")`` is ``"<namespace>:a:b"``."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.r = client
        self.ns = namespace

    def key(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))
