"""JSON log lines with personal data masked, and a request id that follows a request from the API
into the Celery tasks it causes (and the tasks those send), on a real worker and the run's Redis."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from apps.http.logging import (
    REQUEST_ID_HEADER,
    JsonFormatter,
    accept_request_id,
    bound_request_id,
    configure_logging,
    current_request_id,
    set_process_role,
)
from apps.http.middleware import RequestIdMiddleware
from apps.http.pii import PiiLogFilter
from apps.sentiment.dispatch import CeleryDispatcher, client_app
from apps.server import create_app
from core.config import Settings
from core.engine import LocalEngine
from tests.doubles.workers import running_worker, wait_for, worker_app

pytestmark = pytest.mark.unit

EMAIL, CARD = "jane.doe@example.com", "4111 1111 1111 1111"


class Lines(logging.Handler):
    """Collects formatted lines (JSON, with the PII filter as production handlers have it)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.setFormatter(JsonFormatter())
        self.addFilter(PiiLogFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines)]


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("domainllm.test")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)


# ---- the line ------------------------------------------------------------------------------------


def test_a_line_is_one_json_object_with_pii_masked(lines: Lines) -> None:
    log = logging.getLogger("domainllm.test")
    with bound_request_id("req-0123456789"):
        log.info("refund for %s, card %s", EMAIL, CARD, extra={"customer": EMAIL, "items": 3})
    try:
        raise ValueError(f"bad card {CARD} of {EMAIL}")
    except ValueError:
        log.exception("failed for %s", EMAIL)
    first, second = lines.records()
    assert first["message"] == "refund for [EMAIL], card [CARD]"
    assert first["level"] == "INFO" and first["logger"] == "domainllm.test"
    assert first["request_id"] == "req-0123456789"
    assert first["customer"] == "[EMAIL]" and first["items"] == 3  # extra fields, masked
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert "request_id" not in second  # unbound outside the block
    assert "ValueError: bad card [CARD] of [EMAIL]" in second["exc"]
    for line in lines.lines:
        assert "\n" not in line and EMAIL not in line and "4111" not in line


def test_the_formatter_masks_even_without_the_filter() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "mail %s", (EMAIL,), None)
    assert json.loads(JsonFormatter().format(record))["message"] == "mail [EMAIL]"


def test_the_process_role_names_every_line() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    try:
        set_process_role("worker")
        assert json.loads(JsonFormatter().format(record))["role"] == "worker"
        assert json.loads(JsonFormatter(role="api").format(record))["role"] == "api"
    finally:
        set_process_role(None)


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("4bf92f3577b34da6a3ce929d0e0e4736", True),  # a W3C trace id
        ("req-2026:edge.7_x", True),
        ("short", False),  # under 8 characters
        ("x" * 129, False),
        ("has space in it", False),
        ("line\nbreak-injected", False),
        (EMAIL, False),  # personal data is never an id
        ("550e8400-e29b-41d4-a716-446655440000", True),  # a UUID
        ("4111111111111111", False),  # a card number sent as an id
        ("07700900123", False),  # a phone number
        ("", False),
        (None, False),
    ],
)
def test_a_clients_request_id_is_kept_only_when_it_is_a_plain_token(sent: str | None, kept: bool) -> None:
    got = accept_request_id(sent)
    assert (got == sent) is kept
    if not kept:
        assert len(got) == 32 and int(got, 16) >= 0


def test_configure_logging_json_formats_the_root_handlers() -> None:
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root.addHandler(handler)
    try:
        configure_logging("json")
        logging.getLogger("domainllm.test.root").warning("written to %s", EMAIL)
        assert json.loads(stream.getvalue().strip().splitlines()[-1])["message"] == "written to [EMAIL]"
        with pytest.raises(ValueError, match="text or json"):
            configure_logging("xml")
    finally:
        root.removeHandler(handler)


# ---- through the API -------------------------------------------------------------------------------


@pytest.fixture
def api(tiny_settings: Settings, tiny_engine: LocalEngine) -> Iterator[TestClient]:
    """The real app, its Redis never reached by these routes, behind the request-id middleware (the
    server adds it outermost too; an id bound outside is kept, so wrapping twice changes nothing)."""
    app = create_app(tiny_settings.model_copy(update={"redis_url": "redis://127.0.0.1:9/0"}), engine=tiny_engine)

    @app.get("/test-log")
    async def _log() -> dict[str, str | None]:
        logging.getLogger("domainllm.test").info("inside the route for %s", EMAIL)
        return {"bound": current_request_id()}

    with TestClient(RequestIdMiddleware(app)) as client:
        yield client


def test_the_api_answers_the_request_id_and_logs_under_it(api: TestClient, lines: Lines) -> None:
    r = api.get("/test-log", headers={"X-Request-ID": "trace-0001-abcdef"})
    assert r.headers[REQUEST_ID_HEADER] == "trace-0001-abcdef" == r.json()["bound"]
    r = api.get("/test-log", headers={"X-Request-ID": "bad id"})
    made = r.headers[REQUEST_ID_HEADER]
    assert made != "bad id" and made == r.json()["bound"]
    assert [rec["request_id"] for rec in lines.records()] == ["trace-0001-abcdef", made]
    assert all(rec["message"] == "inside the route for [EMAIL]" for rec in lines.records())
    # every answer carries one, an error too
    assert len(api.get("/no-such-route").headers[REQUEST_ID_HEADER]) == 32
    assert (
        api.get("/healthz", headers={"X-Request-ID": "probe-12345678"}).headers[REQUEST_ID_HEADER] == "probe-12345678"
    )


# ---- into the tasks ----------------------------------------------------------------------------------


def test_the_request_id_follows_a_request_into_its_tasks_and_theirs(redis_url: str, lines: Lines) -> None:
    app, queue = worker_app(redis_url)
    seen: list[dict[str, Any]] = []

    @app.task(name=f"{queue}.parent", shared=False)
    def parent(n: int) -> None:
        logging.getLogger("domainllm.test").info("parent %d for %s", n, EMAIL)
        seen.append({"task": "parent", "bound": current_request_id()})
        child.apply_async(kwargs={"n": n}, queue=queue)

    @app.task(name=f"{queue}.child", shared=False)
    def child(n: int) -> None:
        logging.getLogger("domainllm.test").info("child %d", n)
        seen.append({"task": "child", "bound": current_request_id()})

    sender = CeleryDispatcher(client_app(redis_url))
    with running_worker(app, queue):
        with bound_request_id("req-from-the-api-1"):  # what RequestIdMiddleware binds for a request
            sender.app.send_task(f"{queue}.parent", kwargs={"n": 1}, queue=queue)
        sender.app.send_task(f"{queue}.parent", kwargs={"n": 2}, queue=queue)  # beat's: no request
        wait_for(lambda: len(seen) == 4)
    assert current_request_id() is None  # nothing leaks into the sender's context
    by_n: dict[int, set[str]] = {}
    for rec in lines.records():
        n = int(rec["message"].split()[1])
        by_n.setdefault(n, set()).add(rec["request_id"])
        assert rec["task"].startswith(queue) and rec["task_id"]
    assert by_n[1] == {"req-from-the-api-1"}  # the parent's line and its child's
    assert len(by_n[2]) == 1 and by_n[2] != {"req-from-the-api-1"}  # the beat run's own id, passed on
    assert all(rec["message"] != f"parent 1 for {EMAIL}" for rec in lines.records())
    assert sorted(s["task"] for s in seen if s["bound"] == "req-from-the-api-1") == ["child", "parent"]
