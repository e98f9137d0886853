"""The composition root: the whole app on a real Redis builds each app's service exactly once per
process, and every route (and the worker's runtime) is handed that one instance."""

from __future__ import annotations

import time
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
from tests.doubles.servers import KEYED

pytestmark = pytest.mark.integration


def _count_constructions(monkeypatch: pytest.MonkeyPatch, kinds: tuple[type, ...]) -> dict[str, int]:
    """Count every construction of ``kinds`` while the test runs (the real constructors still run)."""
    counts = {kind.__name__: 0 for kind in kinds}
    for kind in kinds:
        original = kind.__init__

        def counting(self: object, *args: object, __original=original, __name=kind.__name__, **kwargs: object) -> None:
            counts[__name] += 1
            __original(self, *args, **kwargs)

        monkeypatch.setattr(kind, "__init__", counting)
    return counts


def test_each_service_is_built_once_and_shared_by_every_route(
    tiny_settings: Settings, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = _count_constructions(monkeypatch, (SupportService, SentimentContext, RecommendService))
    before = composition.BUILDS["count"]
    settings = AppSettings.of(
        tiny_settings.model_copy(update={"redis_url": redis_url}),
        support=SupportSettings(kb_dir=tmp_path / "kb", public_keys=["pk_test"]),
    )
    app = create_app(settings)
    with TestClient(app, headers=KEYED) as client:
        for _ in range(50):  # the engine loads in the background; the support routes wait for it
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.2)
        services = app.state.services
        # one request per app, twice: each goes through apps.deps to the one instance
        for _ in range(2):
            assert client.post("/v1/support/sessions", json={}, headers={"X-Support-Key": "pk_test"}).status_code == 201
            assert client.get("/v1/sentiment/stats").status_code == 200
            assert client.get("/v1/recommend/stats").status_code == 200
        assert app.state.services is services
        assert composition.BUILDS["count"] == before + 1
        assert counts == {"SupportService": 1, "SentimentContext": 1, "RecommendService": 1}
        # the engine handle is the one every service holds
        assert services.support.engine is services.engine
        assert services.enricher(services.sentiment).engine is services.engine
        assert services.enricher(services.sentiment) is services.enricher()
