"""The worker's safety rails as plain objects: task time limits that hold on the threads pool (where
Celery enforces none), and the beat lock on the run's real Redis: two beats never both send."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

from tests.doubles.redis import RedisProcess
from workers.beat_lock import BeatLock, LockedScheduler
from workers.time_limits import LimitedTask, Watchdog

pytestmark = pytest.mark.unit


def wait_until(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# ---- time limits ---------------------------------------------------------------------------------


def test_the_soft_limit_interrupts_the_tasks_thread() -> None:
    dog, outcome = Watchdog(on_hard=lambda *_: None), []

    def task() -> None:
        token = dog.arm("busy", soft_s=0.2, hard_s=60)
        try:
            while True:  # pure Python work: interrupted at the next bytecode
                time.sleep(0.01)
        except SoftTimeLimitExceeded:
            outcome.append("stopped cleanly")
        finally:
            dog.disarm(token)

    t = threading.Thread(target=task)
    t.start()
    t.join(timeout=30)
    assert outcome == ["stopped cleanly"]


def test_a_task_done_in_time_is_left_alone() -> None:
    errors: list[str] = []
    dog = Watchdog(on_hard=lambda *_: errors.append("hard"))

    def task() -> None:
        try:
            token = dog.arm("quick", soft_s=0.2, hard_s=0.4)
            dog.disarm(token)
            time.sleep(0.6)  # past both deadlines, disarmed
        except SoftTimeLimitExceeded:
            errors.append("soft")

    t = threading.Thread(target=task)
    t.start()
    t.join(timeout=30)
    assert errors == []


def test_the_hard_limit_ends_what_the_soft_one_could_not() -> None:
    """A thread blocked where no exception reaches it: the hard limit's action runs (in a worker it
    ends the process, as prefork ends its child)."""
    ended: list[tuple[str, float]] = []
    dog, release = Watchdog(on_hard=lambda task, limit: ended.append((task, limit))), threading.Event()

    def stuck() -> None:
        token = dog.arm("stuck", soft_s=None, hard_s=0.2)
        release.wait(timeout=30)
        dog.disarm(token)

    t = threading.Thread(target=stuck)
    t.start()
    wait_until(lambda: ended)
    release.set()
    t.join(timeout=30)
    assert ended == [("stuck", 0.2)]


def test_a_limited_task_on_a_pool_thread_stops_at_its_soft_limit(caplog: pytest.LogCaptureFixture) -> None:
    app = Celery("limits-test", set_as_current=False)

    @app.task(base=LimitedTask, name="test.spin", soft_time_limit=0.2, time_limit=60, shared=False)
    def spin() -> str:
        while True:
            time.sleep(0.01)

    @app.task(base=LimitedTask, name="test.quick", soft_time_limit=0.2, time_limit=60, shared=False)
    def quick() -> str:
        return "done"

    results: list[Any] = []
    t = threading.Thread(target=lambda: results.extend([spin(), quick()]))  # a threads-pool worker calls them so
    t.start()
    t.join(timeout=30)
    assert results == [None, "done"]
    assert "test.spin stopped at its soft time limit" in caplog.text


# ---- the beat lock -------------------------------------------------------------------------------


def scheduler(redis_url: str, key: str, tmp_path: Path, name: str, sent: list[str], ttl_s: float = 30) -> Any:
    app = Celery(f"beat-{name}", broker=redis_url, set_as_current=False)
    app.conf.update(beat_lock_key=key, beat_lock_ttl_s=ttl_s, timezone="UTC",
                    beat_schedule={"tick": {"task": "test.tick", "schedule": 0.05}})  # fmt: skip
    s = LockedScheduler(app=app, schedule_filename=str(tmp_path / f"schedule-{name}"))
    s.apply_entry = lambda entry, producer=None: sent.append(name)  # what it would send
    s.producer = None  # nothing goes to the broker here
    return s


def test_two_beats_never_both_send(redis_url: str, tmp_path: Path) -> None:
    key, sent = f"beat-lock-{uuid.uuid4().hex[:8]}", list[str]()
    first, second = (scheduler(redis_url, key, tmp_path, n, sent) for n in ("first", "second"))
    stop = threading.Event()

    def run(s: LockedScheduler) -> None:
        while not stop.is_set():
            time.sleep(max(0.0, min(s.tick(), 0.02)))  # as beat's loop, with shorter naps

    threads = [threading.Thread(target=run, args=(s,), daemon=True) for s in (first, second)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(sent) >= 10)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert len(set(sent)) == 1  # one beat sent every tick; the other stood by
    holder, standby = (first, second) if sent[0] == "first" else (second, first)
    assert holder.holding and not standby.holding

    # a clean stop gives the lock up: the standby takes over at once, and the old holder sends no more
    holder.close()
    before = len(sent)
    wait_until(lambda: (standby.tick() or True) and len(sent) > before)
    assert set(sent[before:]) == {"second" if holder is first else "first"}
    standby.close()


def test_a_beat_that_died_loses_the_lock_when_its_lease_runs_out(redis_url: str, tmp_path: Path) -> None:
    key, sent = f"beat-lock-{uuid.uuid4().hex[:8]}", list[str]()
    dead, standby = (scheduler(redis_url, key, tmp_path, n, sent, ttl_s=0.5) for n in ("dead", "standby"))
    wait_until(lambda: (dead.tick() or True) and "dead" in sent)
    assert standby.tick() > 0 and "standby" not in sent  # the holder's lease is fresh
    # the holder stops ticking (killed, frozen); once its lease has run out the standby sends
    wait_until(lambda: (standby.tick() or True) and "standby" in sent)
    before = len(sent)
    dead.tick()  # back from the dead: the lock is the standby's now, so it must not send
    assert sent[before:].count("dead") == 0 and not dead.holding
    standby.close()


def test_the_lock_renews_only_for_its_holder(redis_url: str) -> None:
    import redis

    client, key = redis.Redis.from_url(redis_url), f"beat-lock-{uuid.uuid4().hex[:8]}"
    a, b = BeatLock(client, key, ttl_s=30), BeatLock(client, key, ttl_s=30)
    assert a.hold() and a.hold() and not b.hold()
    b.release()  # not b's to give up
    assert not b.hold()
    a.release()
    assert b.hold() and not a.hold()
    client.close()


def test_a_workers_engine_never_refuses_its_own_tasks_for_the_apis_queue_bound() -> None:
    """The API refuses past DOMAINLLM_ENGINE_MAX_QUEUE_S; a worker's engine serves only Celery's queue,
    which is its backlog, so its tasks are bounded by their time limits instead."""
    from apps.settings import AppSettings
    from workers.runtime import worker_settings

    api = AppSettings(environment="test", admin_key="k")
    worker = worker_settings(api)
    assert worker.engine_max_queue_s == 3600.0 and api.engine_max_queue_s == 10.0
    assert worker.engine_deadline_s == api.sentiment.enrich_soft_time_limit_s


# ---- the broker transport ------------------------------------------------------------------------


@contextlib.contextmanager
def holding_one_message(tmp_path: Path, transport: str) -> Iterator[tuple[RedisProcess, Any, Any, Any]]:
    """A restartable Redis and a connection on ``transport`` whose default channel holds one
    message of queue "held" unacknowledged, as a worker running its task does: (server, connection,
    channel, message)."""
    from kombu import Connection

    server = RedisProcess(tmp_path / "redis").start()
    try:
        conn = Connection(server.url, transport=transport, transport_options={"visibility_timeout": 1})
        channel = conn.default_channel
        channel.queue_declare("held")
        channel.basic_publish(channel.prepare_message("work"), exchange="", routing_key="held")
        message = channel.basic_get("held", no_ack=False)
        assert message is not None
        yield server, conn, channel, message
    finally:
        server.stop()


def unacked(server: RedisProcess) -> int:
    import redis as redis_py

    return int(redis_py.Redis.from_url(server.url).hlen("unacked"))


@pytest.mark.parametrize("transport", ["redis", "workers.redis_transport:Transport"], ids=["kombu", "ours"])
def test_redis_dying_under_a_consumer_leaves_its_held_messages_for_the_restore(tmp_path: Path, transport: str) -> None:
    """The state a worker's log showed when Redis restarted under it (CI, both workers at once): a
    message held, a BRPOP outstanding, the server gone; Celery's ``collect()`` fails to close the
    consumer's channel (in the worker, its event-loop poller failed first; here the channel is simply
    not in the transport's list) and drops the transport's client; Celery then closes the connection.
    kombu's transport crashes there ("Unrecoverable error ... 'hostname'", and the worker exits);
    ours leaves the held message unacknowledged in Redis, where a live worker's visibility-timeout
    restore finds it."""
    with holding_one_message(tmp_path, transport) as (server, conn, channel, _):
        channel.queue_declare("idle")
        channel.basic_consume("idle", no_ack=False, callback=lambda *_: None, consumer_tag="idle")
        with pytest.raises(socket.timeout):
            conn.drain_events(timeout=0.2)  # leaves a BRPOP outstanding, as the worker's loop does
        server.stop(kill=True)
        conn.transport.channels.remove(channel)
        with contextlib.suppress(Exception):
            conn.collect(socket_timeout=0.5)  # what Celery does on the connection error (and ignores)
        assert not channel.closed and channel.connection.client is None  # the transport lost its client
        if transport == "redis":
            with pytest.raises(AttributeError, match="hostname"):
                conn.close()
            return
        conn.close()
        server.start()  # append-only persistence: what was in Redis is there again
        assert unacked(server) == 1  # for restore_visible


def test_a_task_finishing_after_its_connection_was_lost_leaves_its_message_for_the_restore(tmp_path: Path) -> None:
    """The other path of the same restart (CI, both workers, after they had reconnected): a task that
    ran through it on the threads pool acknowledged its message on the old channel, whose connection
    was gone, and kombu's transport crashed the worker ("'NoneType' object has no attribute 'client'",
    from ``QoS.ack`` -> ``_connparams``). Ours lets the acknowledgement go: the message stays
    unacknowledged in Redis and runs again after the visibility timeout (tasks are idempotent)."""
    with holding_one_message(tmp_path, "workers.redis_transport:Transport") as (server, conn, channel, message):
        server.stop(kill=True)
        with contextlib.suppress(Exception):
            conn.collect(socket_timeout=0.5)  # the connection error; the worker goes on with a new connection
        assert channel.connection is None or channel.connection.client is None  # this channel is done for
        message.ack()  # the task is done: no crash
        server.start()
        assert unacked(server) == 1  # for restore_visible
