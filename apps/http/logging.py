"""JSON log lines, and the request id that follows a request into the Celery tasks it causes.

    {"ts": "2026-12-07T11:10:40.123Z", "level": "INFO", "logger": "apps.support.service",
     "message": "session 3f… handed off: low confidence", "request_id": "9c1d…", "role": "api"}
    {"ts": …, "logger": "workers.tasks", "message": "enrich: 2 counted …", "request_id": "9c1d…",
     "task": "sentiment.enrich", "task_id": "5b0e…", "role": "worker"}

The request id: ``RequestIdMiddleware`` (``apps.http.middleware``) takes the client's ``X-Request-ID``
when it is a plain token, or makes one, binds it to ``REQUEST_ID`` for the request and answers it in
the response's ``X-Request-ID``. Every task the process sends while it is bound carries it in a
message header (``stamp_task``, on Celery's ``before_task_publish``: any Celery app of the process,
the dispatcher's, the support webhook queue's, training jobs'); the worker binds it again for the
task's run (``task_prerun``), so the task's log lines, and the tasks it sends in turn, carry it too.
A task that no request caused (beat's schedule) is its own request: its id is its task id.

Personal data: every line is masked (``apps.http.pii``) by the handlers' ``PiiLogFilter``, and the
formatter masks again whatever reached it unmasked (extra fields, a handler without the filter).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

from apps.http.pii import MASKED_ATTR, OWN_HANDLER_LOGGERS, PiiLogFilter, mask_pii, mask_pii_in_logs

REQUEST_ID: ContextVar[str | None] = ContextVar("domainllm_request_id", default=None)
REQUEST_ID_HEADER = "x-request-id"
TASK_REQUEST_ID = "domainllm_request_id"  # Celery message headers
TASK_SENT_AT = "domainllm_sent_at"
# a client's id is kept only when it is a plain token: it is written into every log line
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{7,127}$")
_role: dict[str, str | None] = {"process": None}  # what this process is (api, worker, beat): set once at start

# LogRecord's own attributes: anything else on a record came from ``extra=`` and is logged as a field
# (uvicorn's ``color_message`` is its message again, with terminal colours)
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
    MASKED_ATTR,
}


def new_request_id() -> str:
    return uuid.uuid4().hex


def accept_request_id(client_value: str | None) -> str:
    """The client's ``X-Request-ID`` when it is a plain token of 8-128 characters (letters, digits,
    ``.``, ``_``, ``:``, ``-``), else a new id: a caller's trace id joins our logs, and nothing else
    a client sends is written into every line."""
    if client_value and _CLIENT_ID_RE.match(client_value) and mask_pii(client_value) == client_value:
        return client_value
    return new_request_id()


def current_request_id() -> str | None:
    return REQUEST_ID.get()


def set_process_role(role: str | None) -> None:
    """Name this process's role (api, worker, beat, cli) in every JSON line it writes."""
    _role["process"] = role


@contextmanager
def bound_request_id(request_id: str) -> Iterator[str]:
    """Bind ``request_id`` for the block (log lines and the tasks sent in it carry it)."""
    token = REQUEST_ID.set(request_id)
    try:
        yield request_id
    finally:
        REQUEST_ID.reset(token)


# ---- formatting ------------------------------------------------------------------------------------


