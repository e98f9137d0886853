"""Settings of the recommender (env prefix ``DOMAINLLM_RECOMMEND_``); the core's ``Settings`` holds
what every app shares (model, Redis, limits)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from apps.tenants.store import DEFAULT_TENANT, tenant_namespace
from core.config import PROJECT_ROOT
from domains.recommend.serving import RANKING_ADAPTER

EventType = Literal["view", "click", "cart", "purchase", "rating"]


class RecommendSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DOMAINLLM_RECOMMEND_", extra="ignore", env_file=".env")

    namespace: str = Field("recommend", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Redis key prefix.")
    adapter: str = Field(
        RANKING_ADAPTER,
        description="Adapter for the LLM interest score (recommend-next: trained on 'was this the next title?', "
        "which ranks better than the TALLRec 'will they like it?' adapter); the base model if absent.",
    )
    ranker_path: Path = PROJECT_ROOT / "data" / "recommend" / "ranker.json"
    use_llm: bool = True

    # business rules
    exclude_event_types: list[EventType] = Field(default_factory=lambda: list[EventType](["purchase"]))
    exclude_shown: bool = True
    shown_ttl_s: float = Field(1800.0, ge=0, description="An item shown this recently is not shown again.")
    mmr_lambda: float = Field(0.75, ge=0, le=1, description="1: pure relevance; 0: pure diversity.")

    # candidates and ranking
    history_len: int = Field(50, ge=1, le=1000, description="Recent events kept per user in Redis.")
    prompt_history: int = Field(
        10,
        ge=1,
        le=50,
        description="Titles in the TALLRec prompt for a model whose card does not say (the base model); an adapter uses its card's history length.",
    )
    candidates_per_source: int = Field(100, ge=10, le=5000)
    llm_candidates: int = Field(50, ge=0, le=1024, description="Shortlist size scored by the LLM.")
    llm_deadline_s: float = Field(
        5.0,
        gt=0,
        le=120,
        description="How long a recommendation waits for the LLM's scores; past it (or with the engine's queue "
        "full) it ranks without them at once and says so (`model: none`), rather than failing.",
    )
    covis_window: int = Field(10, ge=1, le=100, description="Earlier items of a user paired with each event.")
    popularity_half_life_s: float = Field(7 * 86400.0, gt=0)
    max_k: int = Field(100, ge=1, le=1000)

    # request limits
    max_events_per_request: int = Field(1000, ge=1)
    max_items_per_request: int = Field(1000, ge=1)
    max_text_chars: int = Field(5000, ge=100)
    user_ttl_s: int = Field(
        365 * 86400,
        ge=3600,
        description="A user's history and exclusions are forgotten this long after their last event.",
    )
    recommendation_ttl_s: int = Field(7 * 86400, ge=60, description="How long feedback can be attributed.")
    pseudonym_key: SecretStr = Field(
        SecretStr(""),
        description="Key of the HMAC that stands in for a user id that is personal data (an e-mail, phone, card...) "
        "in Redis (apps/recommend/users.py). Set a secret so that stored pseudonyms cannot be reversed by guessing; "
        "changing it forgets those users' histories.",
    )

    @model_validator(mode="after")
    def _check(self) -> RecommendSettings:
        if len(set(self.exclude_event_types)) != len(self.exclude_event_types):
            raise ValueError("DOMAINLLM_RECOMMEND_EXCLUDE_EVENT_TYPES lists a type twice")
        return self

    def for_tenant(self, tenant: str) -> RecommendSettings:
        """A tenant's recommender: its own Redis prefix (catalogue, events, users)."""
        if tenant == DEFAULT_TENANT:
            return self
        return self.model_copy(update={"namespace": tenant_namespace(self.namespace, tenant)})
