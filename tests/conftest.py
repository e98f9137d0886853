"""Shared fixtures. Unit tests run on a tiny random Llama built in seconds (no download);
integration tests use the real prepared base model under data/models (``make model``)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from core.config import Settings
from core.engine import LocalEngine
from core.tiny import build_random_lora, build_tiny_model
from tests.doubles.redis import RedisProcess

# Rate limits share one counter per key or address across every test (one Redis, one "testclient"
# address); the suite's own request bursts would trip them. Off here (the servers the tests start
# inherit it); tests/unit/test_rate_limits.py turns them on with its own settings.
os.environ.setdefault("DOMAINLLM_RATE_LIMIT_PER_KEY", "")
os.environ.setdefault("DOMAINLLM_RATE_LIMIT_PER_IP", "")
# An app built with default settings must never read or write the developer's own knowledge base
# (data/runtime/support/kb, filled by `make run`): the suite's default is an empty folder of its own.
os.environ.setdefault("DOMAINLLM_SUPPORT_KB_DIR", tempfile.mkdtemp(prefix="domainllm-test-kb-"))
# Nor the developer's Redis: settings built without a redis_url point at a port where nothing listens
# (not the embedded Redis's 6390, which a `make run` or `make train-samples` beside the tests holds,
# with its adapter set, keys and routes); tests that need Redis get their own (``redis_url``).
os.environ.setdefault("DOMAINLLM_REDIS_PORT", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two random LoRA adapters on the tiny model, in one adapter folder: {name: path}."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        "alpha": build_random_lora(tiny_model_dir, root / "alpha", rank=4, seed=1),
        "beta": build_random_lora(tiny_model_dir, root / "beta", rank=8, seed=2),
    }


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir: Path) -> Any:
    """The tiny model's tokenizer, as training loads it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``make test``'s two processes each take a test file whole (``--dist loadfile``), and the e2e
    files together: they share one session fixture, a support server on the real model that takes
    45 s to start, which two processes would each start (measured: 52 s and 46 s of setup)."""
    if config.getoption("dist", None) != "loadfile":
        return None
    from xdist.scheduler.loadfile import LoadFileScheduling

    class FilesAndE2E(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return "tests/e2e" if nodeid.startswith("tests/e2e/") else str(super()._split_scope(nodeid))

    return FilesAndE2E(config, log)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server for the whole run; each test keeps to its own key namespace. Tests that
    stop or kill Redis start their own ``RedisProcess``. ``DOMAINLLM_TEST_REDIS_URL`` names a Redis
    of the caller's instead, one only this run uses (``make test-external-redis``: Debian's
    redis-server with a password and AOF)."""
    external = os.environ.get("DOMAINLLM_TEST_REDIS_URL")
    if external:
        client = redis.Redis.from_url(external)
        client.ping()  # a wrong URL or password fails here once, not in every test
        client.close()
        yield external
        return
    server = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture(params=[False, True], ids=["bytes", "str"])
def redis_either(request: pytest.FixtureRequest, redis_url: str) -> Iterator[redis.Redis]:
    """A client on the run's Redis, once answering bytes and once str: the stores must handle both."""
    r = redis.Redis.from_url(redis_url, decode_responses=request.param)
    yield r
    r.close()


@pytest.fixture
def tiny_settings(tiny_model_dir: Path, tiny_adapters: dict[str, Path], tmp_path: Path) -> Settings:
    return Settings(
        environment="test",
        data_dir=tmp_path / "data",
        base_model=str(tiny_model_dir),
        adapters_dir=tiny_adapters["alpha"].parent,
        admin_key="test-admin-key",
        batch_wait_ms=20,
        # no Redis unless a test gives it one (model_copy(update={"redis_url": ...})): never whatever
        # happens to listen on the default port (a `make run` or `make train-samples` beside the tests)
        redis_port=1,
    )


@pytest.fixture
def tiny_engine(tiny_settings: Settings) -> Iterator[LocalEngine]:
    engine = LocalEngine(tiny_settings)
    engine.warm_up()
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """The prepared SmolLM2 folder; ``make test`` prepares it before pytest runs."""
    from core.config import get_settings
    from core.model_store import is_prepared, prepare_default_model

    path = get_settings().base_model_path
    if not is_prepared(path):
        prepare_default_model(path)
    return path
