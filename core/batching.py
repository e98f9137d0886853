"""Micro-batching: jobs that arrive within a few milliseconds run as one batch on one thread.

Every model call of the engine goes through the one worker thread here, so adapter loads and
unloads are naturally serialised with inference and no forward pass ever sees a half-loaded
adapter. Jobs of a batchable kind ("generate", "labels") are grouped up to ``max_batch`` rows
across requests and adapters; other kinds ("solo") run alone, in arrival order.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from core import metrics
from core.errors import EngineOverloadedError

log = logging.getLogger(__name__)

SOLO = "solo"


@dataclass
class Job:
    kind: str
    payload: Any
    rows: int = 1
    future: Future[Any] = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


BatchHandler = Callable[[list[Job]], list[Any]]


class MicroBatcher:
    def __init__(
        self,
        handlers: dict[str, BatchHandler],
        *,
        max_batch: int = 32,
        wait_s: float = 0.005,
        max_queue: int = 4096,
    ) -> None:
        self._handlers = handlers
        self._max_batch = max_batch
        self._wait_s = wait_s
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._held: Job | None = None  # a job pulled while filling a batch of another kind
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stopping = False
        self.recent: deque[tuple[str, int]] = deque(maxlen=256)  # (kind, rows) of the last batches run

    def start(self) -> None:
        """Start the worker thread; idempotent and safe to call from several threads."""
        with self._start_lock:
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(target=self._loop, name="domainllm-engine", daemon=True)
                self._thread.start()

    def on_worker(self) -> bool:
        """True on the worker thread itself, where waiting on a submitted job would deadlock."""
        return threading.current_thread() is self._thread

    def stop(self) -> None:
        if self._thread is not None:
            self._stopping = True
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, kind: str, payload: Any, rows: int = 1) -> Future[Any]:
        job = Job(kind, payload, rows)
        try:
            self._queue.put_nowait(job)
        except queue.Full as exc:
            raise EngineOverloadedError("the engine queue is full; retry shortly") from exc
        metrics.QUEUE_DEPTH.set(self._queue.qsize())
        return job.future

    def submit_solo(self, fn: Callable[[], Any]) -> Future[Any]:
        return self.submit(SOLO, fn)

    def _next(self, timeout: float | None) -> Job | None:
        if self._held is not None:
            job, self._held = self._held, None
            return job
        return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()

    def _collect(self) -> list[Job] | None:
        first = self._next(None)
        if first is None:
            return None
        batch, rows = [first], first.rows
        if first.kind == SOLO:
            return batch
        deadline = time.perf_counter() + self._wait_s
        while rows < self._max_batch:
            try:
                job = self._next(deadline - time.perf_counter())
            except queue.Empty:
                break
            if job is None:
                self._stopping = True
                break
            if job.kind != first.kind or rows + job.rows > self._max_batch:
                self._held = job
                break
            batch.append(job)
            rows += job.rows
        return batch

    def _loop(self) -> None:
        while not self._stopping:
            batch = self._collect()
            if batch is None:
                break
            metrics.QUEUE_DEPTH.set(self._queue.qsize())
            self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        kind = batch[0].kind
        started = time.perf_counter()
        live = [j for j in batch if j.future.set_running_or_notify_cancel()]
        for job in live:
            metrics.QUEUE_WAIT_SECONDS.labels(kind).observe(started - job.enqueued)
        if not live:
            return
        rows = sum(j.rows for j in live)
        self.recent.append((kind, rows))
        metrics.BATCH_SIZE.labels(kind).observe(rows)
        try:
            results = [live[0].payload()] if kind == SOLO else self._handlers[kind](live)
        except BaseException as exc:  # delivered to every caller; the worker keeps serving
            if not isinstance(exc, Exception):
                raise
            if not getattr(exc, "message", None):
                log.exception("engine batch of kind %s failed", kind)
            for job in live:
                job.future.set_exception(exc)
            return
        finally:
            metrics.BATCH_SECONDS.labels(kind).observe(time.perf_counter() - started)
        for job, result in zip(live, results, strict=True):
            job.future.set_result(result)
