"""kombu's Redis transport, with one fix: a worker whose Redis restarts no longer dies on the reconnect.

When the broker connection drops, Celery collects it (``Connection.collect`` sets the transport's
``client`` to None) and then closes the consumer's channel; closing puts the messages the worker still
held back on their queue (``QoS.restore_unacked``), which opens a Redis client from ``client``'s host
and port: ``AttributeError: 'NoneType' object has no attribute 'hostname'``, which Celery reports as an
"Unrecoverable error", and the worker exits (measured here: about one Redis restart in six, and in CI
both workers at once; the same path as celery/kombu#970 and #582, not fixed in kombu 5.7.0).

Nothing is lost by not putting them back then: each held message is still in the unacked hash in
Redis, and a live worker restores it once the visibility timeout has passed (``restore_visible``,
every ``unacked_restore_interval``), as for a worker that was killed. So here a channel whose
connection is gone leaves them there, and says so, instead of crashing the worker.

    app.conf.broker_transport = transport_for(broker_url)   # what workers/celery_app.py does
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    def restore_unacked(self, client: Any = None) -> None:
        if client is None and self.channel.connection.client is None:  # the connection was collected
            if self._delivered:
                log.warning("broker connection lost: %d held message(s) stay unacknowledged in Redis and are "
                            "restored after the visibility timeout", len(self._delivered))  # fmt: skip
            self._delivered.clear()
            return
        super().restore_unacked(client)


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(kombu_redis.SentinelChannel):
    QoS = QoS


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


def transport_for(broker_url: str) -> str:
    """The transport for a broker URL as ``core.redis_client.celery_broker`` writes it."""
    kind = "SentinelTransport" if broker_url.startswith("sentinel://") else "Transport"
    return f"{__name__}:{kind}"
