"""What replicas share besides Redis's own data: artefacts in the shared store (a KB index, the
ranker, the adapter set) that one process writes and every replica loads read-only, told apart by a
version key in Redis.

    {key}            int      set by the writer once the artefact is whole in the store: bumped
                              (INCR), or the artefact's own generation number
    {key}:changed    pub/sub  the new version, published after each write

A writer persists first, then ``bump``s (or ``set``s the generation it wrote); a reader's
``VersionWatch.check`` GETs the key (at most every ``check_s``), and a version it has not accepted
yet means "reload from the store". Reading the version *before* reloading makes the order safe: a
write that lands during the reload moves the key again, and the next check reloads once more. A
version that moved for nothing costs one reload (for a KB, one look at its manifest's generation),
never a wrong answer.

``Subscriber`` is for state that must be applied rather than read on demand (an adapter loaded on
one replica is loaded on all): one thread per process listens on the channels and, since pub/sub
drops what is sent while a listener is away, calls its handler again on every (re)connect, so a
handler that reconciles from Redis never misses a change.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

log = logging.getLogger(__name__)

CHECK_S = 0.5  # a change is in force on every replica this long after its write, plus one reload


def changed_channel(key: str) -> str:
    return f"{key}:changed"


def _int(raw: Any) -> int:
    return int(raw) if raw is not None else 0


class SharedVersion:
    """The version key of one shared artefact (bytes or str client)."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.r: Any = client
        self.key = key

    @property
    def channel(self) -> str:
        return changed_channel(self.key)

    def get(self) -> int:
        """The current version; 0 before the first write."""
        return _int(self.r.get(self.key))

    def bump(self) -> int:
        """Call after the artefact is written: every replica reloads it. Returns the new version."""
        version = int(self.r.incr(self.key))
        self.r.publish(self.channel, str(version))
        return version

    def set(self, version: int) -> None:
        """Announce ``version`` (an artefact that numbers its own generations, like a knowledge base):
        the key holds the generation in the store, so a writer that finds it behind can set it again."""
        self.r.set(self.key, str(version))
        self.r.publish(self.channel, str(version))

    def watch(self, check_s: float = CHECK_S, clock: Callable[[], float] = time.monotonic) -> VersionWatch:
        return VersionWatch(self, check_s, clock)


class VersionWatch:
    """One reader's view of a ``SharedVersion``: which version it loaded, when it last looked.

    ``check()`` costs nothing between looks and one GET per look; a Redis that does not answer is
    logged once per outage and reads as "no change" (the loaded artefact keeps serving)."""

    def __init__(
        self, version: SharedVersion, check_s: float = CHECK_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if check_s < 0:
            raise ValueError("check_s must be >= 0")
        self.version = version
        self.check_s = check_s
        self.clock = clock
        self.accepted: int | None = None  # None: nothing loaded yet, any version is new
        self._looked_at = float("-inf")
        self._failing = False
        self._lock = threading.Lock()

    def check(self) -> int | None:
        """The version to load when it differs from the accepted one, else None; looks at Redis at
        most every ``check_s``. Call ``accept`` with it once the reload succeeded."""
        now = self.clock()
        with self._lock:  # many request threads ask at once: one of them looks
            if now - self._looked_at < self.check_s:
                return None
            self._looked_at = now
        current = self.look()
        return current if current is not None and current != self.accepted else None

    def look(self) -> int | None:
        """The version now, read at once; None when Redis does not answer. A reader's first load reads
        it before loading and accepts it after."""
        try:
            current = self.version.get()
        except redis.RedisError as exc:
            if not self._failing:
                log.warning("version of %s unreadable (Redis: %s); serving what is loaded", self.version.key, exc)
            self._failing = True
            return None
        if self._failing:
            log.info("version of %s readable again", self.version.key)
        self._failing = False
        return current

    def accept(self, version: int) -> None:
        self.accepted = version


Handler = Callable[[str, str | None], None]  # (channel, message); message None: (re)connected, reconcile


class Subscriber:
    """One daemon thread that listens on ``channels`` and calls ``handler`` for each message, and
    with ``None`` on every (re)connect. A handler error is logged and the thread goes on; Redis going
    away is logged once and retried every ``retry_s``."""

    def __init__(
        self, client: redis.Redis, channels: Sequence[str], handler: Handler, *, name: str, retry_s: float = 1.0
    ) -> None:
        if not channels:
            raise ValueError("a subscriber needs at least one channel")
        self.r: Any = client
        self.channels = list(channels)
        self.handler = handler
        self.retry_s = retry_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._failing = False

    def start(self) -> Subscriber:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    def _call(self, channel: str, message: str | None) -> None:
        try:
            self.handler(channel, message)
        except Exception:
            log.exception("handling %s on %s failed", message if message is not None else "a reconnect", channel)

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = self.r.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(*self.channels)
                if self._failing:
                    log.info("listening on %s again", ", ".join(self.channels))
                self._failing = False
                for channel in self.channels:  # whatever was sent while no one listened
                    self._call(channel, None)
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=0.2)  # how long stop() may wait
                    if msg is not None and msg.get("type") == "message":
                        self._call(_text(msg["channel"]), _text(msg["data"]))
            except redis.RedisError as exc:
                if not self._failing:
                    log.warning("listening on %s stopped (Redis: %s); retrying", ", ".join(self.channels), exc)
                self._failing = True
                self._stop.wait(self.retry_s)
            finally:
                with contextlib.suppress(redis.RedisError):  # closing a dead connection
                    pubsub.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
