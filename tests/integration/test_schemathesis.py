"""The whole API fuzzed from its own OpenAPI schema: schemathesis against the live app (uvicorn on a
loopback port, real Redis, the tiny random model), every operation, valid and invalid input.

What it holds the app to (issue 15): no 5xx; every status code, content type and body the schema
documents; schema-valid input never refused with a 400/413/422 the schema does not state; invalid
input refused with a 4xx. Bounded: a few examples per operation, about two minutes in all.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from apps.server import create_app
from apps.settings import AppSettings
from apps.support.settings import SupportSettings
from core.config import Settings
from tests.doubles.redis import free_port

pytestmark = pytest.mark.integration

# The operator key admits every route of the default tenant, /v1/tenants included (the admin key would
# leave POST /v1/tenants to its documented 403), so every operation's own logic is reached.
OPERATOR_KEY = "schemathesis-operator-key"
KEYED = {"X-Api-Key": OPERATOR_KEY}
MAX_EXAMPLES = 12  # per operation and generation mode; ~60 operations (make bench: DOMAINLLM_FUZZ_EXAMPLES=50)
REQUEST_TIMEOUT_S = 30.0
# An event stream is read until this passes (it sends nothing until something happens): then cut short.
STREAM_TIMEOUT_S = 1.0
STARTUP_TIMEOUT_S = 60.0

# Operations whose schema-valid input may still be refused with a 400/413/422 by a rule that JSON Schema
# cannot state; every other check still runs on them. Each says why; the rest of the API gets every check.
UNSTATABLE = {
    "POST /v1/adapters": "whether a folder loads depends on the server's disk (the documented 422)",
    "POST /v1/support/kb/files": "the body is a file parsed by its type (PDF, FAQ CSV columns, JSON lines)",
    "POST /v1/recommend/events/bulk": "the body is a CSV/JSON-lines file; its rows are checked one by one",
    "POST /v1/recommend/items/bulk": "the body is a CSV/JSON-lines file; its rows are checked one by one",
    "POST /v1/support/kb/urls": "fetching depends on DOMAINLLM_SUPPORT_FETCH_ALLOW_HOSTS and the network",
    "POST /v1/support/kb/sync": "the folder must exist under DOMAINLLM_SUPPORT_SYNC_ROOTS on the server",
    "GET /v1/sentiment/trends": "topic and entity exclude each other: OpenAPI cannot relate two query parameters",
    "GET /v1/sentiment/trends.png": "topic and entity exclude each other: OpenAPI cannot relate two query parameters",
    "GET /v1/sentiment/alerts": "topic and entity exclude each other: OpenAPI cannot relate two query parameters",
    "POST /v1/completions": "a prompt of token ids is scored (echo with max_tokens 0), never continued: a rule across fields",
    "POST /v1/sentiment/feedback": "item_id or text (with model and given), not both: OpenAPI cannot relate two fields",
    "GET /v1/recommend/{user_id}": "price_min <= price_max relates two query parameters; k's bound is a setting",
    # not yet stated in the schema (issue 15 follow-up): the body is checked by the ingest code, item by item
    "POST /v1/sentiment/news": "the item rules (headline, URL, dates) live in the ingest code; the body is untyped",
    "POST /v1/recommend/events": "ts must be epoch seconds or ISO 8601 and not in the future (a clock rule)",
    "POST /v1/recommend/items": "a title of control characters only is refused as empty; not in the schema yet",
}
# Bulk files are taken row by row: bad rows come back in `errors` with a 200, by design, so a body the
# schema would refuse is not refused as a whole.
PARTIAL = {"POST /v1/recommend/events/bulk", "POST /v1/recommend/items/bulk"}

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    positive_data_acceptance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def live_server(
    tiny_model_dir: Path, tiny_adapters: dict[str, Path], redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Base URL of the app served by uvicorn in a thread of this process, on its own Redis namespaces."""
    tmp = tmp_path_factory.mktemp("schemathesis")
    run = uuid.uuid4().hex[:8]
    core = Settings(
        environment="test",
        data_dir=tmp / "data",
        base_model=str(tiny_model_dir),
        adapters_dir=tiny_adapters["alpha"].parent,
        admin_key="test-admin-key",
        redis_url=redis_url,
        batch_wait_ms=5,
    )
    app_settings = AppSettings.of(
        core,
        operator_key=SecretStr(OPERATOR_KEY),
        tenancy_namespace=f"st-tenancy-{run}",
        support=SupportSettings(namespace=f"st-support-{run}", kb_dir=tmp / "kb", fetch_timeout_s=2),
    )
    app_settings.sentiment.namespace = f"st-sentiment-{run}"
    app_settings.sentiment.inbox_dir = tmp / "inbox"
    app_settings.recommend.namespace = f"st-recommend-{run}"
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(app_settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="schemathesis-uvicorn", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert thread.is_alive(), "the server thread exited"
            assert time.monotonic() < deadline, f"the server was not ready in {STARTUP_TIMEOUT_S}s"
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.2)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


