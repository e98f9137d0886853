"""Every error mapping of apps/errors.py, and the bad requests that must get a clear 4xx, never a 500.

Every error body must be ``{"error": {"type": ..., "message": ...}}`` whatever produced it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from apps.deps import get_engine
from apps.errors import STATUS_BY_ERROR, status_for
from apps.server import create_app
from core.config import Settings
from core.errors import (
    AdapterLoadError,
    AdapterNotFoundError,
    AuthenticationError,
    ConflictError,
    DomainLLMError,
    EngineOverloadedError,
    InputTooLargeError,
    InvalidRequestError,
    ModelNotReadyError,
    NotFoundError,
)
from tests.doubles.servers import KEYED, wait_ready

pytestmark = pytest.mark.unit

ADMIN = {"X-Admin-Key": "test-admin-key"}
MESSAGES = [{"role": "user", "content": "Where is my order?"}]
CHAT = {"model": "alpha", "messages": MESSAGES, "max_tokens": 4}
CLASSIFY = {"model": "beta", "texts": ["The market fell."], "labels": ["negative", "positive"]}


@pytest.fixture
def app(tiny_settings: Settings) -> FastAPI:
    return create_app(settings=tiny_settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, headers=KEYED) as c:
        wait_ready(c)
        yield c


def error_of(r: httpx.Response, status: int) -> dict[str, str]:
    """Assert the status and the one error shape; return the error object."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["message"].strip()
    return dict(body["error"])


# ---- the core error tree -> status, one by one -------------------------------------------------


class _UnmappedError(DomainLLMError):
    error_type = "something_else"


CORE_ERRORS: list[tuple[DomainLLMError, int, str]] = [
    (InvalidRequestError("bad value"), 400, "invalid_request"),
    (InputTooLargeError("too big", limit=1, actual=2), 413, "input_too_large"),
    (AuthenticationError("no key"), 401, "authentication_error"),
    (NotFoundError("no such thing"), 404, "not_found"),
    (AdapterNotFoundError("x", ["base"]), 404, "adapter_not_found"),
    (ConflictError("taken"), 409, "conflict"),
    (AdapterLoadError("x", "/p", "broken"), 422, "adapter_load_error"),
    (ModelNotReadyError("loading"), 503, "model_not_ready"),
    (EngineOverloadedError("queue full"), 503, "overloaded"),
    (_UnmappedError("some other failure"), 400, "something_else"),
]


@pytest.mark.parametrize(("exc", "status", "error_type"), CORE_ERRORS, ids=lambda v: type(v).__name__)
def test_each_core_error_maps_to_its_status(app: FastAPI, exc: DomainLLMError, status: int, error_type: str) -> None:
    class RaisingEngine:
        def has_model(self, name: str) -> bool:
            raise exc

    app.dependency_overrides[get_engine] = RaisingEngine
    with TestClient(app, headers=KEYED) as c:
        r = c.post("/v1/chat/completions", json=CHAT)
    err = error_of(r, status)
    assert err == {"type": error_type, "message": exc.message}
    if status == 503:
        assert int(r.headers["retry-after"]) >= 1
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"


def test_mapping_table_covers_the_whole_tree() -> None:
    def subclasses(cls: type) -> set[type]:
        return {s for c in cls.__subclasses__() for s in {c, *subclasses(c)}}

    core_tree = {c for c in subclasses(DomainLLMError) if c.__module__ == "core.errors"}
    assert core_tree <= set(STATUS_BY_ERROR)
    assert status_for(InputTooLargeError("x", limit=1, actual=2)) == 413  # the subclass wins over its parent


