"""Personal data sent in every way a client can send it leaves no trace in a log or in Redis.

A real uvicorn server and a real Celery worker (subprocesses, the tiny random model, an embedded
Redis of this module's own) take each kind of personal data the masker knows through:

* a support chat message (JSON and streamed) and a knowledge-base search query;
* a recommendation user id: the GET path, a JSON event and an events file (ids that the id rule
  refuses are refused, but the refusal must not log them either);
* a news item's headline, body and URL, pushed to the API or dropped as a file in the inbox that
  the beat has the worker scan (with bad lines, whose refusals the worker logs), then enriched;
* an OpenAI-style chat completion.

Then every log stream (the API's records at INFO, uvicorn's access log, the API process's own
stdout/stderr, the worker's and the beat's logs) and every Redis key and value are searched for the raw values:
what Redis holds at the end (strings, hashes, lists, sets, zsets, streams, and Celery messages
with their base64 bodies decoded) and every command Redis received while the requests ran
(``MONITOR``), which also catches queue payloads the worker consumed and keys that expired.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
import redis

from apps.sentiment.store import NewsStore
from core.redis_client import connect
from tests.doubles.redis import RedisProcess, free_port
from tests.doubles.servers import KEYED, start_process, stop_process, wait_until_ready

pytestmark = pytest.mark.integration

STARTUP_TIMEOUT_S = 120


@dataclass(frozen=True)
class Pii:
    kind: str
    phrase: str  # how a customer writes it in free text
    user_id: str  # the same value used as a storefront's user id
    needles: tuple[str, ...]  # what must not be found anywhere (case-insensitive; encoded forms added)


PII = [
    Pii("email", "write to jane.piitest@example.com please", "jane.piitest@example.com", ("jane.piitest@example.com",)),
    Pii("phone", "call me on +44 20 7946 0321", "+442079460321", ("7946 0321", "2079460321")),
    Pii("us-phone", "my cell is (415) 555-0187", "415-555-0187", ("555-0187", "4155550187")),
    Pii("card", "card 4111111111111111 was charged", "4111111111111111", ("4111111111111111",)),
    Pii("card-dotted", "card 4012.8888.8888.1881 again", "4012.8888.8888.1881", ("4012.8888.8888.1881", "4012888888881881")),
    Pii("card-mistyped", "card 5555 4444 3333 1112 declined", "5555-4444-3333-1112", ("5555 4444 3333 1112", "5555-4444-3333-1112", "5555444433331112")),
    Pii("cvv", "the CVV 739 is on the back", "cvv:739", ("cvv 739", "cvv:739")),
    Pii("ssn", "SSN 536-22-8714 for the form", "536-22-8714", ("536-22-8714", "536228714")),
    Pii("nino", "NI number JR 54 82 19 D", "JR548219D", ("JR 54 82 19 D", "JR548219D")),
    Pii("dob", "my date of birth is 14/07/1985", "dob:1985-07-14", ("14/07/1985", "1985-07-14")),
    Pii("ipv4", "I log in from 203.0.113.77 usually", "203.0.113.77", ("203.0.113.77",)),
    Pii("ipv6", "or from 2001:db8:85a3::8a2e:370:7334", "2001:db8:85a3::8a2e:370:7334", ("2001:db8:85a3::8a2e:370:7334",)),
]  # fmt: skip


def _forms(needle: str) -> set[str]:
    """The needle as it may be written: as is, URL-encoded (a path or a query) and JSON-escaped."""
    return {needle.lower(), quote(needle).lower(), quote_plus(needle).lower(), json.dumps(needle)[1:-1].lower()}


NEEDLES = {(p.kind, form) for p in PII for n in p.needles for form in _forms(n)}


def report(hits: list[tuple[str, str, str]]) -> str:
    return "raw personal data found:\n" + "\n".join(f"  {kind} {needle!r}: {line}" for kind, needle, line in hits)


def found(text: str) -> list[tuple[str, str, str]]:
    """(kind, needle, the line around it) for each raw value in ``text``."""
    low = text.lower()
    hits = []
    for kind, needle in sorted(NEEDLES):
        at = low.find(needle)
        if at >= 0:
            start, end = low.rfind("\n", 0, at) + 1, low.find("\n", at)
            hits.append((kind, needle, text[start : end if end >= 0 else None][:400]))
    return hits


# ---- Redis: everything it holds, and everything it was told ----------------------------------------


def _decoded(value: str) -> list[str]:
    """``value`` and, for a Celery/kombu message (JSON with a base64 body), the decoded body too."""
    out = [value]
    try:
        doc = json.loads(value)
    except ValueError:
        return out
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            body = node.get("body")
            if isinstance(body, str) and node.get("properties", {}).get("body_encoding") == "base64":
                try:
                    out.append(base64.b64decode(body).decode("utf-8", "replace"))
                except (binascii.Error, ValueError):
                    out.append(body)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def dump_redis(redis_client: redis.Redis) -> str:
    """One line per key and per member or field: every key and value, whatever its type (binary
    values such as embeddings are decoded leniently)."""
    client: Any = redis_client  # redis-py's sync/async union types are noise here
    lines: list[str] = []
    for key in sorted(client.scan_iter(count=1000)):
        kind = _text(client.type(key))
        values: list[str]
        if kind == "string":
            values = [_text(client.get(key) or b"")]
        elif kind == "hash":
            values = [f"{_text(f)}={_text(v)}" for f, v in client.hgetall(key).items()]
        elif kind == "list":
            values = [_text(v) for v in client.lrange(key, 0, -1)]
        elif kind == "set":
            values = sorted(_text(v) for v in client.smembers(key))
        elif kind == "zset":
            values = [f"{_text(m)} {s}" for m, s in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            values = [
                f"{_text(i)} " + " ".join(f"{_text(f)}={_text(v)}" for f, v in fields.items())
                for i, fields in client.xrange(key)
            ]
        else:
            values = [f"<{kind}>"]
        lines.append(f"KEY {_text(key)} ({kind})")
        lines += [f"  {text}" for v in values for text in _decoded(v)]
    return "\n".join(lines)


class RedisMonitor:
    """Every command the server receives (``MONITOR``), recorded on a thread until ``stop``."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=None)  # quiet spells are fine
        self.commands: list[str] = []
        self._monitor = self.client.monitor()
        self._monitor.__enter__()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="redis-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            try:
                command = self._monitor.next_command()
            except (redis.RedisError, OSError, ValueError, AttributeError):  # the connection closed by stop()
                return
            self.commands.append(str(command.get("command", "")))

    def stop(self) -> str:
        self._stopping = True
        self.client.ping()  # one more command, so a blocked read returns
        self._thread.join(timeout=5)
        self._monitor.connection.disconnect()
        self.client.close()
        return "\n".join(" ".join(_decoded(c)) for c in self.commands)


