"""The HTTP server on the tiny random Llama (adapters "alpha" and "beta"): shapes, streaming,
classification, adapters at run time, readiness and metrics. Error mappings: test_server_errors.py."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from apps.deps import get_engine, not_ready_reason
from apps.http.streaming import DeltaBridge
from apps.server import create_app
from core.config import Settings
from core.engine import LocalEngine
from core.errors import EngineOverloadedError
from core.sampling import SamplingParams
from tests.doubles.servers import KEYED, wait_ready

pytestmark = pytest.mark.unit

ADMIN = {"Authorization": "Bearer test-admin-key"}
CHAT = {"model": "alpha", "messages": [{"role": "user", "content": "Where is my order?"}], "max_tokens": 12}


@pytest.fixture
def client(tiny_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings=tiny_settings), headers=KEYED) as c:
        wait_ready(c)
        yield c


def sse_events(text: str) -> list[str]:
    """The `data:` payloads of an event stream, in order."""
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


# ---- models ------------------------------------------------------------------------------------


def test_models_lists_base_and_adapters(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["base", "alpha", "beta"]
    assert all(m["object"] == "model" and m["owned_by"] == "domainllm" for m in body["data"])
    assert [m["kind"] for m in body["data"]] == ["base", "lora", "lora"]
    assert body["data"][1]["rank"] == 4
    assert "path" not in body["data"][1]  # server paths stay private on public routes


# ---- chat completions --------------------------------------------------------------------------


def test_chat_completion_has_openai_shape(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == "alpha"
    assert isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in {"stop", "length"}
    usage = body["usage"]
    assert usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_chat_greedy_is_deterministic_and_adapters_differ(client: TestClient) -> None:
    def answer(model: str) -> str:
        r = client.post("/v1/chat/completions", json={**CHAT, "model": model, "max_tokens": 16})
        return str(r.json()["choices"][0]["message"]["content"])

    assert answer("beta") == answer("beta")
    assert {answer("base"), answer("alpha"), answer("beta")} != {answer("base")}


def test_chat_accepts_text_parts_and_max_completion_tokens(client: TestClient) -> None:
    parts = [{"type": "text", "text": "Where is "}, {"type": "text", "text": "my order?"}]
    r = client.post(
        "/v1/chat/completions",
        json={"model": "alpha", "messages": [{"role": "user", "content": parts}], "max_completion_tokens": 3},
    )
    assert r.status_code == 200, r.text
    plain = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 3}).json()
    assert r.json()["choices"][0]["message"] == plain["choices"][0]["message"]
    assert r.json()["usage"]["completion_tokens"] <= 3


def test_chat_stream_concatenates_to_the_greedy_answer(client: TestClient) -> None:
    plain = client.post("/v1/chat/completions", json=CHAT).json()
    r = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == plain["choices"][0]["message"]["content"]
    assert len(chunks) > 3  # really incremental, not one blob


def test_chat_stream_usage_chunk_on_request(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    events = sse_events(r.text)
    usage_chunk = json.loads(events[-2])
    assert usage_chunk["choices"] == []
    assert (
        usage_chunk["usage"]["completion_tokens"]
        == client.post("/v1/chat/completions", json=CHAT).json()["usage"]["completion_tokens"]
    )


def test_stop_string_ends_the_answer(client: TestClient) -> None:
    full = client.post("/v1/completions", json={"model": "beta", "prompt": "The market", "max_tokens": 8}).json()
    text = full["choices"][0]["text"]
    assert len(text) >= 2
    cut = client.post(
        "/v1/completions", json={"model": "beta", "prompt": "The market", "max_tokens": 8, "stop": text[1:2]}
    ).json()
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert text.startswith(cut["choices"][0]["text"])
    assert text[1:2] not in cut["choices"][0]["text"]


def test_sampling_with_seed_is_reproducible(client: TestClient) -> None:
    body = {**CHAT, "model": "base", "temperature": 1.5, "seed": 7, "max_tokens": 10}
    first = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    assert client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"] == first


@pytest.mark.parametrize(
    "sampling", [{"temperature": 1e-40}, {"temperature": 5.0, "top_p": 1e-300}], ids=["tiny-temperature", "tiny-top-p"]
)
def test_vanishing_temperature_or_top_p_decodes_greedily(client: TestClient, sampling: dict[str, float]) -> None:
    """Sampling with them would divide by ~0 or keep no token in float32, failing the whole batch."""
    greedy = client.post("/v1/chat/completions", json=CHAT).json()["choices"][0]["message"]
    r = client.post("/v1/chat/completions", json={**CHAT, **sampling})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"] == greedy


def test_beam_search_extension(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={**CHAT, "num_beams": 2, "max_tokens": 6})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 6


# ---- text completions --------------------------------------------------------------------------


def test_completion_shape_and_stream(client: TestClient) -> None:
    req = {"model": "beta", "prompt": ["The market fell"], "max_tokens": 8}
    r = client.post("/v1/completions", json=req)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion" and body["model"] == "beta"
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] in {"stop", "length"}
    events = sse_events(client.post("/v1/completions", json={**req, "stream": True}).text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == choice["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]


class _FailingStreamEngine:
    """Streams one delta, then fails the way a batch can fail after the 200 has gone out."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def has_model(self, name: str) -> bool:
        return True

    def submit_generate(self, prompt: Any, *, on_delta: Any = None, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()

        def run() -> None:
            on_delta("partial")
            future.set_exception(self.error)

        threading.Thread(target=run).start()
        return future


@pytest.mark.parametrize(
    ("error", "error_type"),
    [(EngineOverloadedError("the engine queue is full"), "overloaded"), (RuntimeError("boom"), "internal_error")],
    ids=["domain-error", "unexpected"],
)
def test_failure_inside_a_started_stream_is_reported_in_band(
    tiny_settings: Settings, error: Exception, error_type: str
) -> None:
    app = create_app(settings=tiny_settings)
    app.dependency_overrides[get_engine] = lambda: _FailingStreamEngine(error)
    with TestClient(app, headers=KEYED) as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 200
    events = sse_events(r.text)
    assert json.loads(events[1])["choices"][0]["delta"] == {"content": "partial"}
    assert json.loads(events[-2])["error"]["type"] == error_type
    assert "boom" not in events[-2]
    assert events[-1] == "[DONE]"


def test_concurrent_requests_share_engine_batches(tiny_settings: Settings) -> None:
    settings = tiny_settings.model_copy(update={"batch_wait_ms": 200.0})  # a wide window: no timing luck needed
    with TestClient(create_app(settings=settings), headers=KEYED) as c:
        wait_ready(c)
        bodies = [{**CHAT, "model": m, "max_tokens": 6} for m in ("base", "alpha", "beta", "alpha")]
        solo = [c.post("/v1/chat/completions", json=b).json()["choices"][0]["message"] for b in bodies]
        metrics_before = c.get("/metrics").text
        with ThreadPoolExecutor(len(bodies)) as pool:
            together = list(pool.map(lambda b: c.post("/v1/chat/completions", json=b).json(), bodies))
        metrics_after = c.get("/metrics").text
    assert [t["choices"][0]["message"] for t in together] == solo  # mixed-adapter batch == one by one
    batches = _sample(metrics_after, "domainllm_batch_size_count", kind="generate") - _sample(
        metrics_before, "domainllm_batch_size_count", kind="generate"
    )
    assert batches < len(bodies)  # the async handlers let requests meet in one engine batch


# ---- classification ----------------------------------------------------------------------------


def test_classify_returns_a_distribution_per_text(client: TestClient) -> None:
    labels = ["negative", "neutral", "positive"]
    texts = ["The market fell sharply.", "Shares of the bank rose on merger news."]
    r = client.post("/v1/classify", json={"model": "beta", "texts": texts, "labels": labels})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "beta"
    assert len(body["results"]) == 2
    for result in body["results"]:
        assert list(result["scores"]) == labels
        assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-4)
        assert result["label"] == max(result["scores"], key=result["scores"].get)


