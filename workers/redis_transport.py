"""kombu's Redis transport, with one fix: a worker whose Redis restarts no longer dies on the reconnect.

When the broker connection drops, Celery collects it (``Connection.collect`` sets the transport's
``client`` to None) and then closes the consumer's channel; closing puts the messages the worker still
held back on their queue (``QoS.restore_unacked``), which opens a Redis client from ``client``'s host
and port: ``AttributeError: 'NoneType' object has no attribute 'hostname'``, which Celery reports as an
"Unrecoverable error", and the worker exits (measured here: about one Redis restart in six, and in CI
both workers at once; the same path as celery/kombu#970 and #582, not fixed in kombu 5.7.0). The
same happens when a task that ran through the reconnect (the threads pool) finishes and acknowledges
its message on the old channel: ``AttributeError: 'NoneType' object has no attribute 'client'``.

Nothing is lost by not putting them back, or not acknowledging them, on a dead channel: each held
message is still in the unacked hash in Redis, and a live worker restores it once the visibility
timeout has passed (``restore_visible``, every ``unacked_restore_interval``), as for a worker that
was killed; a finished task then runs again, and every task is idempotent. So here a channel whose
connection is gone leaves them there, and says so, instead of crashing the worker.

    app.conf.broker_transport = transport_for(broker_url)   # what workers/celery_app.py does
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    def _connection_gone(self) -> bool:
        """The channel's connection was collected (its transport has no client) or the channel was
        closed with it: nothing on this channel can reach Redis again; the worker goes on with a new one."""
        transport = self.channel.connection
        return transport is None or transport.client is None

    def restore_unacked(self, client: Any = None) -> None:
        if client is None and self._connection_gone():
            if self._delivered:
                log.warning("broker connection lost: %d held message(s) stay unacknowledged in Redis and are "
                            "restored after the visibility timeout", len(self._delivered))  # fmt: skip
            self._delivered.clear()
            return
        super().restore_unacked(client)

    def ack(self, delivery_tag: str) -> None:
        # a task that ran through the reconnect (the threads pool) finishes on the old channel
        if self._connection_gone():
            self._left_unacked(delivery_tag, "acknowledged")
            return
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if self._connection_gone():
            self._left_unacked(delivery_tag, "rejected")
            return
        super().reject(delivery_tag, requeue)

    def _left_unacked(self, delivery_tag: str, what: str) -> None:
        log.warning("message %s %s after the broker connection it came on was lost: it stays unacknowledged in "
                    "Redis and runs again after the visibility timeout (tasks are idempotent)", delivery_tag, what)  # fmt: skip
        self._delivered.pop(delivery_tag, None)


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
