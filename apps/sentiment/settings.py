"""Deployment settings of the sentiment monitor (env prefix ``DOMAINLLM_SENTIMENT_``).

The core's ``Settings`` holds what every app shares (model, Redis, limits); what only this app needs
(targets, secrets, intervals) lives here so the core stays ignorant of the apps. Domain rules (topics,
watchlist, anomaly rules) are in the YAML file named by ``config_path``: see ``apps.sentiment.config``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from apps.tenants.store import DEFAULT_TENANT, tenant_namespace
from core.config import PLACEHOLDER_SECRETS, PROJECT_ROOT

DEFAULT_CONFIG = Path(__file__).resolve().parent / "rules" / "sentiment.yaml"


class SentimentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DOMAINLLM_SENTIMENT_", extra="ignore", env_file=".env")

    namespace: str = Field("sentiment", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Redis key prefix.")
    config_path: Path = DEFAULT_CONFIG

    # ingestion
    feeds: list[str] = Field(default_factory=list, description="RSS/Atom URLs (http, https or file) to poll.")
    inbox_dir: Path | None = PROJECT_ROOT / "data" / "runtime" / "inbox"
    feed_timeout_s: float = Field(10.0, gt=0, le=300)
    feed_max_bytes: int = Field(5_000_000, ge=1024)
    feed_backoff_s: float = Field(60.0, ge=0)
    feed_backoff_max_s: float = Field(3600.0, ge=0)
    max_file_bytes: int = Field(50_000_000, ge=1024)
    max_title_chars: int = Field(1000, ge=10)
    max_item_body_chars: int = Field(50_000, ge=100)
    max_items_per_request: int = Field(1000, ge=1)
    item_ttl_s: int = Field(
        90 * 86400, ge=3600, description="A stored news item is dropped this long after it arrived (its counts stay)."
    )

    # enrichment
    enrich_batch_size: int = Field(32, ge=1, le=256)

    # delivery
    webhook_url: str | None = None
    webhook_secret: SecretStr = SecretStr("change-me")
    # a tenant's webhook (set over the API, not by the operator): public addresses only, checked at each send
    webhook_public_only: bool = Field(False, exclude=True)
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_from: str = "domainllm-alerts@localhost"
    smtp_to: list[str] = Field(default_factory=list)
    smtp_timeout_s: float = Field(10.0, gt=0)
    delivery_timeout_s: float = Field(10.0, gt=0)
    delivery_max_retries: int = Field(5, ge=0, le=50)
    delivery_backoff_s: int = Field(2, ge=1)
    # below the visibility timeout: a retry waits unacknowledged in the worker until its countdown, and
    # past the visibility timeout another worker is handed a copy of it (the task runs twice)
    delivery_backoff_max_s: int | None = Field(
        None, ge=1, description="Longest wait between delivery tries; default min(300, visibility timeout / 2)."
    )

    # schedules (celery beat), seconds
    poll_interval_s: float = Field(60.0, gt=0)
    monitor_interval_s: float = Field(30.0, gt=0)
    sweep_interval_s: float = Field(60.0, gt=0)
    deadletter_retry_interval_s: float = Field(900.0, gt=0)
    outbox_interval_s: float = Field(30.0, gt=0, description="Beat queues the deliveries left in the outbox.")
    outbox_grace_s: float = Field(
        30.0, ge=0, description="An outbox entry this old was not queued by its monitor run: beat queues it."
    )

    # celery
    visibility_timeout_s: int = Field(
        600, ge=2, description="Unacked task redelivered after this (worker lost); the sweeper waits as long."
    )
    # time limits (s): at the soft one the task stops cleanly (a delivery is retried; the others leave
    # the rest to their next run); at the hard one the worker process ends (workers/time_limits.py)
    enrich_soft_time_limit_s: float = Field(240.0, gt=0)
    enrich_time_limit_s: float = Field(300.0, gt=0)
    delivery_soft_time_limit_s: float = Field(60.0, gt=0)
    delivery_time_limit_s: float = Field(90.0, gt=0, description="Also how long a delivery's claim lives.")
    task_soft_time_limit_s: float = Field(240.0, gt=0, description="Feeds, inbox, sweeper, monitor, outbox.")
    task_time_limit_s: float = Field(300.0, gt=0)
    beat_lock_ttl_s: float = Field(30.0, ge=2, description="A beat that stops renewing its lock loses it after this.")
    # fault injection, for the worker-killed test only: sleep this long inside an enrichment batch
    fault_enrich_delay_s: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> SentimentSettings:
        if self.webhook_url and self.webhook_secret.get_secret_value() in PLACEHOLDER_SECRETS:
            raise ValueError("DOMAINLLM_SENTIMENT_WEBHOOK_SECRET must be set to a real secret to sign webhooks")
        if self.smtp_host and not self.smtp_to:
            raise ValueError("DOMAINLLM_SENTIMENT_SMTP_TO must list at least one address when SMTP_HOST is set")
        if self.delivery_backoff_max_s is None:
            self.delivery_backoff_max_s = self.task_backoff_max_s
        elif self.delivery_backoff_max_s >= self.visibility_timeout_s:
            raise ValueError(
                f"DOMAINLLM_SENTIMENT_DELIVERY_BACKOFF_MAX_S ({self.delivery_backoff_max_s}) must be below "
                f"VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s}): a retry waiting longer is handed to a "
                "second worker and sent twice"
            )
        slowest_send = max(self.delivery_timeout_s, self.smtp_timeout_s)
        if slowest_send >= self.delivery_soft_time_limit_s:
            raise ValueError(
                f"DOMAINLLM_SENTIMENT_DELIVERY_SOFT_TIME_LIMIT_S ({self.delivery_soft_time_limit_s}) must be above "
                f"the send timeouts (DELIVERY_TIMEOUT_S, SMTP_TIMEOUT_S: {slowest_send}): a send stuck in a socket "
                "read only sees the soft limit once the read gives up"
            )
        for kind in ("enrich", "delivery", "task"):
            soft, hard = getattr(self, f"{kind}_soft_time_limit_s"), getattr(self, f"{kind}_time_limit_s")
            if soft >= hard:
                raise ValueError(
                    f"DOMAINLLM_SENTIMENT_{kind.upper()}_SOFT_TIME_LIMIT_S ({soft}) must be below "
                    f"{kind.upper()}_TIME_LIMIT_S ({hard})"
                )
        return self

    @property
    def task_backoff_max_s(self) -> int:
        """The longest retry wait of any task: below the visibility timeout, so no retry runs twice."""
        return max(1, min(300, self.visibility_timeout_s // 2))

    @property
    def retry_backoff_max_s(self) -> int:
        """The delivery retries' longest wait (the setting, or its default)."""
        return self.delivery_backoff_max_s or self.task_backoff_max_s

    def targets(self) -> list[str]:
        """Delivery targets in force: the log always, webhook and email when configured."""
        names = ["log"]
        if self.webhook_url:
            names.append("webhook")
        if self.smtp_host:
            names.append("email")
        return names

    def for_tenant(self, tenant: str) -> SentimentSettings:
        """A tenant's monitor: its own Redis prefix; the operator's feeds, inbox folder, webhook and
        e-mail stay with the default tenant (a tenant pushes its news and reads its alerts)."""
        if tenant == DEFAULT_TENANT:
            return self
        return self.model_copy(
            update={
                "namespace": tenant_namespace(self.namespace, tenant),
                "feeds": [],
                "inbox_dir": None,
                "webhook_url": None,
                "smtp_host": None,
                "smtp_to": [],
            }
        )