def test_classify_instruction_changes_the_prompt(client: TestClient) -> None:
    req = {"model": "base", "texts": ["The market fell."], "labels": ["Yes", "No"]}
    plain = client.post("/v1/classify", json=req).json()["results"][0]["scores"]
    steered = client.post("/v1/classify", json={**req, "instruction": "Is this about money?"}).json()
    assert steered["results"][0]["scores"] != plain


# ---- adapters at run time ----------------------------------------------------------------------


def test_adapters_list_is_public(client: TestClient) -> None:
    body = client.get("/v1/adapters").json()
    assert [a["id"] for a in body["data"]] == ["alpha", "beta"]
    assert body["failed"] == {}
    assert all(a["path"] is None for a in body["data"])


def test_load_then_unload_an_adapter(client: TestClient, tiny_adapters: dict[str, Path]) -> None:
    before = client.post("/v1/chat/completions", json={**CHAT, "model": "beta"}).json()["choices"][0]
    r = client.post("/v1/adapters", json={"name": "gamma", "path": str(tiny_adapters["beta"])}, headers=ADMIN)
    assert r.status_code == 201, r.text
    assert r.json()["id"] == "gamma" and r.json()["rank"] == 8 and r.json()["path"] == str(tiny_adapters["beta"])
    assert "gamma" in [m["id"] for m in client.get("/v1/models").json()["data"]]
    gamma = client.post("/v1/chat/completions", json={**CHAT, "model": "gamma"}).json()["choices"][0]
    assert gamma["message"] == before["message"]  # same weights, same greedy answer

    r = client.delete("/v1/adapters/gamma", headers={"X-Admin-Key": "test-admin-key"})
    assert r.status_code == 200 and r.json() == {"id": "gamma", "object": "adapter", "deleted": True}
    assert client.post("/v1/chat/completions", json={**CHAT, "model": "gamma"}).status_code == 404
    assert client.post("/v1/chat/completions", json={**CHAT, "model": "beta"}).json()["choices"][0] == before