def test_unexpected_exception_is_a_generic_500_with_a_logged_traceback(
    app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenEngine:
        def has_model(self, name: str) -> bool:
            raise RuntimeError("secret internal detail")

    app.dependency_overrides[get_engine] = BrokenEngine
    with TestClient(app, headers=KEYED) as c, caplog.at_level(logging.ERROR, logger="apps.errors"):
        r = c.post("/v1/chat/completions", json=CHAT)
    err = error_of(r, 500)
    assert err["type"] == "internal_error"
    assert "secret" not in err["message"]
    record = next(rec for rec in caplog.records if rec.name == "apps.errors")
    assert record.exc_info is not None and "secret internal detail" in str(record.exc_info[1])


# ---- malformed requests ------------------------------------------------------------------------


def test_malformed_json_is_400(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", content=b'{"model": "alpha", "messages": [', headers=_json())
    err = error_of(r, 400)
    assert err["type"] == "invalid_request" and err["message"].startswith("malformed JSON")


def _json() -> dict[str, str]:
    return {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("content", "headers", "needle"),
    [
        (b"", _json(), "body is missing"),
        (b"[1, 2]", _json(), "must be a JSON object"),
        (b'{"model": "alpha"}', {"content-type": "text/plain"}, "Content-Type: application/json"),
    ],
    ids=["missing", "array", "not-json-content-type"],
)
def test_bodies_that_are_not_a_json_object(
    client: TestClient, content: bytes, headers: dict[str, str], needle: str
) -> None:
    err = error_of(client.post("/v1/chat/completions", content=content, headers=headers), 422)
    assert err["type"] == "validation_error" and needle in err["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/recommend/events/bulk", "/v1/sentiment/classify"])
def test_json_nested_too_deeply_is_a_400_not_a_500(client: TestClient, path: str) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000  # 200 kB: under the body limit, over the decoder's recursion limit
    r = client.post(path, content=deep, headers=_json())
    assert r.status_code in (400, 422) and r.json()["error"]["message"], r.text


def test_body_above_the_limit_is_413_before_parsing(tiny_settings: Settings) -> None:
    settings = tiny_settings.model_copy(update={"max_body_bytes": 4096})
    with TestClient(create_app(settings=settings), headers=KEYED) as c:
        wait_ready(c)
        big = b'{"model": "alpha", "messages": [' + b" " * 5000 + b"]}"  # valid JSON, too many bytes
        err = error_of(c.post("/v1/chat/completions", content=big, headers=_json()), 413)
        assert err["type"] == "input_too_large" and "4096" in err["message"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the middleware has to count
            yield big[:3000]
            yield big[3000:]

        err = error_of(c.post("/v1/chat/completions", content=chunks(), headers=_json()), 413)
        assert "exceeds 4096" in err["message"]
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200  # below the limit: served


# ---- bad values --------------------------------------------------------------------------------


BAD_CHATS: list[tuple[str, dict[str, Any], int, str]] = [
    ("unknown-adapter", {**CHAT, "model": "nope"}, 404, "available: base, alpha, beta"),
    ("empty-messages", {**CHAT, "messages": []}, 422, "messages"),
    ("empty-content", {**CHAT, "messages": [{"role": "user", "content": "  "}]}, 422, "messages[0].content"),
    ("empty-parts", {**CHAT, "messages": [{"role": "user", "content": []}]}, 422, "messages[0].content"),
    ("unknown-role", {**CHAT, "messages": [{"role": "tool", "content": "x"}]}, 422, "messages[0].role"),
    ("missing-messages", {"model": "alpha"}, 422, "messages: Field required"),
    ("content-not-text", {**CHAT, "messages": [{"role": "user", "content": 5}]}, 422, "messages[0].content"),
    ("n=2", {**CHAT, "n": 2}, 400, "n=2"),
    ("negative-max-tokens", {**CHAT, "max_tokens": -5}, 422, "max_tokens"),
    ("zero-max-completion-tokens", {**CHAT, "max_completion_tokens": 0}, 422, "max_completion_tokens"),
    ("max-tokens-above-server-cap", {**CHAT, "max_tokens": 5000}, 400, "at most 1024"),
    ("temperature-9", {**CHAT, "temperature": 9}, 422, "temperature"),
    ("negative-temperature", {**CHAT, "temperature": -1}, 422, "temperature"),
    ("top-p-0", {**CHAT, "top_p": 0}, 422, "top_p"),
    ("beams-with-sampling", {**CHAT, "num_beams": 2, "temperature": 0.7}, 400, "beam search"),
    ("too-many-beams", {**CHAT, "num_beams": 50}, 422, "num_beams"),
    ("too-many-stops", {**CHAT, "stop": [str(i) for i in range(9)]}, 422, "stop"),  # the schema states both
    ("empty-stop", {**CHAT, "stop": [""]}, 422, "stop"),
    ("model-name-too-long", {**CHAT, "model": "x" * 1000}, 422, "model"),
    ("seed-beyond-64-bits", {**CHAT, "temperature": 0.5, "seed": 2**64}, 422, "seed"),
    ("input-too-large", {**CHAT, "messages": [{"role": "user", "content": "x" * 1_000_000}]}, 413, "limit is 32000"),
]


@pytest.mark.parametrize(("body", "status", "needle"), [c[1:] for c in BAD_CHATS], ids=[c[0] for c in BAD_CHATS])
def test_bad_chat_requests_get_a_clear_4xx(client: TestClient, body: dict[str, Any], status: int, needle: str) -> None:
    err = error_of(client.post("/v1/chat/completions", json=body), status)
    assert needle in err["message"]
    err_stream = error_of(client.post("/v1/chat/completions", json={**body, "stream": True}), status)
    assert err_stream == err  # a stream that cannot start is refused before the 200


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "/v1/chat/completions",
            {**CHAT, "messages": [{"role": "user", "content": "hi \ud800"}]},
            "messages[0].content",
        ),
        ("/v1/chat/completions", {**CHAT, "stop": ["\udfff"]}, "stop"),
        ("/v1/completions", {"model": "beta", "prompt": "\ud800"}, "prompt"),
        ("/v1/classify", {**CLASSIFY, "texts": ["\ud800"]}, "texts"),
        ("/v1/classify", {**CLASSIFY, "labels": ["a", "\ud800"]}, "labels"),
        ("/v1/adapters", {"name": "gamma", "path": "\ud800"}, "path"),
    ],
    ids=["chat", "stop", "prompt", "texts", "labels", "adapter-path"],
)
def test_lone_surrogates_are_refused_at_the_edge(
    client: TestClient, path: str, body: dict[str, Any], field: str
) -> None:
    """JSON can spell a lone surrogate; Python decodes it into a str the tokenizer cannot take."""
    raw = json.dumps(body).encode()  # ASCII with \ud800 escapes, as a client may send them
    err = error_of(client.post(path, content=raw, headers={**_json(), **ADMIN}), 422)
    assert err["message"].startswith(field) and "unicode" in err["message"].lower()


