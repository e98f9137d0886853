"""Soft and hard task time limits that hold on the threads pool too.

Celery applies a task's ``soft_time_limit`` and ``time_limit`` only in pools that run tasks in child
processes (prefork); the threads pool, this project's default (one engine per process), ignores them
without a word (celery/celery#9203). ``LimitedTask`` enforces them itself when a task runs on a
pool thread; in prefork Celery's own limits apply and this stays out of the way.

* Soft: ``SoftTimeLimitExceeded`` is raised inside the task's thread at its next Python bytecode
  (``PyThreadState_SetAsyncExc``). A blocking call (a socket read, a forward pass in C) returns
  first, which is why every outgoing call here has its own timeout as well. The task stops cleanly:
  a delivery records the failure, gives its claim up and is retried; the other tasks log it and
  leave the rest to their next run (all are idempotent).
* Hard: a thread cannot be killed, so the worker process ends, as prefork ends its child. With
  ``acks_late`` its unacknowledged messages are handed to another worker after the visibility
  timeout; the supervisor restarts the process.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

log = logging.getLogger(__name__)
HARD_LIMIT_EXIT_CODE = 70  # EX_SOFTWARE


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    """Raise ``exc`` in another thread at its next bytecode; None clears one not raised yet."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None)


def _end_process(task: str, limit_s: float) -> None:
    log.critical("task %s ran past its hard time limit (%.0fs) on a pool thread: ending the worker process; "
                 "its unacknowledged messages go to another worker after the visibility timeout", task, limit_s)  # fmt: skip
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(HARD_LIMIT_EXIT_CODE)


@dataclass
class _Armed:
    thread_id: int
    task: str
    soft_at: float
    hard_at: float
    hard_s: float
    soft_sent: bool = False


class Watchdog:
    """One thread per process that watches the deadlines of the tasks running on other threads."""

    def __init__(self, on_hard: Callable[[str, float], None] = _end_process) -> None:
        self.on_hard = on_hard
        self._armed: dict[int, _Armed] = {}
        self._cond = threading.Condition()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, task: str, soft_s: float | None, hard_s: float | None) -> int:
        """Watch the calling thread: soft and hard limits in seconds from now (None: none)."""
        now, never = time.monotonic(), float("inf")
        armed = _Armed(threading.get_ident(), task, now + soft_s if soft_s else never, now + hard_s if hard_s else never,
                       hard_s or 0.0)  # fmt: skip
        with self._cond:
            token = next(self._ids)
            self._armed[token] = armed
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="task-time-limits", daemon=True)
                self._thread.start()
            self._cond.notify()
        return token

    def disarm(self, token: int) -> None:
        with self._cond:
            armed = self._armed.pop(token, None)
            if armed is not None and armed.soft_sent:
                _raise_in(armed.thread_id, None)  # the task ended first: drop a soft limit still in flight

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                for armed in self._armed.values():
                    if not armed.soft_sent and armed.soft_at <= now:
                        armed.soft_sent = True
                        log.warning("task %s reached its soft time limit", armed.task)
                        _raise_in(armed.thread_id, SoftTimeLimitExceeded)
                late = next((a for a in self._armed.values() if a.hard_at <= now), None)
                if late is None:
                    upcoming = [a.hard_at for a in self._armed.values()]
                    upcoming += [a.soft_at for a in self._armed.values() if not a.soft_sent]
                    self._cond.wait(timeout=min(upcoming) - now if upcoming else None)
                    continue
                self._armed = {k: a for k, a in self._armed.items() if a is not late}
            self.on_hard(late.task, late.hard_s)


watchdog = Watchdog()


class LimitedTask(Task):
    """A task whose ``soft_time_limit`` and ``time_limit`` hold on the threads pool; at the soft limit
    it calls ``on_soft_time_limit`` and returns its value (by default: log and return None)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        on_pool_thread = threading.current_thread() is not threading.main_thread() and not self.request.is_eager
        token = None
        if on_pool_thread:
            hard, soft = self.request.timelimit or (None, None)
            token = watchdog.arm(self.name, soft or self.soft_time_limit, hard or self.time_limit)
        try:
            return super().__call__(*args, **kwargs)
        except SoftTimeLimitExceeded:
            return self.on_soft_time_limit(kwargs)
        finally:
            if token is not None:
                watchdog.disarm(token)

    def on_soft_time_limit(self, kwargs: dict[str, Any]) -> Any:
        log.warning("task %s stopped at its soft time limit; its next run picks up the rest", self.name)
        return None
