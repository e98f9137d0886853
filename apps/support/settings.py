"""Settings of the support bot (env prefix ``DOMAINLLM_SUPPORT_``); the core's ``Settings`` holds
what every app shares (model, Redis, limits)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.config import PROJECT_ROOT

PACKAGE_DIR = Path(__file__).resolve().parent
SAMPLES_DIR = PROJECT_ROOT / "data" / "samples" / "support"


class SupportSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DOMAINLLM_SUPPORT_", extra="ignore", env_file=".env")

    namespace: str = Field("support", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Redis key prefix.")
    adapter: str = Field("support", description="Adapter that writes answers; the base model if absent.")
    kb_dir: Path = PROJECT_ROOT / "data" / "runtime" / "support" / "kb"
    rules_path: Path = PACKAGE_DIR / "rules" / "default.yaml"
    public_keys: list[str] = Field(
        default_factory=lambda: ["pk_demo_store"],
        description="Keys a widget may present in X-Support-Key; empty: no key needed.",
    )
    session_ttl_s: int = Field(24 * 3600, ge=60)
    history_turns: int = Field(6, ge=0, le=50, description="Earlier turns kept for follow-up rewriting.")

    # retrieval and answering
    top_k: int = Field(4, ge=1, le=10, description="Passages given to the model.")
    faq_threshold: float = Field(0.80, ge=0, le=1, description="Cosine of question to a curated FAQ question.")
    min_retrieval: float = Field(0.45, ge=0, le=1, description="Below this best-passage cosine: hand off.")
    min_confidence: float = Field(0.54, ge=0, le=1, description="Below this answer confidence: hand off.")
    retrieval_weight: float = Field(
        0.8, ge=0, le=1, description="confidence = w * retrieval strength + (1 - w) * the answer's support."
    )
    max_new_tokens: int = Field(160, ge=16, le=1024)
    passage_tokens: int = Field(120, ge=16, le=512)
    intent_rule_confidence: float = Field(
        0.6, ge=0, le=1, description="An intent triggers a handoff rule only at this confidence or above."
    )
    max_parts: int = Field(3, ge=1, le=6, description="Parts of a multi-part question answered separately.")

    # request limits
    max_message_chars: int = Field(2000, ge=10)
    max_document_bytes: int = Field(5_000_000, ge=1024)

    @model_validator(mode="after")
    def _check(self) -> SupportSettings:
        if any(not k.strip() for k in self.public_keys):
            raise ValueError("DOMAINLLM_SUPPORT_PUBLIC_KEYS holds an empty key")
        return self

