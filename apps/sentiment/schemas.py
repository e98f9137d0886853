"""HTTP shapes of the sentiment routes (pydantic at the edge; the logic works on dataclasses)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from apps.http.requests import RequestModel


class NewsAccepted(BaseModel):
    accepted: int = Field(description="Items stored now (and queued for enrichment).")
    duplicates: int = Field(description="Items already stored (same URL, or same source + headline + time).")
    ids: list[str] = Field(description="The stable id of each item sent, in order.")


class SentimentClassifyRequest(RequestModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"texts": ["Globex shares plunge after fraud probe"], "explain": True}],
            # the route's rule, stated for clients: explain costs a pass per word, so at most 8 texts with it
            "if": {"properties": {"explain": {"const": True}}, "required": ["explain"]},
            "then": {"properties": {"texts": {"maxItems": 8}}},
        },
    )
    texts: list[Annotated[str, Field(json_schema_extra={"pattern": r"\S"})]] = Field(
        min_length=1, max_length=64, description="Headlines to label, 1-64, none blank."
    )
    explain: StrictBool = Field(
        default=False, description="Add per-word weights (occlusion): slower, one pass per word."
    )


class WordWeight(BaseModel):
    word: str
    weight: float = Field(description="How much removing the word lowers the label's probability.")


class SentimentResult(BaseModel):
    label: str
    scores: dict[str, float]
    model: str = Field(
        description="The model that labelled this text: the tenant's `tenant/sentiment@vN`, or the shared one."
    )
    entities: list[dict[str, str]]
    topics: list[dict[str, Any]]
    explanation: list[WordWeight] | None = None


class SentimentClassifyResponse(BaseModel):
    model: str = Field(
        description="The model that labelled the texts: the tenant's own version (`tenant/sentiment@vN`), the shared "
        '"sentiment" adapter, "base" while that is not there, or "mixed" when a traffic split sent texts to two versions '
        "(each result names its own)."
    )
    topic_method: str
    results: list[SentimentResult]


class TrendPoint(BaseModel):
    t: int = Field(description="Start of the step, epoch seconds (UTC).")
    n: int
    negative: int
    neutral: int
    positive: int
    negative_share: float | None


class TrendsResponse(BaseModel):
    scope: str
    start: int
    end: float
    step_s: int
    series: list[TrendPoint]
    alerts: list[dict[str, Any]]


class AlertsResponse(BaseModel):
    alerts: list[dict[str, Any]] = Field(
        description="Newest first: id, rule, scope, key, severity, fired_at, message, numbers, items, deliveries."
    )


class ResendResponse(BaseModel):
    queued: list[dict[str, str]]


class LabelFeedback(RequestModel):
    """An analyst's verdict on a label: the right label for a stored news item, or for a text that
    /v1/sentiment/classify labelled (then say which model answered, as its response named it)."""

    item_id: str | None = Field(None, min_length=1, max_length=64, description="A stored news item's id.")
    text: str | None = Field(None, min_length=1, max_length=2000, json_schema_extra={"pattern": r"\S"})
    model: str | None = Field(None, min_length=1, max_length=120, description="With text: the model that labelled it.")
    given: str | None = Field(None, max_length=32, description="With text: the label the model gave.")
    label: Literal["negative", "neutral", "positive"] = Field(description="The right label.")
    entity: str | None = Field(None, max_length=64)


class FeedbackRecorded(BaseModel):
    correct: bool = Field(description="Whether the model's label was the right one.")
    model: str = Field(description="The model version the verdict counts for (see the A/B report).")
