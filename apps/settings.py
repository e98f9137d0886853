"""The suite's one settings model: the core's ``Settings`` plus one nested section per app.

    settings = get_settings()
    settings.redis_url, settings.support.top_k, settings.sentiment.feeds, settings.recommend.adapter

Each section reads its own environment prefix (``DOMAINLLM_SUPPORT_``, ``DOMAINLLM_SENTIMENT_``,
``DOMAINLLM_RECOMMEND_``), so every variable keeps the name the README documents; a test or a
caller can pass a whole section (``AppSettings(support=SupportSettings(top_k=2))``). The core's
class stays ignorant of the apps: this subclass is where they meet.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr, field_validator, model_validator

from apps.ops_settings import OpsSettings
from apps.recommend.settings import RecommendSettings
from apps.sentiment.settings import SentimentSettings
from apps.support.settings import SupportSettings
from apps.tenants.limits import check_limit
from core.config import Settings


class AppSettings(Settings):
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Sites whose pages may call the API from a browser, besides the origins each tenant lists "
        "(PUT /v1/tenant/origins): the demo pages are same-origin, so none by default; ['*'] opens the API to every "
        "page. Env DOMAINLLM_CORS_ORIGINS (it was DOMAINLLM_SUPPORT_CORS_ORIGINS).",
    )
    cors_cache_s: float = Field(
        5.0,
        ge=0,
        le=300,
        description="How long a replica trusts its copy of the origins that tenants allow (a CORS preflight "
        "carries no key, so any tenant's origin passes it); 0: ask Redis on every cross-origin request.",
    )
    user_token_ttl_s: int = Field(
        900, ge=1, description="Lifetime of a user token (POST /v1/recommend/user-tokens) when the request names none."
    )
    user_token_max_ttl_s: int = Field(
        3600, ge=1, le=86400, description="The longest lifetime a user token may be minted with."
    )
    operator_key: SecretStr = Field(
        SecretStr("change-me"),
        description="Creates tenants (POST /v1/tenants, `domainllm tenants create`); off until set to a real secret.",
    )
    tenancy_namespace: str = Field(
        "tenancy", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Redis key prefix of tenants and keys."
    )
    rate_limit_per_key: str = Field(
        "1200/minute", description='Requests one key may make ("600/minute", "20/second"); empty: no limit.'
    )
    rate_limit_per_ip: str = Field(
        "600/minute", description="Requests one client address may make to keyed routes; empty: no limit."
    )
    expose_docs: bool = Field(True, description="Serve /docs, /redoc and /openapi.json; false on a public host.")
    expose_metrics: bool = Field(
        True, description="Serve /metrics; false when the internet can reach the port (scrape another way)."
    )
    expose_admin: bool = Field(
        True,
        description="Serve the admin and operator routes (KB, catalogue, keys, tenants, the agent inbox, adapters); "
        "false on the replicas the internet reaches, with an internal instance (its own port) that serves them.",
    )
    tenant_webhooks_allow_private: bool = Field(
        False,
        description="Let tenants point their webhooks at private or loopback addresses (tests, closed networks). "
        "Off: a tenant's webhook must resolve to public addresses only, checked when set and before each send.",
    )
    support: SupportSettings = Field(default_factory=lambda: SupportSettings())
    sentiment: SentimentSettings = Field(default_factory=lambda: SentimentSettings())
    recommend: RecommendSettings = Field(default_factory=lambda: RecommendSettings())
    ops: OpsSettings = Field(default_factory=lambda: OpsSettings())

    @field_validator("rate_limit_per_key", "rate_limit_per_ip")
    @classmethod
    def _rate(cls, value: str) -> str:
        return check_limit(value)

    @model_validator(mode="after")
    def _token_ttls(self) -> AppSettings:
        if self.user_token_ttl_s > self.user_token_max_ttl_s:
            raise ValueError(
                f"DOMAINLLM_USER_TOKEN_TTL_S ({self.user_token_ttl_s}) is above "
                f"DOMAINLLM_USER_TOKEN_MAX_TTL_S ({self.user_token_max_ttl_s})"
            )
        return self

    @classmethod
    def of(cls, core: Settings, **sections: object) -> AppSettings:
        """``core`` (a plain core ``Settings``, as the engine tests build) with the app sections."""
        if isinstance(core, AppSettings) and not sections:
            return core
        values = {name: getattr(core, name) for name in Settings.model_fields}
        if isinstance(core, AppSettings):
            values |= {
                name: getattr(core, name)
                for name in (
                    "cors_origins",
                    "cors_cache_s",
                    "user_token_ttl_s",
                    "user_token_max_ttl_s",
                    "operator_key",
                    "tenancy_namespace",
                    "rate_limit_per_key",
                    "rate_limit_per_ip",
                    "expose_docs",
                    "expose_metrics",
                    "expose_admin",
                    "tenant_webhooks_allow_private",
                    "support",
                    "sentiment",
                    "recommend",
                    "ops",
                )
            }
        return cls(**(values | sections))


def batch_settings(settings: AppSettings, deadline_s: float = 3600.0) -> AppSettings:
    """The settings of an engine that serves only its own batch work (a worker's tasks, a CLI
    command's training, evaluation or load): not refused by an interactive caller's queue bound, and
    each call given ``deadline_s`` instead of the API's per-request deadline."""
    return settings.model_copy(update={"engine_max_queue_s": 3600.0, "engine_deadline_s": deadline_s})


@lru_cache(maxsize=1)
def get_settings() -> AppSettings:
    return AppSettings()
