"""The composition root: the whole app on a real Redis builds each app's service exactly once per
process, and every route (and the worker's runtime) is handed that one instance."""

from __future__ import annotations

import gc
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from apps import composition
from apps.recommend.service import RecommendService
from apps.sentiment.service import SentimentContext
from apps.server import create_app
from apps.settings import AppSettings
from apps.support.service import SupportService
from apps.support.settings import SupportSettings
from core.config import Settings
from core.redis_server import start_background

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def real_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    proc = start_background(port, tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


def _live(kind: type) -> list[object]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, kind)]


def test_each_service_is_built_once_and_shared_by_every_route(
    tiny_settings: Settings, real_redis: str, tmp_path: Path
) -> None:
    before = composition.BUILDS["count"]
    settings = AppSettings.of(
        tiny_settings.model_copy(update={"redis_url": real_redis}),
        support=SupportSettings(kb_dir=tmp_path / "kb", public_keys=["pk_test"]),
    )
    app = create_app(settings)
    with TestClient(app) as client:
        for _ in range(50):  # the engine loads in the background; the support routes wait for it
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.2)
        services = app.state.services
        # one request per app, twice: each goes through apps.deps to the one instance
        for _ in range(2):
            assert client.post("/v1/support/sessions", json={}, headers={"X-Support-Key": "pk_test"}).status_code == 200
            assert client.get("/v1/sentiment/stats").status_code == 200
            assert client.get("/v1/recommend/stats").status_code == 200
        assert app.state.services is services
        assert composition.BUILDS["count"] == before + 1
        for kind in (SupportService, SentimentContext, RecommendService):
            assert len(_live(kind)) == 1, kind.__name__
        # the engine handle is the one every service holds
        assert services.support.engine is services.engine
        assert services.enricher(services.sentiment).engine is services.engine
        assert services.enricher(services.sentiment) is services.enricher()
