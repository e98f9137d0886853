"""Rate limits (apps/tenants/limits.py) held in a real Redis: a key over its rate gets 429 with
Retry-After while another tenant's key is unaffected; an address that keeps guessing keys is
stopped too; a rate that is not a rate is refused at start."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from apps.server import create_app
from apps.settings import AppSettings
from core.engine import LocalEngine

pytestmark = pytest.mark.unit

OPERATOR = "test-operator-key"


def app_with(tiny_settings: Any, tiny_engine: LocalEngine, redis_url: str, **limits: str) -> Any:
    core = tiny_settings.model_copy(update={"redis_url": redis_url})
    settings = AppSettings.of(
        core, operator_key=SecretStr(OPERATOR), tenancy_namespace=f"t{uuid.uuid4().hex[:8]}", **limits
    )
    return create_app(settings, engine=tiny_engine)


@pytest.fixture
def client(tiny_settings: Any, tiny_engine: LocalEngine, redis_url: str) -> Iterator[TestClient]:
    # per key 5 a minute; per address high enough for the setup below
    app = app_with(tiny_settings, tiny_engine, redis_url, rate_limit_per_key="5/minute", rate_limit_per_ip="")
    with TestClient(app) as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_key_over_its_rate_gets_429_and_other_tenants_are_unaffected(client: TestClient) -> None:
    first = client.post("/v1/tenants", json={"id": f"a{uuid.uuid4().hex[:6]}"}, headers=bearer(OPERATOR))
    second = client.post("/v1/tenants", json={"id": f"b{uuid.uuid4().hex[:6]}"}, headers=bearer(OPERATOR))
    key_a, key_b = first.json()["admin_key"]["key"], second.json()["admin_key"]["key"]
    codes = [client.get("/v1/keys", headers=bearer(key_a)).status_code for _ in range(7)]
    assert codes[:5] == [200] * 5 and codes[5:] == [429, 429], codes
    over = client.get("/v1/keys", headers=bearer(key_a))
    assert over.status_code == 429 and 1 <= int(over.headers["retry-after"]) <= 60
    assert over.json()["error"]["type"] == "rate_limited"
    assert client.get("/v1/keys", headers=bearer(key_b)).status_code == 200  # its own budget


def test_an_address_guessing_keys_is_stopped(tiny_settings: Any, tiny_engine: LocalEngine, redis_url: str) -> None:
    app = app_with(tiny_settings, tiny_engine, redis_url, rate_limit_per_key="", rate_limit_per_ip="3/minute")
    with TestClient(app) as c:
        codes = [c.get("/v1/models", headers=bearer(f"dlm_admin_{'A' * 12}_{i:043d}")).status_code for i in range(5)]
    assert codes.count(401) <= 3 and codes[-1] == 429, codes


def test_a_rate_that_is_not_a_rate_is_refused() -> None:
    with pytest.raises(ValidationError, match="rate_limit_per_key"):
        AppSettings(rate_limit_per_key="lots")
