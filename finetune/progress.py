"""Progress of long jobs (evaluations of 10-30 minutes), reported to whoever is listening.

Evaluations wrap their main loops in ``track(items, "what")``; by default that is the plain
iterable. The CLI listens with ``reporting(callback)`` and draws a bar per phase, so finetune code
never imports a console library and tests see no output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

T = TypeVar("T")
# (phase, done, total): called once at 0 and after each item
Reporter = Callable[[str, int, int], None]
_reporter: ContextVar[Reporter | None] = ContextVar("progress_reporter", default=None)


@contextmanager
def reporting(reporter: Reporter) -> Iterator[None]:
    token = _reporter.set(reporter)
    try:
        yield
    finally:
        _reporter.reset(token)


def track(items: Iterable[T], phase: str, total: int | None = None) -> Iterator[T]:
    """``items``, reporting ``phase`` progress after each one to the current reporter, if any."""
    report = _reporter.get()
    if report is None:
        yield from items
        return
    n = total if total is not None else (len(items) if isinstance(items, Sized) else 0)
    report(phase, 0, n)
    for done, item in enumerate(items, 1):
        yield item
        report(phase, done, n)
