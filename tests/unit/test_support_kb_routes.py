"""/v1/support/kb/urls and /v1/support/kb/sync (apps/support/kb_routes.py) on a tiny random Llama,
a real embedded Redis and a bag-of-words embedder: what they store, and that bad input gets a clear
4xx and leaves the knowledge base as it was (same documents, same generation)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from apps.server import create_app
from apps.settings import AppSettings
from apps.support.settings import SupportSettings
from core.engine import LocalEngine
from tests.doubles.recommend import HashEmbedder
from tests.unit.test_support_fetch import BIG, Server

pytestmark = pytest.mark.unit

ADMIN = {"X-Admin-Key": "test-admin-key"}


@pytest.fixture(scope="module")
def web() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def make_client(tiny_settings: Any, engine: LocalEngine, redis_url: str, tmp_path: Path, **support: Any) -> TestClient:
    engine.embedder = HashEmbedder()  # type: ignore[assignment]
    settings = SupportSettings(namespace=f"t{uuid.uuid4().hex[:8]}", kb_dir=tmp_path / "kb", **support)
    core = tiny_settings.model_copy(update={"redis_url": redis_url})
    return TestClient(create_app(AppSettings.of(core, support=settings), engine=engine))


@pytest.fixture
def local(tiny_settings: Any, tiny_engine: LocalEngine, redis_url: str, tmp_path: Path) -> Iterator[TestClient]:
    """URL ingest allowed for the loopback test server only (this test's setting, not a default)."""
    support = {
        "fetch_allow_hosts": ["127.0.0.1"],
        "fetch_allow_private": True,
        "fetch_max_bytes": BIG // 2,
        "fetch_timeout_s": 1.0,
        "sync_roots": [tmp_path / "shared"],
    }
    with make_client(tiny_settings, tiny_engine, redis_url, tmp_path, **support) as c:
        r = c.post(
            "/v1/support/kb/documents",
            json={"documents": [{"doc_id": "seed", "title": "Seed", "text": "Seed."}]},
            headers=ADMIN,
        )
        assert r.status_code == 200, r.text
        yield c


def kb_state(c: TestClient) -> tuple[int, dict[str, str]]:
    kb = c.app.state.services.support.kb  # type: ignore[attr-defined]
    return kb.generation, {d.doc_id: d.content_hash for d in kb.documents()}


def refused(c: TestClient, path: str, body: Any, status: int, needle: str) -> dict[str, Any]:
    before = kb_state(c)
    r = c.post(path, json=body, headers=ADMIN)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle.lower() in error["message"].lower(), error
    assert kb_state(c) == before  # nothing stored changed
    return dict(error)


# ---- /urls -----------------------------------------------------------------------------------------


def test_url_ingest_is_off_by_default(
    tiny_settings: Any, tiny_engine: LocalEngine, redis_url: str, tmp_path: Path
) -> None:
    with make_client(tiny_settings, tiny_engine, redis_url, tmp_path) as c:
        error = refused(c, "/v1/support/kb/urls", {"urls": ["https://help.example.com/a"]}, 400, "FETCH_ALLOW_HOSTS")
        assert error["type"] == "url_refused"
        refused(c, "/v1/support/kb/sync", {"folder": str(tmp_path)}, 400, "DOMAINLLM_SUPPORT_SYNC_ROOTS")


def test_pages_and_sitemaps_are_ingested(local: TestClient, web: Server) -> None:
    r = local.post(
        "/v1/support/kb/urls", json={"urls": [f"{web.base}/page.html", f"{web.base}/guide.md"]}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    assert [x["status"] for x in r.json()["results"]] == ["added", "added"]
    kb = local.app.state.services.support.kb  # type: ignore[attr-defined]
    page = kb.get("127.0.0.1/page.html")
    assert page.title == "Returns" and page.url == f"{web.base}/page.html" and page.source == "url"
    assert "- step one" in kb.get("127.0.0.1/guide.md").text

    r = local.post("/v1/support/kb/urls", json={"sitemap": f"{web.base}/sitemap.xml", "prune": True}, headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [e["path"] for e in body["errors"]] == [f"{web.base}/missing"] and "HTTP 404" in body["errors"][0]["reason"]
    assert body["sync"]["source"] == f"sitemap:{web.base}/sitemap.xml" and body["truncated"] is False
    assert kb.get("127.0.0.1/page.html").source == f"sitemap:{web.base}/sitemap.xml"  # adopted from "url"
    assert sorted(body["sync"]["updated"]) == ["127.0.0.1/guide.md", "127.0.0.1/page.html"]


@pytest.mark.parametrize(
    ("body", "status", "needle", "error_type"),
    [
        ({"urls": ["http://127.0.0.1:9/x"], "sitemap": "http://127.0.0.1:9/s"}, 422, "not both", "validation_error"),
        ({}, 422, "not both or neither", "validation_error"),
        ({"urls": []}, 422, "urls", "validation_error"),
        ({"urls": ["http://evil.example.com/x"]}, 400, "not in DOMAINLLM_SUPPORT_FETCH_ALLOW_HOSTS", "url_refused"),
        ({"urls": ["ftp://127.0.0.1/x"]}, 400, "only http and https", "url_refused"),
        ({"urls": ["x"], "prune": True}, 422, 'applies to a "sitemap" only', "validation_error"),
        ({"urls": ["http://127.0.0.1/x"], "extra": 1}, 422, "extra", "validation_error"),
    ],
)
def test_bad_url_requests_are_refused(local: TestClient, body: Any, status: int, needle: str, error_type: str) -> None:
    assert refused(local, "/v1/support/kb/urls", body, status, needle)["type"] == error_type


@pytest.mark.parametrize(
    ("path", "status", "needle", "error_type"),
    [
        ("/big", 413, "FETCH_MAX_BYTES", "input_too_large"),
        ("/big-chunked", 413, "FETCH_MAX_BYTES", "input_too_large"),
        ("/slow", 422, "FETCH_TIMEOUT_S", "upstream_timeout"),
        ("/missing", 422, "HTTP 404", "upstream_error"),
        ("/image", 422, "image/png", "upstream_error"),
        ("/to-evil", 400, "evil.example.com", "url_refused"),
    ],
)
def test_failing_pages_store_nothing_not_even_the_good_ones(
    local: TestClient, web: Server, path: str, status: int, needle: str, error_type: str
) -> None:
    body = {"urls": [f"{web.base}/page.html", f"{web.base}{path}"]}  # all or nothing
    assert refused(local, "/v1/support/kb/urls", body, status, needle)["type"] == error_type


def test_a_loopback_url_is_refused_without_allow_private(
    tiny_settings: Any, tiny_engine: LocalEngine, redis_url: str, tmp_path: Path, web: Server
) -> None:
    support = {"fetch_allow_hosts": ["127.0.0.1", "localhost", "::1"]}
    requests_before = len(web.seen)
    with make_client(tiny_settings, tiny_engine, redis_url, tmp_path, **support) as c:
        for url in (f"{web.base}/page.html", f"http://localhost:{web.server_port}/page.html", "http://[::1]:9/x"):
            refused(c, "/v1/support/kb/urls", {"urls": [url]}, 400, "loopback")
        refused(c, "/v1/support/kb/urls", {"sitemap": f"{web.base}/sitemap.xml"}, 400, "loopback")
    assert len(web.seen) == requests_before  # refused before a single request was sent


def test_a_bad_sitemap_is_refused(local: TestClient, web: Server) -> None:
    refused(local, "/v1/support/kb/urls", {"sitemap": f"{web.base}/bomb.xml"}, 422, "not a readable sitemap")
    refused(local, "/v1/support/kb/urls", {"sitemap": f"{web.base}/page.html"}, 422, "XML sitemap")


# ---- /sync -----------------------------------------------------------------------------------------


def test_folder_sync_over_the_api(local: TestClient, tmp_path: Path) -> None:
    folder = tmp_path / "shared" / "help"
    folder.mkdir(parents=True)
    (folder / "a.md").write_text("# A\n\nAlpha.\n")
    (folder / "b.md").write_text("# B\n\nBravo.\n")
    r = local.post("/v1/support/kb/sync", json={"folder": str(folder)}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["added"] == ["a", "b"]
    (folder / "b.md").unlink()
    (folder / "c.md").write_bytes(b"\xff\xfe not utf-8")
    r = local.post("/v1/support/kb/sync", json={"folder": str(folder)}, headers=ADMIN)
    body = r.json()
    assert r.status_code == 200 and body["deleted"] == ["b"] and body["failed"][0]["path"] == "c.md"
    assert {d for d in kb_state(local)[1]} == {"seed", "a"}
    (folder / "a.md").unlink()
    (folder / "c.md").unlink()
    refused(local, "/v1/support/kb/sync", {"folder": str(folder)}, 400, "allow_empty")


@pytest.mark.parametrize(
    ("folder", "status", "needle"),
    [
        ("/etc", 400, "not under DOMAINLLM_SUPPORT_SYNC_ROOTS"),
        ("{root}/../outside", 400, "not under"),
        ("{root}/missing", 400, "not a folder"),
        ("", 422, "folder"),
    ],
)
def test_bad_sync_requests_are_refused(
    local: TestClient, tmp_path: Path, folder: str, status: int, needle: str
) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.md").write_text("# X\n\nOutside.\n")
    (tmp_path / "shared").mkdir()
    refused(local, "/v1/support/kb/sync", {"folder": folder.format(root=tmp_path / "shared")}, status, needle)


def test_kb_writes_need_the_admin_key(local: TestClient, web: Server) -> None:
    before = kb_state(local)
    assert local.post("/v1/support/kb/urls", json={"urls": [f"{web.base}/page.html"]}).status_code == 401
    assert local.post("/v1/support/kb/sync", json={"folder": "/tmp"}).status_code == 401
    assert kb_state(local) == before