def test_bad_completion_prompts(client: TestClient) -> None:
    req = {"model": "beta", "max_tokens": 4}
    assert "list of 2" in error_of(client.post("/v1/completions", json={**req, "prompt": ["a", "b"]}), 400)["message"]
    assert error_of(client.post("/v1/completions", json={**req, "prompt": "   "}), 400)["type"] == "invalid_request"
    assert "prompt" in error_of(client.post("/v1/completions", json={**req, "prompt": [1, 2]}), 422)["message"]
    assert error_of(client.post("/v1/completions", json={**req, "prompt": "a" * 40_000}), 413)["type"] == (
        "input_too_large"
    )


BAD_CLASSIFY: list[tuple[str, dict[str, Any], int, str]] = [
    ("one-label", {**CLASSIFY, "labels": ["negative"]}, 422, "labels"),
    ("duplicate-labels", {**CLASSIFY, "labels": ["a", "a"]}, 400, "distinct"),
    ("blank-label", {**CLASSIFY, "labels": ["a", " "]}, 400, "non-empty"),
    ("no-texts", {**CLASSIFY, "texts": []}, 422, "texts"),
    ("blank-text", {**CLASSIFY, "texts": [""]}, 400, "non-empty"),
    ("too-many-texts", {**CLASSIFY, "texts": ["x"] * 300}, 413, "limit is 256"),
    ("unknown-adapter", {**CLASSIFY, "model": "nope"}, 404, "available"),
    ("unknown-field", {**CLASSIFY, "label": "x"}, 422, "label"),
]


@pytest.mark.parametrize(("body", "status", "needle"), [c[1:] for c in BAD_CLASSIFY], ids=[c[0] for c in BAD_CLASSIFY])
def test_bad_classify_requests_get_a_clear_4xx(
    client: TestClient, body: dict[str, Any], status: int, needle: str
) -> None:
    assert needle in error_of(client.post("/v1/classify", json=body), status)["message"]


# ---- admin key and adapters --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "needle"),
    [
        ({}, "is required"),
        ({"X-Admin-Key": "wrong"}, "not valid"),
        ({"Authorization": "Bearer wrong"}, "not valid"),
        ({"Authorization": "Basic dGVzdC1hZG1pbi1rZXk="}, "is required"),
        ({"X-Admin-Key": "tést-admin-kéy".encode("latin-1")}, "not valid"),  # non-ASCII must not crash the comparison
    ],
    ids=["missing", "wrong-header", "wrong-bearer", "basic-scheme", "non-ascii"],
)
def test_admin_routes_need_the_key(client: TestClient, headers: dict[str, Any], needle: str) -> None:
    headers = {"X-Api-Key": "", **headers}  # without the client's default key
    load = client.post("/v1/adapters", json={"name": "gamma", "path": "alpha"}, headers=headers)
    assert needle in error_of(load, 401)["message"]
    assert load.headers["www-authenticate"] == "Bearer"
    assert needle in error_of(client.delete("/v1/adapters/alpha", headers=headers), 401)["message"]
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["base", "alpha", "beta"]


