"""Settings of the support bot (env prefix ``DOMAINLLM_SUPPORT_``); the core's ``Settings`` holds
what every app shares (model, Redis, limits)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from apps.support.extractive import DEFAULT_SELECTOR
from apps.tenants.store import DEFAULT_TENANT, tenant_namespace
from core.config import PLACEHOLDER_SECRETS, PROJECT_ROOT

PACKAGE_DIR = Path(__file__).resolve().parent
SAMPLES_DIR = PROJECT_ROOT / "data" / "samples" / "support"


class SupportSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DOMAINLLM_SUPPORT_", extra="ignore", env_file=".env")

    namespace: str = Field("support", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Redis key prefix.")
    adapter: str = Field("support", description="Adapter whose intent head screens messages; the base model if absent.")
    kb_dir: Path = PROJECT_ROOT / "data" / "runtime" / "support" / "kb"
    rules_path: Path = PACKAGE_DIR / "rules" / "default.yaml"
    public_keys: list[str] = Field(
        default_factory=lambda: ["pk_demo_store"],
        description="The default tenant's widget keys from settings (the demo pages use the first); empty: none.",
    )
    session_ttl_s: int = Field(24 * 3600, ge=60)
    history_turns: int = Field(6, ge=0, le=50, description="Earlier turns kept for follow-up rewriting.")

    # answering: the extractive selector (apps/support/extractive.py) holds its own thresholds
    selector_path: Path = Field(
        DEFAULT_SELECTOR,
        description="The fitted sentence selector (JSON): which KB sentences answer a question, and the "
        "confidence below which the bot hands off. Refit for your own KB with bench/probes/support_extractive.py.",
    )
    answer_contacts: list[str] = Field(
        default_factory=list,
        description="The only hosts (and their subdomains), e-mail addresses and phone numbers an answer may "
        "contain; a reply with any other hands off. Empty: any the cited KB text holds (the fact check).",
    )
    intent_rule_confidence: float = Field(
        0.6, ge=0, le=1, description="An intent triggers a handoff rule only at this confidence or above."
    )
    max_parts: int = Field(3, ge=1, le=6, description="Parts of a multi-part question answered separately.")

    # request limits
    max_message_chars: int = Field(2000, ge=10)
    max_document_bytes: int = Field(5_000_000, ge=1024)

    # the human side of a handoff: the agent inbox, the customer's event stream, the team's webhook
    handoff_timeout_s: int = Field(
        120, ge=5, le=7 * 86400, description="No agent took a handoff this long after it opened: ask for an e-mail."
    )
    handoff_timeout_message: str = Field(
        "Everyone on our team is busy right now. Leave your e-mail address and we'll answer you there.",
        min_length=1,
        max_length=500,
        description="What the customer is told when no agent took the handoff in time.",
    )
    handoff_retention_s: int = Field(30 * 86400, ge=3600, description="How long a closed handoff is kept.")
    events_poll_s: float = Field(
        0.5, gt=0, le=5, description="How often an open event stream (inbox, customer) looks for new events."
    )
    events_max_stream_s: int = Field(
        1800, ge=10, description="An event stream ends after this long; clients reconnect with Last-Event-ID."
    )
    analytics_retention_days: int = Field(120, ge=7, le=800, description="Daily analytics kept this many days.")
    webhook_url: str | None = Field(
        None, description="POSTed a signed JSON event on handoff opened/taken/closed and customer messages."
    )
    webhook_secret: SecretStr = SecretStr("change-me")
    webhook_timeout_s: float = Field(10.0, gt=0, le=120)
    webhook_max_retries: int = Field(8, ge=0, le=50)
    webhook_backoff_s: int = Field(2, ge=1, description="First retry delay; doubles each retry.")
    webhook_backoff_max_s: int = Field(
        300, ge=1, description="Below the Celery visibility timeout (600 s), so a retry never runs twice."
    )

    # the knowledge base: fetching pages (apps/support/fetch.py), chunking, folder sync over the API
    fetch_allow_hosts: list[str] = Field(
        default_factory=list,
        description='Hosts URL ingest may fetch from: "help.example.com", "*.example.com", "*" (any public '
        "host). Empty: URL ingest is off.",
    )
    fetch_allow_private: bool = Field(
        False, description="Allow loopback, private and other non-public addresses (a local docs server)."
    )
    fetch_max_bytes: int = Field(5_000_000, ge=1024, description="A fetched page or sitemap over this is refused.")
    fetch_timeout_s: float = Field(15.0, gt=0, le=300, description="Deadline for one fetch, redirects included.")
    fetch_max_redirects: int = Field(3, ge=0, le=10)
    fetch_max_urls: int = Field(200, ge=1, le=10_000, description="Pages taken from one sitemap, at most.")
    chunk_tokens: int = Field(
        254,
        ge=32,
        le=512,
        description="Word pieces per chunk, title and heading included; 254 fills MiniLM's 256 with [CLS] and [SEP].",
    )
    chunk_overlap_tokens: int = Field(40, ge=0, le=255, description="Word pieces a chunk repeats from the last.")
    sync_roots: list[Path] = Field(
        default_factory=list,
        description="Folders POST /v1/support/kb/sync may read (it and below). Empty: that route is off.",
    )

    @model_validator(mode="after")
    def _check(self) -> SupportSettings:
        if any(not k.strip() for k in self.public_keys):
            raise ValueError("DOMAINLLM_SUPPORT_PUBLIC_KEYS holds an empty key")
        if self.webhook_url:
            if not self.webhook_url.startswith(("https://", "http://")):
                raise ValueError("DOMAINLLM_SUPPORT_WEBHOOK_URL must be an http(s) URL")
            if self.webhook_secret.get_secret_value() in PLACEHOLDER_SECRETS:
                raise ValueError("DOMAINLLM_SUPPORT_WEBHOOK_SECRET must be set to a real secret to sign webhooks")
        return self

    @model_validator(mode="after")
    def _check_kb(self) -> SupportSettings:
        if self.chunk_overlap_tokens >= self.chunk_tokens // 2:
            raise ValueError("DOMAINLLM_SUPPORT_CHUNK_OVERLAP_TOKENS must be under half of CHUNK_TOKENS")
        return self

    def for_tenant(self, tenant: str) -> SupportSettings:
        """A tenant's support bot: its own Redis prefix and KB folder. What lives in these settings and
        is the operator's (the team webhook, the server folders sync may read, the demo page's widget
        keys) stays with the default tenant."""
        if tenant == DEFAULT_TENANT:
            return self
        return self.model_copy(
            update={
                "namespace": tenant_namespace(self.namespace, tenant),
                "kb_dir": self.kb_dir.parent / "tenants" / tenant / "kb",
                "public_keys": [],
                "webhook_url": None,
                "sync_roots": [],
            }
        )