def _current_task() -> Any:
    try:
        from celery import current_task
    except ImportError:  # pragma: no cover - Celery is a dependency of the project
        return None
    task = current_task
    return task if task and getattr(task, "request", None) is not None and task.request.id else None


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``ts`` (UTC, ms), ``level``, ``logger``, ``message``,
    ``request_id`` (when bound), ``task`` and ``task_id`` inside a Celery task, ``role`` (api, worker,
    beat, cli: the formatter's, else the process's), ``exc`` (the traceback, masked) and any ``extra=``
    fields (masked)."""

    def __init__(self, role: str | None = None) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        masked = getattr(record, MASKED_ATTR, False)
        message = record.getMessage()
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": message if masked else mask_pii(message),
        }
        request_id = REQUEST_ID.get()
        if request_id:
            out["request_id"] = request_id
        task = _current_task()
        if task is not None:
            out["task"] = task.name
            out["task_id"] = task.request.id
        role = self.role or _role["process"]
        if role:
            out["role"] = role
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_") and key not in out:
                out[key] = _masked_value(value)
        exc = record.exc_text
        if record.exc_info and not exc:
            exc = self.formatException(record.exc_info)
        if exc:
            out["exc"] = mask_pii(exc)
        if record.stack_info:
            out["stack"] = mask_pii(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def _masked_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_pii(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    return mask_pii(str(value))


def configure_logging(log_format: str = "text", *, role: str | None = None, level: str | None = None) -> None:
    """Mask personal data in every log line (``mask_pii_in_logs``) and, for ``json``, format every
    handler's lines as JSON: the root's (one is added on stderr when it has none, as under uvicorn,
    whose config leaves the root bare), uvicorn's and Celery's own, and uvicorn's access log. Safe to
    call again (a worker's logging set-up runs it once per logger Celery configures)."""
    if log_format not in ("text", "json"):
        raise ValueError(f"log format must be text or json, got {log_format!r}")
    if role is not None:
        set_process_role(role)
    root = logging.getLogger()
    if log_format == "json" and not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        root.addHandler(handler)
        if level:
            root.setLevel(level.upper())
    mask_pii_in_logs()
    if log_format != "json":
        return
    names = ("", *OWN_HANDLER_LOGGERS, "uvicorn.access")
    for each in {h for name in names for h in logging.getLogger(name).handlers}:
        if not isinstance(each.formatter, JsonFormatter) and not _is_test_capture(each):
            each.setFormatter(JsonFormatter())
            if not any(isinstance(f, PiiLogFilter) for f in each.filters):
                each.addFilter(PiiLogFilter())


def _is_test_capture(handler: logging.Handler) -> bool:
    """pytest's log capture keeps its own format (the suite's caplog assertions read messages)."""
    return type(handler).__module__.startswith("_pytest")


# ---- Celery: the request id in a task's message, bound while the task runs -----------------------

_tokens: dict[str, Token[str | None]] = {}


def stamp_task(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """``before_task_publish``: the bound request id and the send time go with the message (its
    headers; Celery's protocol 2 hands them to the task's ``request``)."""
    if headers is None:
        return
    request_id = REQUEST_ID.get()
    if request_id and TASK_REQUEST_ID not in headers:
        headers[TASK_REQUEST_ID] = request_id
    headers[TASK_SENT_AT] = time.time()


def task_request_id(task: Any) -> str:
    """The request id a task runs under: the one its message carries, the one bound where it runs
    (an eager task, called in the request), or its own task id (a run no request caused)."""
    request = getattr(task, "request", None)
    carried = request.get(TASK_REQUEST_ID) if request is not None else None
    if isinstance(carried, str) and carried:
        return carried
    return REQUEST_ID.get() or str(getattr(request, "id", None) or new_request_id())


def _bind_for_task(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    """``task_prerun``: bind the task's request id on the thread that runs it."""
    if task_id:
        _tokens[task_id] = REQUEST_ID.set(task_request_id(task))


def _unbind_after_task(task_id: str | None = None, **_: Any) -> None:
    """``task_postrun``: restore what was bound before (nothing, on a pool thread)."""
    token = _tokens.pop(task_id, None) if task_id else None
    if token is not None:
        try:
            REQUEST_ID.reset(token)
        except ValueError:  # set in another context (a pool that moved the task): clear it instead
            REQUEST_ID.set(None)


def install_task_request_ids() -> None:
    """Connect the three handlers above to Celery's signals, once per process (they apply to every
    Celery app in it)."""
    from celery.signals import before_task_publish, task_postrun, task_prerun

    before_task_publish.connect(stamp_task, weak=False, dispatch_uid="domainllm.stamp_task")
    task_prerun.connect(_bind_for_task, weak=False, dispatch_uid="domainllm.bind_request_id")
    task_postrun.connect(_unbind_after_task, weak=False, dispatch_uid="domainllm.unbind_request_id")