def test_relative_adapter_path_is_under_the_adapters_dir(client: TestClient) -> None:
    r = client.post("/v1/adapters", json={"name": "alpha2", "path": "alpha"}, headers=ADMIN)
    assert r.status_code == 201, r.text
    assert r.json()["rank"] == 4


def test_unloading_every_adapter_keeps_base_serving(client: TestClient) -> None:
    base = client.post("/v1/chat/completions", json={**CHAT, "model": "base"}).json()["choices"][0]
    for name in ("alpha", "beta"):
        assert client.delete(f"/v1/adapters/{name}", headers=ADMIN).status_code == 200
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["base"]
    assert client.post("/v1/chat/completions", json={**CHAT, "model": "base"}).json()["choices"][0] == base


# ---- readiness and health ----------------------------------------------------------------------


class GatedEngine(LocalEngine):
    """An engine whose warm-up waits for the test to open the gate."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.gate = threading.Event()

    def warm_up(self) -> None:
        assert self.gate.wait(30)
        super().warm_up()


def test_ready_only_after_the_engine_loaded(tiny_settings: Settings) -> None:
    engine = GatedEngine(tiny_settings)
    try:
        with TestClient(create_app(settings=tiny_settings, engine=engine), headers=KEYED) as c:
            assert c.get("/healthz").json() == {"status": "ok"}
            r = c.get("/readyz")
            assert r.status_code == 503
            assert r.headers["retry-after"] == "5"
            assert r.json()["error"]["type"] == "model_not_ready"
            assert "loading" in r.json()["error"]["message"]
            assert c.post("/v1/chat/completions", json=CHAT).status_code == 503
            engine.gate.set()
            wait_ready(c)
            ready = c.get("/readyz").json()
            assert ready["status"] == "ready" and ready["models"] == ["base", "alpha", "beta"]
            assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert engine.ready  # the caller's engine is left open for the caller
        assert engine.generate([{"role": "user", "content": "hi"}]).completion_tokens > 0
    finally:
        engine.gate.set()
        engine.close()


def test_failed_warm_up_is_reported_by_readyz(tiny_settings: Settings, tmp_path: Path) -> None:
    settings = tiny_settings.model_copy(update={"base_model": str(tmp_path / "no-such-model")})
    with TestClient(create_app(settings=settings), headers=KEYED) as c:
        deadline = time.monotonic() + 10
        while "failed" not in (msg := c.get("/readyz").json()["error"]["message"]):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert str(tmp_path) not in msg and "server log" in msg  # no server paths to clients: the log has them
        assert c.get("/healthz").status_code == 200  # alive, just not ready
        assert c.get("/v1/models").status_code == 503


def test_the_app_can_be_started_again_after_shutdown(tiny_settings: Settings) -> None:
    app = create_app(settings=tiny_settings)
    answers = []
    for _ in range(2):  # each lifespan builds, loads and closes its own engine
        with TestClient(app, headers=KEYED) as c:
            wait_ready(c)
            answers.append(c.post("/v1/chat/completions", json=CHAT).json()["choices"][0]["message"])
    assert answers[0] == answers[1]


# ---- metrics -----------------------------------------------------------------------------------


def _sample(metrics_text: str, name: str, **labels: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_by_route_template_and_adapter(client: TestClient) -> None:
    hist = "domainllm_http_request_duration_seconds_count"
    before = client.get("/metrics").text
    client.post("/v1/chat/completions", json=CHAT)
    client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    client.delete("/v1/adapters/nope", headers=ADMIN)
    client.get("/no/such/path/123")
    r = client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    after = r.text

    def grew(name: str, **labels: str) -> float:
        return _sample(after, name, **labels) - _sample(before, name, **labels)

    assert grew(hist, route="/v1/chat/completions", adapter="alpha", method="POST") == 1
    assert grew(hist, route="/v1/chat/completions", adapter="none", method="POST") == 1  # unknown name: no label
    assert grew(hist, route="/v1/adapters/{name}", method="DELETE") == 1  # the template, not the raw path
    assert grew(hist, route="unmatched", method="GET") == 1
    assert grew("domainllm_http_requests_total", route="/v1/chat/completions", status="404") == 1
    assert 'nope"' not in after and "/no/such/path" not in after
    assert _sample(after, "domainllm_batch_size_count", kind="generate") >= 1
    assert "domainllm_tokens_generated_total" in after


# ---- a client that leaves mid-stream -----------------------------------------------------------


async def _stream_then_disconnect(
    app: FastAPI, engine: LocalEngine, body: dict[str, Any]
) -> tuple[list[bytes], Future[Any]]:
    """Drive the ASGI app directly: read a few events, then hang up like a closed browser tab.

    Another client's request is submitted alongside, so it shares the engine batch with the
    abandoned stream and runs on after this event loop is gone.
    """
    sent: list[bytes] = []
    generating = asyncio.Event()  # set once tokens flow: the engine is running this row
    request_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await generating.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            sent.append(message["body"])
            if len(sent) >= 3:  # the role chunk and two content deltas
                generating.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"test"), (b"x-api-key", b"test-admin-key")],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }
    async with app.router.lifespan_context(app):
        while not_ready_reason(app) is not None:  # the lifespan loads the engine in the background
            await asyncio.sleep(0.01)
        other = engine.submit_generate(
            [{"role": "user", "content": "hello"}], model="beta", params=SamplingParams(max_new_tokens=150)
        )
        await asyncio.wait_for(app(scope, receive, send), timeout=30)
    return sent, other


def test_client_disconnect_mid_stream_does_not_hurt_the_server(
    tiny_engine: LocalEngine, tiny_settings: Settings
) -> None:
    app = create_app(settings=tiny_settings, engine=tiny_engine)
    body = {**CHAT, "max_tokens": 200, "stream": True}
    sent, other = asyncio.run(_stream_then_disconnect(app, tiny_engine, body))
    assert sent and b"chat.completion.chunk" in sent[0]
    assert b"[DONE]" not in b"".join(sent)  # the stream really was cut short
    # The engine went on producing deltas for the gone client after its event loop closed; had
    # the callback raised on the engine thread, the whole batch (this other request too) would fail.
    assert other.result(timeout=60).completion_tokens > 0
    with TestClient(app, headers=KEYED) as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "stream": True}).text.rstrip().endswith("[DONE]")


def test_delta_bridge_ignores_deltas_after_its_loop_closed() -> None:
    async def make() -> DeltaBridge:
        return DeltaBridge()

    loop = asyncio.new_event_loop()
    bridge = loop.run_until_complete(make())
    loop.close()
    bridge.push("a delta for nobody")  # on the engine thread this must never raise


def test_openapi_documents_routes_errors_and_admin_security(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    assert chat["tags"] == ["generation"] and chat["description"]
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    assert chat["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert (
        "greedy" in schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]["temperature"]["description"]
    )
    load = schema["paths"]["/v1/adapters"]["post"]
    assert {next(iter(s)) for s in load["security"]} == {"Bearer", "ApiKey", "AdminKey"}
    listing = schema["paths"]["/v1/adapters"]["get"]  # reading takes a server key (any scope of the tenant's backend)
    assert {next(iter(s)) for s in listing["security"]} == {"Bearer", "ApiKey", "AdminKey"}
