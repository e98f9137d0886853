"""HTTP shapes of /v1/support (pydantic at the edge; the service works with plain data)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator
from pydantic.json_schema import JsonDict

from apps.http.requests import RequestModel
from apps.http.streaming import sse_doc
from apps.support.handoffs import _EMAIL_RE, MAX_AGENT_CHARS, MAX_COMMENT_CHARS, MAX_EMAIL_CHARS, check_email
from core.errors import InvalidRequestError

EMAIL_PATTERN = _EMAIL_RE.pattern  # what check_email accepts (after trimming spaces)
# A stream position (Last-Event-ID, ``after``) as check_cursor accepts it: a Redis stream id.
CURSOR_SCHEMA: JsonDict = {"pattern": r"^[0-9]{1,20}(-[0-9]{1,20})?$", "examples": ["1712345678901-0"]}
# what an event-stream route answers (documented next to FastAPI's default JSON)
SSE_RESPONSE: dict[str, Any] = sse_doc("Server-sent events, as the description lists.")
# the Last-Event-ID header may be sent empty (no event seen yet): the same id, or nothing
HEADER_CURSOR_SCHEMA: JsonDict = {"pattern": r"^([0-9]{1,20}(-[0-9]{1,20})?)?$", "examples": ["1712345678901-0"]}


class SessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metadata: dict[str, str] | None = Field(
        None,
        max_length=20,
        description="Free-form context: page URL, locale, … (at most 20 keys).",
        # what _short_values checks, stated for clients
        json_schema_extra={
            "propertyNames": {"maxLength": 64},
            "additionalProperties": {"type": "string", "maxLength": 500},
        },
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
    stream: StrictBool = Field(False, description="Answer as server-sent events: `token` events, then one `final`.")


class CitationOut(BaseModel):
    n: int
    doc_id: str
    title: str
    url: str | None


class MessageReply(BaseModel):
    message_id: str
    model: str = Field(
        "", description="The model that screened the message: the tenant's `tenant/support@vN`, or the shared one."
    )
    answer: str
    citations: list[CitationOut]
    confidence: float
    intent: str | None
    handoff: bool
    source: Literal["extracted", "canned", "handoff"]
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
    doc_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
    title: str = Field(..., min_length=1, max_length=300)
    # Blank text is refused by the document itself (400, "has no text"); the schema states it.
    text: str = Field(..., description="Markdown or plain text, not blank.", json_schema_extra={"pattern": r"\S"})
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


# ---- the human side of a handoff ------------------------------------------------------------------


class MessageHeld(BaseModel):
    """202: a person holds the conversation; the message went to them and the bot stays silent."""

    held: Literal[True] = True
    message_id: str
    handoff_id: str


class AgentRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")
    agent: str = Field(
        ...,
        min_length=1,
        max_length=MAX_AGENT_CHARS,
        description="The agent's display name, shown to the customer; only the agent who took a handoff may "
        "reply to or close it.",
    )


class AgentReplyRequest(AgentRequest):
    text: str = Field(..., min_length=1, description="The reply the customer sees (PII is masked before storage).")


class AgentMessage(BaseModel):
    id: str
    role: Literal["agent"]
    agent: str
    text: str
    created_at: float


class HandoffSummary(BaseModel):
    id: str
    tenant: str
    session_id: str
    status: Literal["open", "taken", "closed"]
    reason: str
    question: str = Field(description="The customer's question the handoff is about (masked).")
    created_at: float
    taken_by: str | None
    taken_at: float | None
    closed_by: str | None
    closed_at: float | None
    no_agent_at: float | None = Field(description="When the customer was told nobody was free, if they were.")
    has_contact: bool = Field(description="The customer left an e-mail address.")
    csat: int | None = Field(description="The customer's rating, 1-5, once given.")


class HandoffListItem(HandoffSummary):
    messages: int
    last_message: dict[str, Any] | None


class HandoffList(BaseModel):
    handoffs: list[HandoffListItem]
    cursor: str = Field(description="Follow GET /v1/support/inbox/events?after=cursor to miss no change.")


class HandoffRecord(HandoffSummary):
    contact_email: str | None = Field(description="The address the customer left to be answered by e-mail.")
    csat_comment: str | None
    passages: list[dict[str, Any]] = Field(description="What the bot retrieved for its last turn.")
    conversation: list[dict[str, Any]] = Field(
        description="The transcript when the handoff opened, then the customer's and agents' messages."
    )


class CsatRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")
    rating: int = Field(..., ge=1, le=5, description="1 (very unhappy) to 5 (very happy).")
    comment: str | None = Field(None, max_length=MAX_COMMENT_CHARS)

    @field_validator("rating", mode="before")
    @classmethod
    def _not_a_bool(cls, value: Any) -> Any:
        # a whole number, 5.0 included (JSON Schema's integer), but not true or "5" (pydantic's lax 1 and 5)
        if isinstance(value, bool | str):
            raise ValueError("rating must be a whole number from 1 to 5")
        return value


class CsatRecorded(BaseModel):
    handoff_id: str
    rating: int


class ContactRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(
        ...,
        min_length=3,
        max_length=MAX_EMAIL_CHARS,
        description="Where the team will answer.",
        json_schema_extra={"pattern": EMAIL_PATTERN},
    )

    @field_validator("email")
    @classmethod
    def _an_address(cls, value: str) -> str:
        try:
            return check_email(value)
        except InvalidRequestError as exc:
            raise ValueError(exc.message) from None


class ContactSaved(BaseModel):
    handoff_id: str
    message: str
