"""The live parts of a handoff across API replicas: two uvicorn processes on one real Redis, a real
Celery worker delivering the team's webhook to a receiver that checks signatures.

The customer follows their event stream on one replica while the agent works the inbox on the
other: the handoff reaches the other replica's inbox stream, and the agent joining, their reply and
the close reach the customer, each within 2 s; a reconnect resumes after the last event id; a
handoff nobody takes tells the customer and takes their e-mail address; every step reaches the
helpdesk webhook, signed. The replicas run the tiny random model: nothing here needs a real answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.doubles.redis import RedisProcess, free_port
from tests.doubles.sentiment import WebhookReceiver
from tests.doubles.servers import start_process, stop_process

pytestmark = pytest.mark.integration

ADMIN = "integration-admin-key"
PUBLIC = "pk_integration"
SECRET = "whsec-integration-0123456789"
TIMEOUT_S = 5  # DOMAINLLM_SUPPORT_HANDOFF_TIMEOUT_S: its minimum, to keep the no-agent test short
LIVE_S = 2.0  # what "live" means here: an event shows up on the other replica within this


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out waiting for {what}")


@dataclass
class Events:
    """A server-sent event stream read on a thread: every event with the time it arrived."""

    url: str
    headers: dict[str, str]
    got: list[tuple[float, str, str | None, dict[str, Any]]] = field(default_factory=list)
    _response: httpx.Response | None = None

    def start(self) -> Events:
        threading.Thread(target=self._read, daemon=True).start()
        wait_for(f"the stream {self.url}", lambda: self._response is not None or self.got, timeout=10)
        return self

    def _read(self) -> None:
        try:
            with httpx.stream("GET", self.url, headers=self.headers, timeout=httpx.Timeout(5, read=60)) as response:
                self._response = response
                name, data, last_id = "message", [], None
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        name = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif line.startswith("id:"):
                        last_id = line[3:].strip()
                    elif line == "" and data:
                        self.got.append((time.monotonic(), name, last_id, json.loads("\n".join(data))))
                        name, data = "message", []
        except (httpx.HTTPError, RuntimeError):
            pass  # closed by the test

    def close(self) -> None:
        if self._response is not None:
            self._response.close()

    def wait(self, name: str, timeout: float = 10.0, **match: Any) -> tuple[float, str | None, dict[str, Any]]:
        def found() -> tuple[float, str | None, dict[str, Any]] | None:
            for at, n, eid, data in list(self.got):
                if n == name and all(data.get(k) == v for k, v in match.items()):
                    return at, eid, data
            return None

        result: tuple[float, str | None, dict[str, Any]] = wait_for(f"a {name} event on {self.url}", found, timeout)
        return result

    def names(self) -> list[str]:
        return [n for _, n, _, _ in self.got]


@dataclass
class Replicas:
    a: str
    b: str
    webhook: WebhookReceiver

    def admin(self, base: str) -> httpx.Client:
        return httpx.Client(base_url=base, headers={"X-Admin-Key": ADMIN}, timeout=30)

    def widget(self, base: str) -> httpx.Client:
        return httpx.Client(base_url=base, headers={"X-Support-Key": PUBLIC}, timeout=30)

    def session(self) -> str:
        with self.widget(self.a) as http:
            r = http.post("/v1/support/sessions", json={})
        assert r.status_code == 201, r.text
        return str(r.json()["session_id"])

    def customer_events(self, base: str, sid: str, **headers: str) -> Events:
        return Events(f"{base}/v1/support/sessions/{sid}/events", {"X-Support-Key": PUBLIC, **headers}).start()

    def inbox_events(self, base: str) -> Events:
        with self.admin(base) as http:
            cursor = http.get("/v1/support/handoffs", params={"limit": 1}).json()["cursor"]
        return Events(f"{base}/v1/support/inbox/events?after={cursor}", {"X-Admin-Key": ADMIN}).start()

    def hooks(self, event_type: str, handoff_id: str) -> list[dict[str, Any]]:
        return [e for e in self.webhook.received if e["type"] == event_type and e["handoff"]["id"] == handoff_id]


@pytest.fixture(scope="module")
def replicas(
    tiny_model_dir: Path, tiny_adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    tmp = tmp_path_factory.mktemp("support-live")
    redis = RedisProcess(tmp / "redis").start()
    webhook = WebhookReceiver(SECRET).start()
    env = {
        **os.environ,
        "DOMAINLLM_ENVIRONMENT": "test",
        "DOMAINLLM_ADMIN_KEY": ADMIN,
        "DOMAINLLM_REDIS_URL": redis.url,
        "DOMAINLLM_BASE_MODEL": str(tiny_model_dir),
        "DOMAINLLM_ADAPTERS_DIR": str(tiny_adapters["alpha"].parent),
        "DOMAINLLM_DATA_DIR": str(tmp / "data"),
        "DOMAINLLM_SUPPORT_KB_DIR": str(tmp / "kb"),
        "DOMAINLLM_SUPPORT_NAMESPACE": f"it{uuid.uuid4().hex[:6]}",
        "DOMAINLLM_SUPPORT_PUBLIC_KEYS": json.dumps([PUBLIC]),
        "DOMAINLLM_SUPPORT_HANDOFF_TIMEOUT_S": str(TIMEOUT_S),
        "DOMAINLLM_SUPPORT_EVENTS_POLL_S": "0.2",
        "DOMAINLLM_SUPPORT_WEBHOOK_URL": webhook.url + "/helpdesk",
        "DOMAINLLM_SUPPORT_WEBHOOK_SECRET": SECRET,
        "DOMAINLLM_SUPPORT_WEBHOOK_BACKOFF_S": "1",
    }
    bases = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    uvicorn = [sys.executable, "-m", "uvicorn", "apps.server:create_app", "--factory", "--host", "127.0.0.1"]
    celery = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "alerts", "-c", "2"]
    logs = [tmp / "replica-a.log", tmp / "replica-b.log", tmp / "worker.log"]
    procs = [
        start_process([*uvicorn, "--port", base.rsplit(":", 1)[1]], env, log)
        for base, log in zip(bases, logs[:2], strict=True)
    ]
    procs.append(start_process([*celery, "-n", f"support-it-{uuid.uuid4().hex[:6]}@%h", "-l", "INFO"], env, logs[2]))

    def ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> bool:
        if proc.poll() is not None:
            pytest.fail(f"{base} exited:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        for base, proc, log in zip(bases, procs, logs, strict=False):
            wait_for(f"{base} ready", lambda b=base, p=proc, lg=log: ready(b, p, lg), timeout=120, every=0.3)
        wait_for("the Celery worker", lambda: " ready." in logs[2].read_text(), timeout=120, every=0.3)
        yield Replicas(bases[0], bases[1], webhook)
    finally:
        for proc in procs:
            stop_process(proc)
        webhook.stop()
        redis.stop()
    for log in logs:
        assert "Traceback" not in log.read_text(), log.read_text()[-5000:]


def test_customer_and_agent_on_different_replicas_see_each_other_live(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    sid = replicas.session()
    customer = replicas.customer_events(a, sid)  # the customer on replica A
    inbox = replicas.inbox_events(b)  # the agent on replica B
    try:
        customer.wait("state")
        with replicas.widget(a) as widget, replicas.admin(b) as agent:
            asked = time.monotonic()
            r = widget.post(f"/v1/support/sessions/{sid}/handoff", json={"reason": "wants a person"})
            assert r.status_code == 200, r.text
            hid = r.json()["handoff_id"]
            at, _, opened = inbox.wait("handoff_opened")
            assert opened["handoff"]["id"] == hid and at - asked < LIVE_S

            sent = time.monotonic()
            assert agent.post(f"/v1/support/handoffs/{hid}/take", json={"agent": "Dana"}).status_code == 200
            at, joined_id, joined = customer.wait("agent_joined")
            assert joined["agent"] == "Dana" and at - sent < LIVE_S

            sent = time.monotonic()
            r = agent.post(f"/v1/support/handoffs/{hid}/messages", json={"agent": "Dana", "text": "Hi, I'm Dana."})
            assert r.status_code == 201, r.text
            at, _, message = customer.wait("agent_message")
            assert message["message"]["text"] == "Hi, I'm Dana." and at - sent < LIVE_S

            # a reconnect after agent_joined (Last-Event-ID) replays only what came after it
            resumed = replicas.customer_events(b, sid, **{"Last-Event-ID": str(joined_id)})
            resumed.wait("agent_message")
            assert resumed.names() == ["state", "agent_message"]
            resumed.close()

            r = widget.post(f"/v1/support/sessions/{sid}/messages", json={"message": "Great, thanks"})
            assert r.status_code == 202 and r.json()["held"], r.text  # the bot stays silent
            inbox.wait("customer_message", handoff_id=hid)

            sent = time.monotonic()
            assert agent.post(f"/v1/support/handoffs/{hid}/close", json={"agent": "Dana"}).status_code == 200
            at, _, closed = customer.wait("handoff_closed")
            assert closed["csat"] is True and at - sent < LIVE_S
            with replicas.widget(b) as other:  # the rating may land on any replica
                assert other.post(f"/v1/support/sessions/{sid}/csat", json={"rating": 4}).status_code == 200
            inbox.wait("csat_recorded", handoff_id=hid)
            assert agent.get(f"/v1/support/handoffs/{hid}").json()["csat"] == 4
    finally:
        customer.close()
        inbox.close()

    for kind in ("handoff.opened", "handoff.taken", "handoff.customer_message", "handoff.closed"):
        wait_for(f"the {kind} webhook", lambda k=kind: replicas.hooks(k, hid), timeout=60)
    assert replicas.webhook.refused == 0  # every delivery carried a valid signature
    assert replicas.hooks("handoff.opened", hid)[0]["handoff"]["reason"] == "wants a person"
    assert replicas.hooks("handoff.customer_message", hid)[0]["message"]["text"] == "Great, thanks"


def test_nobody_in_time_the_customer_is_told_and_leaves_an_email(replicas: Replicas) -> None:
    sid = replicas.session()
    customer = replicas.customer_events(replicas.b, sid)
    inbox = replicas.inbox_events(replicas.a)
    try:
        with replicas.widget(replicas.a) as widget:
            hid = widget.post(f"/v1/support/sessions/{sid}/handoff", json={}).json()["handoff_id"]
            _, _, notice = customer.wait("no_agent", timeout=TIMEOUT_S + 5)
            assert notice["handoff_id"] == hid and notice["ask_email"] is True and notice["message"]
            assert customer.names().count("no_agent") == 1
            r = widget.post(f"/v1/support/sessions/{sid}/contact", json={"email": "jane.doe@example.com"})
            assert r.status_code == 200, r.text
            inbox.wait("contact_left", handoff_id=hid)
            inbox.wait("no_agent", handoff_id=hid)
    finally:
        customer.close()
        inbox.close()
    hook = wait_for("the contact webhook", lambda: replicas.hooks("handoff.contact", hid), timeout=60)
    assert hook[0]["contact"] == {"email": "jane.doe@example.com"}