# ---- the stack ---------------------------------------------------------------------------------------


def log_config(api_log: Path, access_log: Path) -> dict[str, Any]:
    """uvicorn's --log-config: the app's and uvicorn's records at INFO in one file, access lines in another."""
    access_format = '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s'
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "default": {"()": "logging.Formatter", "fmt": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
            "access": {"()": "uvicorn.logging.AccessFormatter", "fmt": access_format, "use_colors": False},
        },
        "handlers": {
            "api": {"class": "logging.FileHandler", "filename": str(api_log), "formatter": "default"},
            "access": {"class": "logging.FileHandler", "filename": str(access_log), "formatter": "access"},
        },
        "root": {"handlers": ["api"], "level": "INFO"},
        "loggers": {
            "uvicorn": {"handlers": ["api"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }


@dataclass
class Traces:
    logs: dict[str, str]  # name -> text
    redis_state: str
    redis_commands: str
    answers: dict[str, list[int]]  # channel -> status codes
    enriched: int


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)
    return value


def inbox_file(path: Path) -> None:
    """A file for the inbox: an item with personal data, and two bad lines whose refusals quote it."""
    lines = [
        {"title": f"Acme files leak: {PII[3].phrase}", "body": PII[7].phrase, "source": "drop"},
        {"title": "Acme leak", "url": PII[0].user_id},  # not an absolute URL: refused, quoting it
        {"title": "Acme leak", "published_at": PII[9].phrase},  # not a date: refused, quoting it
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def send_everything(http: httpx.Client) -> dict[str, list[int]]:
    """Each kind of personal data through every channel; the status codes, by channel."""
    answers: dict[str, list[int]] = {}

    def record(channel: str, r: httpx.Response) -> None:
        assert r.status_code < 500, (channel, r.status_code, r.text)
        answers.setdefault(channel, []).append(r.status_code)

    item = {"id": "pii-sku-1", "title": "Blue cotton shirt", "category": "shirts", "price": 19.0}
    r = http.post("/v1/recommend/items", json={"items": [item]})
    assert r.status_code == 200, r.text
    session = http.post("/v1/support/sessions", json={})
    assert session.status_code == 201, session.text
    messages = f"/v1/support/sessions/{session.json()['session_id']}/messages"
    rows = ["user_id,item_id,type"]
    for p in PII:
        record("chat", http.post(messages, json={"message": f"Hello, {p.phrase}. Where is my order?"}))
        record("search", http.get("/v1/support/kb/search", params={"q": f"refund {p.phrase}"}))
        record("recommend", http.get(f"/v1/recommend/{quote(p.user_id, safe='')}", params={"k": 3}))
        record(
            "event",
            http.post("/v1/recommend/events", json={"user_id": p.user_id, "item_id": item["id"], "type": "view"}),
        )
        rows.append(f"{p.user_id},{item['id']},click")
        # in a path the id rule does not guard: a 404, whose access-log line is percent-encoded
        record("path", http.post(f"/v1/support/sessions/{quote(p.user_id, safe='')}/messages", json={"message": "hi"}))
        record("openai", http.post("/v1/chat/completions", json={"model": "base", "max_tokens": 4,
                                                                  "messages": [{"role": "user", "content": p.phrase}]}))  # fmt: skip
    with http.stream("POST", messages, json={"message": " ".join(p.phrase for p in PII[:4]), "stream": True}) as r:
        record("chat-stream", r)
        r.read()
    r = http.post("/v1/recommend/events/bulk", content="\n".join(rows), headers={"Content-Type": "text/csv"})
    record("events-file", r)
    news = [
        {"title": f"Acme leak exposes a customer: {p.phrase}", "body": f"The file lists {p.phrase} and more.",
         "source": "wire", "published_at": time.time()}
        for p in PII
    ]  # fmt: skip
    news[0]["url"] = f"https://news.example.com/leak?contact={PII[0].user_id}&utm_source=wire"
    r = http.post("/v1/sentiment/news", json={"items": news})
    assert r.status_code == 200 and r.json()["accepted"] == len(PII), r.text
    record("news", r)
    return answers


@pytest.fixture(scope="module")
def traces(tiny_model_dir: Path, tiny_adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Traces:
    tmp = tmp_path_factory.mktemp("pii-everywhere")
    server = RedisProcess(tmp / "redis").start()
    ns = f"pii{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "DOMAINLLM_ENVIRONMENT": "test",
        "DOMAINLLM_ADMIN_KEY": KEYED["X-Api-Key"],
        "DOMAINLLM_REDIS_URL": server.url,
        "DOMAINLLM_DATA_DIR": str(tmp / "data"),
        "DOMAINLLM_BASE_MODEL": str(tiny_model_dir),
        "DOMAINLLM_ADAPTERS_DIR": str(tiny_adapters["alpha"].parent),
        "DOMAINLLM_LOG_LEVEL": "INFO",
        "DOMAINLLM_SUPPORT_NAMESPACE": f"{ns}-support",
        "DOMAINLLM_SUPPORT_KB_DIR": str(tmp / "kb"),
        "DOMAINLLM_RECOMMEND_NAMESPACE": f"{ns}-recommend",
        "DOMAINLLM_SENTIMENT_NAMESPACE": f"{ns}-sentiment",
        "DOMAINLLM_SENTIMENT_INBOX_DIR": str(tmp / "inbox"),
        "DOMAINLLM_SENTIMENT_POLL_INTERVAL_S": "1",
        "HF_HUB_OFFLINE": "1",
    }
    api_log, access_log = tmp / "api.log", tmp / "access.log"
    config = tmp / "logging.json"
    config.write_text(json.dumps(log_config(api_log, access_log)))
    api_out, worker_log, beat_log = tmp / "api.out", tmp / "worker.log", tmp / "beat.log"
    inbox_file(tmp / "inbox" / "leak.jsonl")
    port = free_port()
    uvicorn = [sys.executable, "-m", "uvicorn", "apps.server:create_app", "--factory", "--log-config", str(config)]
    api = start_process([*uvicorn, "--log-level", "info", "--host", "127.0.0.1", "--port", str(port)], env, api_out)
    celery = [sys.executable, "-m", "celery", "-A", "workers.celery_app"]
    monitor = RedisMonitor(server.url)  # from before the first process: it sees every command
    worker = start_process([*celery, "worker", "-Q", "ingest,enrich,alerts", "-c", "2", "-n", f"w-{ns}@%h", "-l", "INFO"],
                           env, worker_log)  # fmt: skip
    beat = start_process([*celery, "beat", "-s", str(tmp / "beat-schedule"), "-l", "INFO"], env, beat_log)
    base = f"http://127.0.0.1:{port}"
    store = NewsStore(connect(server.url, decode=True), f"{ns}-sentiment")
    try:
        wait_until_ready(base, api, api_out, STARTUP_TIMEOUT_S)
        wait_for("the worker's engine", lambda: "worker engine ready" in worker_log.read_text(), STARTUP_TIMEOUT_S)
        with httpx.Client(base_url=base, timeout=60, headers=KEYED) as http:
            answers = send_everything(http)
        wanted = len(PII) + 1  # the pushed items and the inbox file's good one
        enriched = wait_for("the news enriched", lambda: (n := store.stats()["enriched"]) >= wanted and n, 120)
    finally:
        stop_process(beat)
        stop_process(api)  # stopped before reading, so every line is written
        stop_process(worker)
        commands = monitor.stop()
    try:
        state = dump_redis(redis.Redis.from_url(server.url))
    finally:
        server.stop()
    logs = {path.name: path.read_text() for path in (api_log, access_log, api_out, worker_log, beat_log)}
    return Traces(logs, state, commands, answers, enriched)


# ---- what must (not) be there --------------------------------------------------------------------------


def test_every_channel_carried_the_values(traces: Traces) -> None:
    """The search below means something only if the values reached the stack and left traces."""
    ok = {channel: sum(s < 300 for s in codes) for channel, codes in traces.answers.items()}
    assert ok["chat"] == ok["search"] == ok["openai"] == len(PII), traces.answers
    assert ok["recommend"] >= 6 and ok["event"] >= 6, traces.answers  # ids that the id rule admits
    assert ok["chat-stream"] == ok["events-file"] == ok["news"] == 1, traces.answers
    assert set(traces.answers["path"]) == {404}, traces.answers
    assert traces.enriched >= len(PII)
    access = traces.logs["access.log"]
    assert "GET /v1/recommend/{user}" in access and "GET /v1/support/kb/search " in access
    assert "POST /v1/sentiment/news" in access
    assert "engine ready" in traces.logs["api.log"] and "enrich" in traces.logs["worker.log"]
    # the worker logged the inbox file's refusals, which quote the values, masked
    assert "leak.jsonl: skipped line 2: url must be an absolute http(s) URL, got '[EMAIL]'" in traces.logs["worker.log"]
    assert "skipped line 3: published_at 'my date of birth is [DOB]'" in traces.logs["worker.log"]
    for token in ("[EMAIL]", "[PHONE]", "[CARD]", "[CVV]", "[SSN]", "[NINO]", "[DOB]", "[IP]"):
        assert token in traces.redis_state, f"{token} is in no stored conversation or news item"
    assert ":u:pseudo-" in traces.redis_state  # users known by personal data are stored under a pseudonym
    assert "LPUSH" in traces.redis_commands.upper() or "RPUSH" in traces.redis_commands.upper()


@pytest.mark.parametrize("name", ["api.log", "access.log", "api.out", "worker.log", "beat.log"])
def test_no_raw_value_in_the_logs(traces: Traces, name: str) -> None:
    hits = found(traces.logs[name])
    assert not hits, report(hits)


def test_no_raw_value_stored_in_redis(traces: Traces) -> None:
    hits = found(traces.redis_state)
    assert not hits, report(hits)


def test_no_raw_value_ever_sent_to_redis(traces: Traces) -> None:
    hits = found(traces.redis_commands)
    assert not hits, report(hits)