# The app's own schema, read at collection (building the app loads nothing; its lifespan does), so each
# operation is a test of its own. (A lazy ``schemathesis.pytest.from_fixture`` fails on pytest 9.)
# PDF and JSON-lines files go as raw bytes, like any other file body (schemathesis knows no such media types).
schemathesis.serializer.alias(
    ["application/pdf", "application/x-ndjson", "application/jsonl"], "application/octet-stream"
)
schema = schemathesis.openapi.from_dict(create_app(Settings(environment="test", admin_key=OPERATOR_KEY)).openapi())
# Security parameters are left to the key we send: random keys would only ever meet the 401.
schema.config.generation.update(with_security_parameters=False)


# Operations that run the model on each call (a random tiny model generates to its token limit) or draw
# a chart: the third of the run's time at 12 examples; fewer examples each, every check the same.
# (In `make bench`, DOMAINLLM_FUZZ_EXAMPLES gives every operation, these too, that many.)
MODEL_OPS = [
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "POST /v1/classify",
    "POST /v1/sentiment/classify",
    "GET /v1/sentiment/trends.png",
]
MODEL_EXAMPLES = 4
EXAMPLES = int(os.environ.get("DOMAINLLM_FUZZ_EXAMPLES", MAX_EXAMPLES))


def _call_and_validate(case: schemathesis.Case, base_url: str) -> None:
    label = f"{case.method.upper()} {case.path}"
    # a GET of an event stream never ends by itself; a POST that may stream (chat) ends with its answer
    follows = case.method.upper() == "GET" and "text/event-stream" in str(case.operation.definition.raw["responses"])
    case.call_and_validate(
        base_url=base_url,
        headers=KEYED,
        checks=[
            c
            for c in CHECKS
            if not (label in UNSTATABLE and c is positive_data_acceptance)
            and not (label in PARTIAL and c is negative_data_rejection)
        ],
        timeout=STREAM_TIMEOUT_S if follows else REQUEST_TIMEOUT_S,
    )


# Derandomised: the same cases on every run, so CI judges the commit and not the draw. A longer, random
# hunt: DOMAINLLM_FUZZ_EXAMPLES=200 DOMAINLLM_FUZZ_RANDOM=1 pytest tests/integration/test_schemathesis.py
@schema.exclude(name=MODEL_OPS).parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("DOMAINLLM_FUZZ_RANDOM"),
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_its_schema_says(case: schemathesis.Case, live_server: str) -> None:
    _call_and_validate(case, live_server)


@schema.include(name=MODEL_OPS).parametrize()
@settings(
    max_examples=min(EXAMPLES, MODEL_EXAMPLES) if "DOMAINLLM_FUZZ_EXAMPLES" not in os.environ else EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("DOMAINLLM_FUZZ_RANDOM"),
    suppress_health_check=list(HealthCheck),
)
def test_every_model_operation_answers_as_its_schema_says(case: schemathesis.Case, live_server: str) -> None:
    _call_and_validate(case, live_server)
