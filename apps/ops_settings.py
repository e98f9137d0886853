"""Settings of operations (env prefix ``DOMAINLLM_OPS_``): log format, replica heartbeats, the
workers' metrics port, the KPI collector's bounds and the thresholds ``domainllm doctor`` judges by.

    settings = ops_settings(get_settings())
    settings.log_format, settings.worker_metrics_port, settings.max_clock_skew_s
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.config import Settings


class OpsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DOMAINLLM_OPS_", extra="ignore", env_file=".env")

    log_format: Literal["text", "json"] = Field(
        "text",
        description="json: one JSON object per log line (time, level, logger, message, request_id, task), "
        "PII masked, for a log shipper; text: the plain lines a person reads in a terminal.",
    )
    namespace: str = Field(
        "ops", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Redis key prefix of the replicas' heartbeats."
    )
    heartbeat_s: float = Field(
        15.0,
        ge=0,
        le=3600,
        description="Every API replica, worker and beat writes a heartbeat (its role, queues, metrics port and "
        "clock offset to Redis) this often; doctor reads them to find clock skew and queues nobody consumes. 0: off.",
    )
    worker_metrics_port: int = Field(
        9540,
        ge=0,
        le=65535,
        description="A worker serves its Prometheus metrics on the first free port from this one on (several "
        "workers on one host take the next ones, see worker_metrics_ports). 0: no exporter.",
    )
    worker_metrics_ports: int = Field(
        8, ge=1, le=256, description="How many ports from worker_metrics_port a worker tries before it gives up."
    )
    worker_metrics_host: str = Field(
        "127.0.0.1", description="Address the workers' exporters bind; 0.0.0.0 when Prometheus runs elsewhere."
    )
    kpi_metrics: bool = Field(
        True,
        description="/metrics also reports the KPIs kept in Redis (support, alerts, recommend, Celery queues); "
        "they are the same on every replica, so aggregate them with max, not sum.",
    )
    kpi_cache_s: float = Field(
        10.0, ge=0, le=600, description="A scrape within this many seconds of the last reuses its Redis reads."
    )
    kpi_max_tenants: int = Field(
        200, ge=1, le=100_000, description="KPIs are read for at most this many tenants (the first by id)."
    )
    # what doctor calls a fault
    min_free_disk_mb: int = Field(1024, ge=0, description="doctor: less free space than this on a data disk fails.")
    min_free_disk_pct: float = Field(5.0, ge=0, le=100, description="doctor: less free space than this % fails.")
    max_clock_skew_s: float = Field(
        2.0, gt=0, description="doctor: a replica whose clock is this far from the others' fails."
    )
    queue_max_age_s: float = Field(
        600.0, gt=0, description="doctor: a queue whose oldest message waited longer than this is reported."
    )


def ops_settings(settings: Settings | None = None) -> OpsSettings:
    """The ``ops`` section of the suite's settings; read from the environment when ``settings`` has
    none (a plain core ``Settings``, a process that built only the core)."""
    section = getattr(settings, "ops", None)
    return section if isinstance(section, OpsSettings) else OpsSettings()
