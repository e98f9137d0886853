"""HTTP shapes of /v1/support (pydantic at the edge; the service works with plain data)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class SessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metadata: dict[str, str] | None = Field(
        None, max_length=20, description="Free-form context: page URL, locale, … (at most 20 keys)."
    )

    @field_validator("metadata")
    @classmethod
    def _short_values(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for k, v in (value or {}).items():
            if len(k) > 64 or len(v) > 500:
                raise ValueError("metadata keys are at most 64 characters and values at most 500")
        return value


class SessionCreated(BaseModel):
    session_id: str


class MessageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str = Field(..., description="The customer's message (PII is masked before it is stored).")
    stream: bool = Field(False, description="Answer as server-sent events: `token` events, then one `final`.")


class CitationOut(BaseModel):
    n: int
    doc_id: str
    title: str
    url: str | None


class MessageReply(BaseModel):
    message_id: str
    answer: str
    citations: list[CitationOut]
    confidence: float
    intent: str | None
    handoff: bool
    source: Literal["faq", "generated", "canned", "handoff"]
    handoff_id: str | None = None


class HandoffRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(None, max_length=500)


class HandoffOpened(BaseModel):
    handoff: bool
    handoff_id: str
    message: str


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    session_id: str = Field(..., min_length=1, max_length=100)
    message_id: str = Field(..., min_length=1, max_length=100)
    rating: Literal["up", "down"]
    comment: str | None = Field(None, max_length=2000)


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    doc_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    title: str = Field(..., min_length=1, max_length=300)
    text: str = Field(..., description="Markdown or plain text.")
    url: str | None = Field(None, max_length=2000)


class DocumentsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    documents: list[DocumentIn] = Field(..., min_length=1, max_length=500)


class DocumentsUpserted(BaseModel):
    results: list[dict[str, Any]]
    errors: list[dict[str, str]] = Field(default_factory=list, description="FAQ rows skipped, and why.")


class SearchHit(BaseModel):
    doc_id: str
    title: str
    url: str | None
    section: str | None
    text: str
    score: float
