"""The embedded Redis as make run starts it: a password that every client sends (in the effective
URL), and a memory cap that refuses writes rather than evicting keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from core.config import Settings
from core.redis_server import start_background
from tests.doubles.redis import free_port

pytestmark = pytest.mark.unit


def test_the_embedded_redis_wants_its_password_and_never_evicts(tmp_path: Path) -> None:
    port = free_port()
    proc = start_background(port, tmp_path / "redis", password="s3cret/with:odd@chars", maxmemory="64mb")
    try:
        settings = Settings(
            environment="test", admin_key="k", redis_port=port, redis_password=SecretStr("s3cret/with:odd@chars")
        )
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        client = redis.Redis.from_url(settings.effective_redis_url)
        assert client.ping()
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("maxmemory") == {"maxmemory": str(64 * 1024 * 1024)}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
