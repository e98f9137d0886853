"""HTTP shapes of /v1/recommend. Field checks that never depend on configuration live here (422);
limits and catalogue lookups are the service's (400/404/413)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, field_validator, model_validator
from pydantic.json_schema import JsonDict

from domains.recommend.records import ID_PATTERN

EventKind = Literal["view", "click", "cart", "purchase", "rating"]
# The records' id rule (domains.recommend.records.parse_id, a 400 naming the field), stated for clients.
ID_SCHEMA: JsonDict = {"pattern": ID_PATTERN.pattern}


class EventIn(BaseModel):
    # the service's rule (400 "a rating event needs a value"), stated for clients
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "if": {"properties": {"type": {"const": "rating"}}},
            "then": {"required": ["value"], "properties": {"value": {"type": "number", "minimum": 0, "maximum": 5}}},
        },
    )

    user_id: str = Field(min_length=1, max_length=128, json_schema_extra=ID_SCHEMA)
    item_id: str = Field(min_length=1, max_length=128, json_schema_extra=ID_SCHEMA)
    type: EventKind
    value: StrictFloat | None = Field(None, description="The rating (0-5) for a rating event; ignored otherwise.")
    ts: StrictFloat | str | None = Field(None, description="Epoch seconds or ISO 8601; default: now.")


class EventsRequest(BaseModel):
    """One event object, or ``{"events": [...]}`` for a batch (stored all or nothing)."""

    events: list[EventIn] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _single(cls, data: Any) -> Any:
        if isinstance(data, dict) and "events" not in data:
            return {"events": [data]}
        return data


class EventsAccepted(BaseModel):
    accepted: int


class ItemIn(BaseModel):
    """An item; fields beyond these are kept as extra attributes."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, max_length=128, json_schema_extra=ID_SCHEMA)
    title: str = Field(min_length=1, max_length=500)
    description: str = ""
    category: str = ""
    tags: list[str] = Field(default_factory=list)
    price: StrictFloat | None = Field(None, ge=0)
    in_stock: StrictBool = True


class ItemsRequest(BaseModel):
    items: list[ItemIn] = Field(min_length=1)


class ItemsUpserted(BaseModel):
    added: int
    updated: int
    rejected: int = 0
    errors: list[dict[str, str]] = Field(default_factory=list, description="Per bad row: where and why.")


class ItemsDeleted(BaseModel):
    deleted: list[str]
    unknown: list[str]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recommendation_id: str = Field(min_length=1, max_length=64)
    item_id: str = Field(min_length=1, max_length=128)
    type: Literal["click", "cart", "purchase"]
    ts: StrictFloat | str | None = None


class ImpressionsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recommendation_id: str = Field(min_length=1, max_length=64)
    item_ids: list[str] | None = Field(
        None, max_length=200, description="The items the page showed; all of the recommendation's when absent."
    )


class ImpressionsResponse(BaseModel):
    recorded: int = Field(description="Impressions counted by this call.")
    already: int = Field(description="Items whose impression was counted before.")
    user_id: str


class FeedbackResponse(BaseModel):
    attributed: bool = Field(description="False when this feedback was already counted.")
    source: str
    user_id: str


class RecommendedItem(BaseModel):
    item_id: str
    title: str
    category: str
    price: float | None
    score: float
    reason: str
    source: Literal["context", "covisit", "similar", "popular"]


class RecommendResponse(BaseModel):
    recommendation_id: str
    user_id: str
    items: list[RecommendedItem]
    cold_start: bool
    model: str = Field(description='The model that gave the LLM score: "recommend" (adapter), "base", or "none".')
    ranker: Literal["trained", "fallback"]


class SourceStats(BaseModel):
    impressions: int
    clicks: int
    carts: int
    purchases: int
    ctr: float
    conversion: float


class StatsResponse(BaseModel):
    requests: int
    cold_start_requests: int
    sources: dict[str, SourceStats]
    catalogue_items: int


class UserTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(pattern=ID_PATTERN.pattern, description="The id the storefront reads recommendations for.")
    ttl_s: int | None = Field(
        None,
        ge=1,
        le=86400,
        description="Seconds the token is good for, cut to DOMAINLLM_USER_TOKEN_MAX_TTL_S (3600 by default; "
        "`expires_at` says what was granted); default DOMAINLLM_USER_TOKEN_TTL_S (900).",
    )

    @field_validator("ttl_s", mode="before")
    @classmethod
    def _a_number(cls, value: Any) -> Any:
        # pydantic's lax mode reads true as 1 and "60" as 60; JSON Schema says a number (60.0 is one)
        if isinstance(value, bool | str):
            raise ValueError("must be a JSON number")
        return value


class UserTokenResponse(BaseModel):
    token: str = Field(description="Send it as `X-User-Token`, with a widget key, to `GET /v1/recommend/{user_id}`.")
    expires_at: int = Field(description="Epoch seconds.")
