"""Browser fixtures: the real server on a loopback port, and Debian's Chromium driven by Playwright.

The server is what ``make run`` starts, minus the workers: ``domainllm serve`` with the real base
model and adapters, its own embedded Redis and temporary data and knowledge-base folders, so a run
leaves nothing behind; the sample help articles are uploaded through the admin API before the tests.
One server and one browser serve the whole e2e run; each person in a test gets their own context.
The browser is /usr/bin/chromium (``make browser`` installs it), never one Playwright downloads.

To run the tests against a server you started yourself, set ``SUPPORT_E2E_BASE_URL`` (and
``SUPPORT_E2E_ADMIN_KEY``, its admin key, to upload the sample articles first):
``SUPPORT_E2E_BASE_URL=http://127.0.0.1:8000 pytest -m e2e``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from core.config import PROJECT_ROOT
from core.redis_server import start_background
from tests.doubles.redis import free_port
from tests.doubles.servers import start_process, stop_process, wait_until_ready

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
# Headless, and nothing that phones home: this machine's network is closed, and Chromium's background
# connections would otherwise fail by the dozen. Playwright gives each launch a fresh profile folder.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN_KEY = "e2e-admin-key"
PUBLIC_KEY = "pk_demo_store"
STARTUP_TIMEOUT_S = 180  # the model loads in the background; /readyz says when it is in
ARTICLES = PROJECT_ROOT / "data" / "samples" / "support" / "articles"


@dataclass(frozen=True)
class SupportServer:
    url: str
    admin_key: str

    def client(self) -> httpx.Client:
        """An HTTP client that speaks for the widget (public key) and for the operator (admin key)."""
        headers = {"X-Support-Key": PUBLIC_KEY, "X-Admin-Key": self.admin_key}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def stats(self) -> dict[str, Any]:
        with self.client() as http:
            r = http.get("/v1/support/stats")
        assert r.status_code == 200, r.text
        stats: dict[str, Any] = r.json()
        return stats


def _seed_knowledge_base(server: SupportServer, deadline: float) -> None:
    """Upload the sample help articles as files, as a support team would (an upsert: unchanged ones are no-ops)."""
    articles = sorted([*ARTICLES.glob("*.md"), *ARTICLES.glob("*.html")])
    assert articles, f"no sample articles under {ARTICLES}"
    with server.client() as http:
        for path in [*articles, ARTICLES.parent / "faq.csv"]:
            params: dict[str, str] = {"name": path.name}
            if path.suffix != ".csv":  # FAQ rows carry their own ids and urls
                params |= {"doc_id": path.stem, "url": f"/help/{path.stem}", "strip_scripts": "true"}
            while True:
                r = http.post("/v1/support/kb/files", params=params, content=path.read_bytes())
                if r.status_code < 300:
                    break
                if r.status_code != 503 or time.monotonic() > deadline:  # 503: still warming up
                    pytest.fail(f"could not add {path.name} to the knowledge base: {r.status_code} {r.text}")
                time.sleep(1)


@pytest.fixture(scope="session")
def support_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SupportServer]:
    external = os.environ.get("SUPPORT_E2E_BASE_URL")
    if external:
        server = SupportServer(external.rstrip("/"), os.environ.get("SUPPORT_E2E_ADMIN_KEY", ""))
        if server.admin_key:
            _seed_knowledge_base(server, time.monotonic() + STARTUP_TIMEOUT_S)
        yield server
        return
    real_model_dir: Path = request.getfixturevalue("real_model_dir")  # only when we start the server
    tmp = tmp_path_factory.mktemp("support-e2e")
    redis_port, port = free_port(), free_port()
    redis = start_background(redis_port, tmp / "redis")
    env = {
        **os.environ,
        "DOMAINLLM_ENVIRONMENT": "test",
        "DOMAINLLM_ADMIN_KEY": ADMIN_KEY,
        "DOMAINLLM_HOST": "127.0.0.1",
        "DOMAINLLM_PORT": str(port),
        "DOMAINLLM_DATA_DIR": str(tmp / "data"),
        "DOMAINLLM_SUPPORT_KB_DIR": str(tmp / "kb"),
        "DOMAINLLM_BASE_MODEL": str(real_model_dir),
        "DOMAINLLM_ADAPTERS_DIR": str(PROJECT_ROOT / "data" / "adapters"),
        "DOMAINLLM_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
    }
    log_path = tmp / "server.log"
    proc = start_process([str(Path(sys.executable).parent / "domainllm"), "serve"], env, log_path)
    server = SupportServer(f"http://127.0.0.1:{port}", ADMIN_KEY)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        wait_until_ready(server.url, proc, log_path, STARTUP_TIMEOUT_S, every=0.3)
        _seed_knowledge_base(server, deadline)
        yield server
    finally:
        for child in (proc, redis):
            stop_process(child, timeout=20)
    assert "Traceback" not in log_path.read_text(), log_path.read_text()[-5000:]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # per module, never per session: Playwright's sync API runs an event loop on this thread until it
    # stops, and a loop left running breaks every later test that calls asyncio.run()
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium for the e2e tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing (`make setup`)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def new_page(browser: Browser, server: SupportServer, width: int = 1280, height: int = 860) -> Page:
    """A fresh tab in a fresh context (own sessionStorage: one person), relative URLs against the server."""
    context = browser.new_context(base_url=server.url, viewport={"width": width, "height": height})
    context.set_default_timeout(15_000)
    return context.new_page()


@pytest.fixture
def page(browser: Browser, support_server: SupportServer) -> Iterator[Page]:
    page = new_page(browser, support_server)
    yield page
    page.context.close()