def test_a_non_ascii_admin_key_works_when_sent_as_utf8(tiny_settings: Settings) -> None:
    settings = tiny_settings.model_copy(update={"admin_key": SecretStr("clé-secrète-42")})
    with TestClient(create_app(settings=settings), headers=KEYED) as c:
        wait_ready(c)
        r = c.delete("/v1/adapters/alpha", headers={"X-Api-Key": "", "X-Admin-Key": "clé-secrète-42".encode()})
        assert r.status_code == 200, r.text


def test_auth_is_checked_before_the_body(client: TestClient) -> None:
    anonymous = client.post("/v1/adapters", json={"nonsense": 1}, headers={"X-Api-Key": ""})
    assert error_of(anonymous, 401)["type"] == "authentication_error"


def test_placeholder_admin_key_disables_admin_routes(tiny_settings: Settings) -> None:
    settings = tiny_settings.model_copy(update={"environment": "dev", "admin_key": SecretStr("change-me")})
    with TestClient(create_app(settings=settings), headers=KEYED) as c:
        wait_ready(c)
        r = c.post("/v1/adapters", json={"name": "gamma", "path": "alpha"}, headers={"X-Api-Key": "change-me"})
        assert "DOMAINLLM_ADMIN_KEY" in error_of(r, 401)["message"]


def test_loading_a_taken_name_is_409(client: TestClient) -> None:
    r = client.post("/v1/adapters", json={"name": "alpha", "path": "beta"}, headers=ADMIN)
    assert error_of(r, 409)["type"] == "conflict"


def test_broken_adapter_folder_is_422_and_the_others_keep_serving(client: TestClient, tmp_path: Path) -> None:
    before = client.post("/v1/chat/completions", json=CHAT).json()["choices"][0]["message"]
    missing = client.post("/v1/adapters", json={"name": "ghost", "path": str(tmp_path / "none")}, headers=ADMIN)
    assert "does not exist" in error_of(missing, 422)["message"]

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]}')
    (broken / "adapter_model.safetensors").write_bytes(b"definitely not safetensors")
    r = client.post("/v1/adapters", json={"name": "broken", "path": str(broken)}, headers=ADMIN)
    assert error_of(r, 422)["type"] == "adapter_load_error"

    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["base", "alpha", "beta"]
    assert client.post("/v1/chat/completions", json=CHAT).json()["choices"][0]["message"] == before


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "needle"),
    [
        ("post", "/v1/adapters", {"name": "Bad Name!", "path": "alpha"}, 400, "invalid"),
        ("post", "/v1/adapters", {"name": "base", "path": "alpha"}, 400, "reserved"),
        ("post", "/v1/adapters", {"name": "gamma", "path": "alpha", "extra": 1}, 422, "extra"),
        ("delete", "/v1/adapters/nope", None, 404, "available: base, alpha, beta"),
        ("delete", "/v1/adapters/base", None, 400, "cannot be unloaded"),
    ],
    ids=["invalid-name", "reserved-name", "unknown-field", "unload-unknown", "unload-base"],
)
def test_bad_adapter_requests(
    client: TestClient, method: str, path: str, body: dict[str, Any] | None, status: int, needle: str
) -> None:
    r = client.request(method.upper(), path, json=body, headers=ADMIN)
    assert needle in error_of(r, status)["message"]


# ---- routing -----------------------------------------------------------------------------------


def test_unknown_route_is_404(client: TestClient) -> None:
    err = error_of(client.get("/v1/nothing-here"), 404)
    assert err["type"] == "not_found" and "/v1/nothing-here" in err["message"]


def test_wrong_method_is_405_with_allow(client: TestClient) -> None:
    r = client.put("/v1/chat/completions", json=CHAT)
    err = error_of(r, 405)
    assert err["type"] == "method_not_allowed" and "POST" in err["message"]
    assert r.headers["allow"] == "POST"
