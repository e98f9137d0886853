"""A tenant's own delivery targets (apps/tenants/delivery.py): its admin sets the webhook its alerts
and its handoff events go to; the API never shows the URL or the secret back; private addresses are
refused unless the operator allows them; and a tenant's alert reaches its own receiver, signed with
its own secret, never the operator's.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from apps.http.egress import destination_problem
from apps.http.signing import verify_signature
from apps.sentiment.alerts import Alert
from apps.sentiment.delivery import DeliveryError, deliver
from apps.server import create_app
from apps.settings import AppSettings
from core.engine import LocalEngine
from tests.doubles.servers import bearer

pytestmark = pytest.mark.integration

OPERATOR = "delivery-operator-key"
SECRET = "acme-alert-secret-0123456789"


class Receiver:
    """A loopback HTTP server that keeps what it is sent."""

    def __init__(self) -> None:
        self.bodies: list[tuple[dict[str, str], bytes]] = []
        received = self.bodies

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    tenant, operator = Receiver(), Receiver()
    yield tenant, operator
    tenant.close()
    operator.close()


def _client(tiny_settings: Any, engine: LocalEngine, redis_url: str, **extra: Any) -> TestClient:
    run = uuid.uuid4().hex[:8]
    core = tiny_settings.model_copy(update={"redis_url": redis_url})
    settings = AppSettings.of(core, operator_key=SecretStr(OPERATOR), tenancy_namespace=f"dl-tenancy-{run}", **extra)
    settings.sentiment.namespace = f"dl-sentiment-{run}"
    settings.recommend.namespace = f"dl-recommend-{run}"
    settings.support.namespace = f"dl-support-{run}"
    return TestClient(create_app(settings, engine=engine))


def _tenant(c: TestClient, name: str = "acme") -> str:
    r = c.post("/v1/tenants", json={"id": name}, headers=bearer(OPERATOR))
    assert r.status_code == 201, r.text
    return str(r.json()["admin_key"]["key"])


def test_the_server_sends_only_to_public_addresses() -> None:
    assert destination_problem("http://127.0.0.1:8080/hook") == "127.0.0.1 is a loopback address"
    assert "private" in (destination_problem("https://10.0.0.7/hook") or "")
    assert "link-local" in (destination_problem("http://169.254.169.254/latest/meta-data") or "")
    assert "only http and https" in (destination_problem("file:///etc/passwd") or "")
    assert "user name or password" in (destination_problem("https://u:p@8.8.8.8/") or "")
    assert destination_problem("https://8.8.8.8/hook") is None


def test_a_tenants_webhook_is_write_only_and_private_addresses_are_refused(
    tiny_settings: Any, tiny_engine: LocalEngine, redis_url: str
) -> None:
    with _client(tiny_settings, tiny_engine, redis_url) as c:
        admin = bearer(_tenant(c))
        r = c.put("/v1/tenant/delivery/alerts", json={"url": "https://127.0.0.1/x", "secret": SECRET}, headers=admin)
        assert r.status_code == 400 and "loopback" in r.json()["error"]["message"], r.text
        r = c.put("/v1/tenant/delivery/alerts", json={"url": "http://8.8.8.8/x", "secret": SECRET}, headers=admin)
        assert r.status_code == 400 and "https" in r.json()["error"]["message"], r.text
        r = c.put("/v1/tenant/delivery/alerts", json={"url": "https://8.8.8.8/x", "secret": "short"}, headers=admin)
        assert r.status_code == 422, r.text
        # the default tenant's webhooks are the operator's settings
        r = c.put(
            "/v1/tenant/delivery/alerts",
            json={"url": "https://8.8.8.8/x", "secret": SECRET},
            headers=bearer("test-admin-key"),
        )
        assert r.status_code == 409, r.text
        assert c.delete("/v1/tenant/delivery/handoffs", headers=admin).status_code == 404


def test_a_tenants_alert_goes_to_its_own_webhook_signed_with_its_own_secret(
    tiny_settings: Any, tiny_engine: LocalEngine, redis_url: str, receivers: tuple[Receiver, Receiver]
) -> None:
    mine, operators = receivers
    with _client(tiny_settings, tiny_engine, redis_url, tenant_webhooks_allow_private=True) as c:
        services: Any = c.app.state.services  # type: ignore[attr-defined]
        services.settings.sentiment.webhook_url = f"{operators.url}/operator"  # the default tenant's (settings)
        admin = bearer(_tenant(c))
        path = "/hooks/T000/B000/s3cr3t-path"
        r = c.put("/v1/tenant/delivery/alerts", json={"url": f"{mine.url}{path}", "secret": SECRET}, headers=admin)
        assert r.status_code == 200, r.text
        shown = c.get("/v1/tenant/delivery", headers=admin)
        assert shown.status_code == 200 and shown.json()["alerts"]["host"] == mine.url
        assert path not in shown.text and SECRET not in shown.text and shown.json()["handoffs"] is None

        ctx = services.apps_of("acme").sentiment
        settings = ctx.delivery_settings()
        assert settings.targets() == ["log", "webhook"]
        alert = Alert("acme-alert", "negative_surge", "surge", "all", "critical", time.time(), "acme surge", {"n": 3})
        ctx.alerts.fire(alert, cooldown_s=0)
        assert deliver(ctx.alerts, alert.id, "webhook", settings) == "sent"  # what the worker's task calls
        assert len(mine.bodies) == 1 and operators.bodies == []
        headers, body = mine.bodies[0]
        assert json.loads(body)["alert"]["id"] == "acme-alert"
        assert verify_signature(SECRET, headers["X-Domainllm-Timestamp"], body, headers["X-Domainllm-Signature"])

        # handoff events: the worker's lookup finds the tenant's own target, and none once cleared
        assert services.support_webhook_target("acme") is None
        c.put("/v1/tenant/delivery/handoffs", json={"url": f"{mine.url}/helpdesk", "secret": SECRET}, headers=admin)
        target = services.support_webhook_target("acme")
        assert target is not None and target.url == f"{mine.url}/helpdesk" and target.secret == SECRET
        assert services.apps_of("acme").support.inbox._has_target()
        assert c.delete("/v1/tenant/delivery/handoffs", headers=admin).status_code == 200
        assert services.support_webhook_target("acme") is None
        assert not services.apps_of("acme").support.inbox._has_target()


def test_a_webhook_that_now_resolves_to_a_private_address_is_not_sent_to(
    tiny_settings: Any, tiny_engine: LocalEngine, redis_url: str, receivers: tuple[Receiver, Receiver]
) -> None:
    """Checked again at each send: here the URL was stored as public and is loopback when sent."""
    mine, _ = receivers
    with _client(tiny_settings, tiny_engine, redis_url) as c:
        services: Any = c.app.state.services  # type: ignore[attr-defined]
        _tenant(c)
        services.delivery.r.hset(  # as if the host had resolved to a public address when it was set
            f"{services.delivery.ns}:delivery:acme", mapping={"alerts.url": f"{mine.url}/x", "alerts.secret": SECRET}
        )
        ctx = services.apps_of("acme").sentiment
        alert = Alert("acme-2", "negative_surge", "surge", "all", "critical", time.time(), "acme surge", {"n": 3})
        ctx.alerts.fire(alert, cooldown_s=0)
        with pytest.raises(DeliveryError, match="loopback"):
            deliver(ctx.alerts, alert.id, "webhook", ctx.delivery_settings())
        assert mine.bodies == []
