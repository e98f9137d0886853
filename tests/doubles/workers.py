"""A real Celery worker inside the test process (threads pool, on the run's Redis), for tests of what
the worker side of a signal does: the request id bound in a task, the task metrics. Each test app
gets queues of its own, so nothing another test left in the shared Redis reaches it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from celery.contrib.testing.worker import start_worker


def worker_app(broker_url: str) -> tuple[Celery, str]:
    """A Celery app on ``broker_url`` with a queue name of its own: (app, queue)."""
    queue = f"test-{uuid.uuid4().hex[:10]}"
    app = Celery(f"test-{queue}", broker=broker_url, set_as_current=False)
    app.conf.update(task_ignore_result=True, task_default_queue=queue, worker_hijack_root_logger=False)
    return app, queue


@contextmanager
def running_worker(app: Celery, queue: str) -> Iterator[None]:
    """A worker consuming ``queue`` until the block ends."""
    with start_worker(
        app,
        pool="threads",
        concurrency=2,
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=10,
        queues=[queue],
    ):
        yield


def wait_for(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)
    return result
