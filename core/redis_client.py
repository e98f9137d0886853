"""Redis clients for every service in a process: one connection pool per response encoding, one
timeout policy. A Redis that hangs must fail a request (503) or a task (retried), never freeze it.

Binary values (vectors, pickled-free JSON bytes) need raw responses and text stores want decoded
ones; redis-py fixes that choice per connection, so a process holds exactly two pools, both built
here and shared by every store.

The URL is redis-py's (``redis://``, ``rediss://`` for TLS, ``unix://``), or one naming a Redis behind
Sentinel: ``redis+sentinel://[[user]:password@]host:port[,host:port...]/<master name>[/db]``
(``rediss+sentinel://``: TLS to the master). The password is the master's; the sentinels are asked
without one. Every client of the suite is built from that one URL here: the stores' pools, single
clients (``client_for``), and the Celery broker (``celery_broker``: kombu's ``sentinel://`` form).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

import redis
from redis.sentinel import Sentinel

SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 3.0
HEALTH_CHECK_S = 30


SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}  # scheme: TLS to the master
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelTarget:
    """A Redis master found through Sentinel (parsed from a ``redis+sentinel://`` URL)."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False

    def __post_init__(self) -> None:
        if not self.sentinels or not all(host for host, _ in self.sentinels):
            raise ValueError("a redis+sentinel:// URL names at least one sentinel host:port")
        if not self.master:
            raise ValueError("a redis+sentinel:// URL names the master after the hosts: .../<master name>[/db]")

    def master_kwargs(self) -> dict[str, Any]:
        """Connection settings of the master (and what its pool is built with)."""
        auth = {"username": self.username, "password": self.password}
        return {"db": self.db, "ssl": self.ssl, **{k: v for k, v in auth.items() if v}}

    def client(self, **kwargs: Any) -> redis.Redis:
        """A client of the current master, following a failover; ``kwargs`` go to its connections."""
        sentinel = Sentinel(
            list(self.sentinels),
            sentinel_kwargs={"socket_timeout": SOCKET_TIMEOUT_S, "socket_connect_timeout": CONNECT_TIMEOUT_S},
        )
        return sentinel.master_for(self.master, **self.master_kwargs(), **kwargs)


def sentinel_target(url: str) -> SentinelTarget | None:
    """The Sentinel setup a ``redis+sentinel://`` URL names; None for any other URL."""
    scheme, _, rest = url.partition("://")
    if scheme not in SENTINEL_SCHEMES:
        return None
    auth, at, location = rest.rpartition("@")
    hosts, _, path = location.partition("/")
    user, _, password = auth.partition(":") if at else ("", "", "")
    parts = [part for part in path.split("?")[0].split("/") if part]
    sentinels = []
    for host in filter(None, hosts.split(",")):
        name, colon, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
        sentinels.append((name.strip("[]"), int(port)) if colon else (host.strip("[]"), SENTINEL_PORT))
    return SentinelTarget(
        sentinels=tuple(sentinels),
        master=unquote(parts[0]) if parts else "",
        db=int(parts[1]) if len(parts) > 1 else 0,
        username=unquote(user) or None,
        password=unquote(password) or None,
        ssl=SENTINEL_SCHEMES[scheme],
    )


def client_for(url: str, **kwargs: Any) -> redis.Redis:
    """One client for ``url`` (``redis.Redis.from_url``, or the master behind Sentinel)."""
    target = sentinel_target(url)
    return redis.Redis.from_url(url, **kwargs) if target is None else target.client(**kwargs)


@dataclass(frozen=True)
class CeleryBroker:
    """Celery's broker settings for a Redis URL: ``broker_url``, ``broker_transport_options``, ``broker_use_ssl``."""

    url: str
    transport_options: dict[str, Any]
    use_ssl: dict[str, Any] | None = None


def celery_broker(url: str) -> CeleryBroker:
    """The URL as is, or for Sentinel kombu's form: ``sentinel://`` per sentinel (each carrying the
    master's password and db) joined by ``;``, and the master's name as a transport option. TLS
    verifies the server's certificate, as redis-py does (kombu, given a bare ``rediss://``, would not)."""
    target = sentinel_target(url)
    if target is None:
        return CeleryBroker(url, {}, {"ssl_cert_reqs": ssl.CERT_REQUIRED} if url.startswith("rediss://") else None)
    auth = ""
    if target.password:
        auth = f"{quote(target.username or '', safe='')}:{quote(target.password, safe='')}@"
    broker = ";".join(f"sentinel://{auth}{host}:{port}/{target.db}" for host, port in target.sentinels)
    use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED} if target.ssl else None
    return CeleryBroker(broker, {"master_name": target.master}, use_ssl)


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
        target = sentinel_target(url)
        if target is not None:
            self.raw = target.client(**common)
            self.text = target.client(decode_responses=True, **common)
            return
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
