"""Micro-batching: jobs that arrive within a few milliseconds run as one batch on one thread.

Every model call of the engine goes through the one worker thread here, so adapter loads and
unloads are naturally serialised with inference and no forward pass ever sees a half-loaded
adapter. Jobs of a batchable kind ("generate", "labels": a kind with a handler) are grouped up to
``max_batch`` rows across requests and adapters; other kinds (solo jobs: a callable) run alone, in
arrival order.

The queue is bounded by time, not by a count. Each job has a cost (its rows; for a generation,
its token budget) and each kind keeps a running estimate of seconds per unit of cost (an
exponentially weighted mean over its finished batches), so the work queued ahead of a new request
is an estimate in seconds: the rest of the running batch plus the queued work, less the partial
batch at the queue's tail that it would join (a batch takes consecutive jobs of one kind). Past
``max_queue_s`` the request is refused at once (``EngineOverloadedError`` with a Retry-After)
rather than queued for minutes. A request is admitted or refused whole, by the work ahead of its
first job, so a large request (256 texts in eight chunks) still runs on an idle engine.

A caller that gives up cancels its future: a queued job is dropped before it runs (its rows leave
the backlog at once), and a running one is marked ``abandoned``, which a handler polls between
steps (a generation's decode loop stops the row at its next step).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from core import metrics
from core.errors import EngineOverloadedError, ModelNotReadyError

log = logging.getLogger(__name__)

SOLO = "solo"
SMOOTHING = 0.5  # weight of the newest batch in a kind's seconds-per-unit estimate
# The piece of work the current code runs for (see ``one_admission``): whether it was admitted, and
# when it began (monotonic seconds); None outside one.
_WORK: ContextVar[dict[str, float] | None] = ContextVar("domainllm_work", default=None)


def settle(future: Future[Any], result: Any = None, *, error: BaseException | None = None) -> None:
    """Give ``future`` its result or error, unless its caller cancelled it meanwhile (a caller may give
    up at any moment, between the last check and this; the result then has nobody to go to)."""
    with suppress(InvalidStateError):
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


@contextmanager
def one_admission() -> Iterator[None]:
    """One piece of work that makes several engine requests in a row (a support answer: embed the
    question, score the sentences, read the intent). Its first request is admitted or refused by the
    queue bound like any other; once admitted, the rest are not refused halfway, so work the engine
    has started is finished rather than wasted. Its engine waits share one deadline, counted from
    its start (``work_elapsed_s``), so the whole answer is bounded, not each call. Holds for the thread
    (and the context) it runs in."""
    token = _WORK.set({"admitted": 0.0, "started": time.monotonic()})
    try:
        yield
    finally:
        _WORK.reset(token)


def work_elapsed_s() -> float:
    """Seconds since the current piece of work began (0 outside one): its waits share one deadline."""
    work = _WORK.get()
    return 0.0 if work is None else time.monotonic() - work["started"]


class JobFuture(Future[Any]):
    """A job's future that remembers its caller gave up. ``concurrent.futures`` cannot cancel a
    job that is already running; a handler that polls ``abandoned`` can stop it early."""

    def __init__(self) -> None:
        super().__init__()
        self.abandoned = False

    def cancel(self) -> bool:
        self.abandoned = True
        return super().cancel()


@dataclass
class Job:
    kind: str
    payload: Any
    rows: int = 1
    cost: float = 1.0  # units of work for the queue bound: its rows, or a generation's token budget
    future: JobFuture = field(default_factory=JobFuture)
    enqueued: float = field(default_factory=time.perf_counter)
    queued: bool = False  # counted in the backlog: from admission until it starts or is cancelled

    @property
    def abandoned(self) -> bool:
        """The caller cancelled this job (polled by handlers while it runs)."""
        return self.future.abandoned


BatchHandler = Callable[[list[Job]], list[Any]]


class MicroBatcher:
    def __init__(
        self,
        handlers: dict[str, BatchHandler],
        *,
        max_batch: int = 32,
        wait_s: float = 0.005,
        max_queue_s: float | None = None,
    ) -> None:
        self._handlers = handlers
        self._max_batch = max_batch
        self._wait_s = wait_s
        self._max_queue_s = max_queue_s  # None: unbounded
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._held: Job | None = None  # a job pulled while filling a batch of another kind
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stopping = False
        self.recent: deque[tuple[str, int]] = deque(maxlen=256)  # (kind, rows) of the last batches run
        # the backlog, guarded by _lock: admitted work not yet started, per kind; the batch running now
        self._lock = threading.Lock()
        self._unit_s: dict[str, float] = {}  # estimated seconds per unit of cost (absent: not measured yet)
        self._queued_rows: defaultdict[str, int] = defaultdict(int)
        self._queued_cost: defaultdict[str, float] = defaultdict(float)
        self._queued_jobs = 0
        self._tail: tuple[str, int] = ("", 0)  # kind and rows of the run of jobs of one kind at the queue's end
        self._running: tuple[str, float, float] | None = None  # (kind, cost, started)

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
        """Stop the worker once the jobs queued before this call have run: a server that drains its
        requests on shutdown gets their answers, never a job dropped at the back of the queue. Jobs
        queued behind the stop (no worker will take them) fail at once rather than wait out a deadline."""
        thread = self._thread
        if thread is not None:
            self._queue.put(None)  # the stop sentinel, behind the work already admitted
            thread.join(timeout=30)
            self._thread = None
            if thread.is_alive():  # still on a long batch: it runs the rest of the queue, then stops
                return
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                settle(job.future, error=ModelNotReadyError("the engine is shutting down"))

    # ---- admission -------------------------------------------------------------------------------

    def submit(self, kind: str, payload: Any, rows: int = 1, *, cost: float | None = None) -> JobFuture:
        return self.submit_all(kind, [(payload, rows, rows if cost is None else cost)])[0]

    def submit_solo(
        self, fn: Callable[[], Any], *, kind: str = SOLO, cost: float = 1.0, bounded: bool = True
    ) -> JobFuture:
        """Run ``fn()`` alone on the worker. ``kind`` names it in the metrics and keeps its own time
        estimate, per unit of ``cost`` (the texts it embeds, say); ``bounded=False`` admits it past
        the queue bound (loading the model or an adapter)."""
        if kind in self._handlers:
            raise ValueError(f"{kind!r} is a batch kind, not a solo one")
        return self.submit_all(kind, [(fn, 1, cost)], bounded=bounded)[0]

    def submit_all(self, kind: str, payloads: list[tuple[Any, int, float]], *, bounded: bool = True) -> list[JobFuture]:
        """Queue one request's jobs of ``kind`` ((payload, rows, cost) each), admitted or refused together."""
        jobs = [Job(kind, payload, rows, cost) for payload, rows, cost in payloads]
        work = _WORK.get()
        if work is not None and work["admitted"]:
            bounded = False  # the rest of a piece of work already under way
        with self._lock:
            if bounded and self._max_queue_s is not None:
                ahead = self._ahead_s(kind)
                if ahead > self._max_queue_s:
                    raise EngineOverloadedError(
                        f"the engine has about {ahead:.0f} s of work queued (the bound is {self._max_queue_s:g} s, "
                        "DOMAINLLM_ENGINE_MAX_QUEUE_S); retry shortly",
                        retry_after_s=ahead - self._max_queue_s,
                    )
            if work is not None:
                work["admitted"] = 1.0
            for job in jobs:
                job.queued = True
                self._queued_rows[kind] += job.rows
                self._queued_cost[kind] += job.cost
                self._queued_jobs += 1
            tail_kind, tail_rows = self._tail
            self._tail = (kind, (tail_rows if tail_kind == kind else 0) + sum(j.rows for j in jobs))
        for job in jobs:
            job.future.add_done_callback(partial(self._released, job))  # a cancel frees its rows at once
            self._queue.put(job)
        self._publish()
        return [job.future for job in jobs]

    def backlog_s(self, kind: str | None = None) -> float:
        """Estimated seconds before a new job of ``kind`` would start (every queued row for None)."""
        with self._lock:
            return self._ahead_s(kind)

    @property
    def queued_jobs(self) -> int:
        """Jobs admitted and not yet started (cancelled ones not counted)."""
        return self._queued_jobs

    @property
    def busy(self) -> bool:
        """A batch is running now."""
        return self._running is not None

    def estimates(self) -> dict[str, float]:
        """Seconds per unit of cost by kind, as measured so far."""
        with self._lock:
            return dict(self._unit_s)

    def forget(self, *kinds: str) -> None:
        """Drop the estimates of ``kinds`` (a warm-up run that paid one-off costs is no measure)."""
        with self._lock:
            for kind in kinds:
                self._unit_s.pop(kind, None)

    def _capacity(self, kind: str) -> int:
        return self._max_batch if kind in self._handlers else 1

    def _ahead_s(self, kind: str | None) -> float:
        """Caller holds ``_lock``. Work of a kind not measured yet counts as free: the first batch of a
        kind sets its estimate (the engine runs one of each kind while it warms up)."""
        total = 0.0
        if self._running is not None:
            running_kind, cost, started = self._running
            total += max(0.0, self._unit_s.get(running_kind, 0.0) * cost - (time.perf_counter() - started))
        for k, cost in self._queued_cost.items():
            total += cost * self._unit_s.get(k, 0.0)
        tail_kind, tail_rows = self._tail
        rows = self._queued_rows[tail_kind] if tail_kind else 0
        if tail_kind == kind and rows > 0:  # the partial batch it would join starts no later than it
            joined = min(rows, tail_rows % self._capacity(kind))
            total -= self._queued_cost[kind] * joined / rows * self._unit_s.get(kind, 0.0)
        return max(0.0, total)

    def _released(self, job: Job, _: Future[Any]) -> None:
        self._release(job)

    def _release(self, job: Job) -> None:
        """Take ``job`` off the backlog (it started, or was cancelled while queued); idempotent."""
        with self._lock:
            if not job.queued:
                return
            job.queued = False
            self._queued_rows[job.kind] -= job.rows
            self._queued_cost[job.kind] = max(0.0, self._queued_cost[job.kind] - job.cost)
            self._queued_jobs -= 1
            tail_kind, tail_rows = self._tail  # the run at the end holds at most its kind's queued rows
            self._tail = (tail_kind, min(tail_rows, self._queued_rows[tail_kind])) if self._queued_jobs else ("", 0)
        self._publish()

    def _observe(self, kind: str, cost: float, seconds: float) -> None:
        per_unit = seconds / max(cost, 1e-9)
        with self._lock:
            old = self._unit_s.get(kind)
            self._unit_s[kind] = per_unit if old is None else old + SMOOTHING * (per_unit - old)

    def _publish(self) -> None:
        metrics.QUEUE_DEPTH.set(self._queued_jobs)
        metrics.QUEUE_SECONDS.set(self.backlog_s())

    # ---- the worker ------------------------------------------------------------------------------

    def _next(self, timeout: float | None) -> Job | None:
        """The next job not cancelled while it waited (None: stop)."""
        while True:
            job: Job | None
            if self._held is not None:
                job, self._held = self._held, None
            elif timeout is None:
                job = self._queue.get()
            elif timeout > 0:
                job = self._queue.get(timeout=timeout)
            else:
                job = self._queue.get_nowait()
            if job is None or not job.future.cancelled():
                return job

    def _collect(self) -> list[Job] | None:
        first = self._next(None)
        if first is None:
            return None
        batch, rows = [first], first.rows
        if first.kind not in self._handlers:
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
            self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        kind = batch[0].kind
        started = time.perf_counter()
        live = [j for j in batch if j.future.set_running_or_notify_cancel()]
        rows, cost = sum(j.rows for j in live), sum(j.cost for j in live)
        with self._lock:
            self._running = (kind, cost, started) if live else None
        for job in batch:
            self._release(job)
        for job in live:
            metrics.QUEUE_WAIT_SECONDS.labels(kind).observe(started - job.enqueued)
        if not live:
            return
        self.recent.append((kind, rows))
        metrics.BATCH_SIZE.labels(kind).observe(rows)
        metrics.RUNNING_ROWS.set(rows)
        ok = False
        try:
            results = self._handlers[kind](live) if kind in self._handlers else [live[0].payload()]
            ok = True
        except BaseException as exc:  # delivered to every caller; the worker keeps serving
            if not isinstance(exc, Exception):
                raise
            if not getattr(exc, "message", None):
                log.exception("engine batch of kind %s failed", kind)
            for job in live:
                settle(job.future, error=exc)
            return
        finally:
            seconds = time.perf_counter() - started
            metrics.BATCH_SECONDS.labels(kind).observe(seconds)
            if ok:  # a failed batch says nothing about how long work takes
                self._observe(kind, cost, seconds)
            with self._lock:
                self._running = None
            metrics.RUNNING_ROWS.set(0)
            self._publish()
        for job, result in zip(live, results, strict=True):
            settle(job.future, result)
