"""Handoffs to a person as a workflow in Redis, per tenant: what the agent inbox and the customer's
widget share.

    open ──take(agent)──▶ taken ──close(agent)──▶ closed          (an open one may be closed too)

Keys (``{t}`` is ``{ns}:tenant:{tenant}``, ``{ns}`` the support namespace):

    {t}:handoff:{hid}            hash    id, tenant, session_id, status, reason, question, created_at,
                                         taken_by/_at, closed_by/_at, no_agent_at, contact_email/_at,
                                         csat, csat_comment, csat_at, passages (JSON)
    {t}:handoff:{hid}:messages   list    the conversation (JSON): the transcript when it opened, then
                                         the customer's and the agent's messages and system notes
    {t}:handoffs:{status}        zset    ids by the time they entered that status
    {t}:inbox                    stream  the agents' events (capped): what the inbox page follows
    {ns}:session:{sid}:events    stream  the customer's events (capped, expires with the session)
    {ns}:session:{sid}:passages  string  the passages retrieved for the session's last bot turn (JSON)
    {ns}:session:{sid}           hash    the session (``conversations.py``) plus ``handoff`` (the active
                                         id) and ``csat_pending`` (a closed id awaiting a rating)

Each transition is one Lua script (``handoff_scripts.py``) that checks the state, writes the change
and appends its events to the streams, so two agents taking at once get one winner and no event is
lost or doubled. The streams make the live parts work across API replicas: any replica's event
stream reads them. Open and taken handoffs never expire (they are the team's queue); a closed one is
kept ``retention_s``. Text is PII-masked before it is stored, except the e-mail address a customer
leaves in order to be contacted (``contact_email``), which exists to be used; it is never logged.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apps.http.pii import mask_pii
from apps.support.conversations import ConversationStore, UnknownSessionError
from apps.support.handoff_scripts import CLOSE, CONTACT, CSAT, CUSTOMER, NO_AGENT, OPEN, REPLY, TAKE
from core.errors import ConflictError, InputTooLargeError, InvalidRequestError, NotFoundError

DEFAULT_TENANT = "default"
STATUSES = ("open", "taken", "closed")
ACTIVE = ("open", "taken")
MAX_AGENT_CHARS = 64
MAX_REASON_CHARS = 500
MAX_COMMENT_CHARS = 1000
MAX_EMAIL_CHARS = 254
PASSAGE_CHARS = 1500  # of each remembered passage: enough for an agent to read, not a whole article

_ID_RE = re.compile(r"^[0-9a-f]{16}$")
_TENANT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_CURSOR_RE = re.compile(r"^\d{1,20}(-\d{1,20})?$")  # "0" or a milliseconds part alone is a stream id too
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# An address a mail server would accept, in practice: dot-atom local part, a dotted host, a letter TLD.
_EMAIL_RE = re.compile(
    r"^(?=.{1,64}@)[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)


class UnknownHandoffError(NotFoundError):
    error_type = "unknown_handoff"

    def __init__(self, handoff_id: str) -> None:
        super().__init__(f"unknown or expired handoff {handoff_id!r}", handoff_id=handoff_id)
        self.handoff_id = handoff_id


class HandoffConflictError(ConflictError):
    """The handoff is not in a state that allows this (taken by someone else, closed, not taken yet)."""

    error_type = "handoff_conflict"


@dataclass(frozen=True)
class StreamEvent:
    """One entry of an event stream; ``id`` is the Redis stream id, sent as the SSE event id."""

    id: str
    type: str
    data: dict[str, Any]

    def sse(self) -> dict[str, str]:
        return {"id": self.id, "event": self.type, "data": json.dumps(self.data, ensure_ascii=False)}


# ---- validation (before anything is written) -----------------------------------------------------


def check_agent(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequestError("agent must be a non-empty display name")
    name = name.strip()
    if len(name) > MAX_AGENT_CHARS or _CONTROL_RE.search(name):
        raise InvalidRequestError(f"agent must be at most {MAX_AGENT_CHARS} printable characters")
    return name


def check_email(address: Any) -> str:
    if not isinstance(address, str) or not address.strip():
        raise InvalidRequestError("email must be a non-empty e-mail address")
    address = address.strip()
    if len(address) > MAX_EMAIL_CHARS or not _EMAIL_RE.match(address):
        raise InvalidRequestError("email is not a valid e-mail address (like name@example.com)")
    return address


def check_rating(rating: Any) -> int:
    if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
        raise InvalidRequestError(f"rating must be a whole number from 1 to 5, got {rating!r}")
    return rating


def check_cursor(cursor: Any) -> str:
    """A stream position a client sends back (Last-Event-ID, ``after``): a Redis stream id."""
    if not isinstance(cursor, str) or not _CURSOR_RE.match(cursor):
        raise InvalidRequestError(f"the event id must look like 1712345678901-0, got {cursor!r}")
    return cursor if "-" in cursor else f"{cursor}-0"


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decoded(mapping: dict[Any, Any]) -> dict[str, str]:
    return {_str(k): _str(v) for k, v in mapping.items()}


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _float(raw: dict[str, str], name: str) -> float | None:
    return float(raw[name]) if raw.get(name) else None


class HandoffDesk:
    """The handoffs of one tenant, on the conversation store's Redis and namespace.

    Every method validates its input whole before it writes, so a refused request changes nothing.
    ``clock`` is for tests.
    """

    def __init__(
        self,
        sessions: ConversationStore,
        tenant: str = DEFAULT_TENANT,
        *,
        retention_s: int = 30 * 86400,
        transcript_limit: int = 50,
        max_text_chars: int = 4000,
        inbox_maxlen: int = 1000,
        session_maxlen: int = 200,
        max_messages: int = 500,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not _TENANT_RE.match(tenant):
            raise ValueError(f"tenant must be 1-64 letters, digits or _.-, got {tenant!r}")
        for name, value in (
            ("retention_s", retention_s),
            ("transcript_limit", transcript_limit),
            ("max_text_chars", max_text_chars),
            ("inbox_maxlen", inbox_maxlen),
            ("session_maxlen", session_maxlen),
            ("max_messages", max_messages),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.sessions = sessions
        self.r: Any = sessions.r
        self.tenant = tenant
        self.retention_s = int(retention_s)
        self.transcript_limit = int(transcript_limit)
        self.max_text_chars = int(max_text_chars)
        self.inbox_maxlen = int(inbox_maxlen)
        self.session_maxlen = int(session_maxlen)
        self.max_messages = int(max_messages)  # of one handoff's conversation: the newest are kept
        self.clock = clock
        register = self.r.register_script
        self._open, self._take, self._reply, self._close = map(register, (OPEN, TAKE, REPLY, CLOSE))
        self._customer, self._csat, self._contact, self._no_agent = map(register, (CUSTOMER, CSAT, CONTACT, NO_AGENT))

    # ---- keys ------------------------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        return ":".join((self.sessions.ns, "tenant", self.tenant, *parts))

    def _handoff_keys(self, hid: str) -> tuple[str, str]:
        base = self.key("handoff", hid)
        return base, f"{base}:messages"

    def session_events_key(self, session_id: str) -> str:
        return f"{self.sessions.session_key(session_id)}:events"

    def _passages_key(self, session_id: str) -> str:
        return f"{self.sessions.session_key(session_id)}:passages"

    def _now(self) -> float:
        return round(self.clock(), 3)

    def _stream_args(self) -> list[int]:
        return [self.inbox_maxlen, self.session_maxlen, self.sessions.session_ttl_s]

    # ---- validation ------------------------------------------------------------------------------

    def check_id(self, handoff_id: Any) -> str:
        if not isinstance(handoff_id, str) or not _ID_RE.match(handoff_id):
            raise UnknownHandoffError(str(handoff_id)[:100])  # a malformed id names no handoff: 404
        return handoff_id

    def check_text(self, text: Any, what: str, limit: int | None = None) -> str:
        limit = limit or self.max_text_chars
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequestError(f"{what} must be a non-empty string")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequestError(f"{what} is not valid Unicode text (lone surrogates)") from None
        if len(text) > limit:
            raise InputTooLargeError(
                f"{what} has {len(text)} characters; the limit is {limit}", limit=limit, actual=len(text)
            )
        return text.strip()

    # ---- the bot's side: passages and opening ------------------------------------------------------

    def remember_passages(self, session_id: str, passages: list[dict[str, Any]]) -> None:
        """Keep the passages retrieved for the session's latest turn, for a handoff that follows."""
        trimmed = [{**p, "text": str(p.get("text", ""))[:PASSAGE_CHARS]} for p in passages]
        self.r.set(self._passages_key(session_id), _json(trimmed), ex=self.sessions.session_ttl_s)

    def last_passages(self, session_id: str) -> list[dict[str, Any]]:
        raw = self.r.get(self._passages_key(session_id))
        passages: list[dict[str, Any]] = json.loads(raw) if raw else []
        return passages

    def open(self, session_id: str, *, reason: str, question: str = "") -> tuple[dict[str, Any], bool]:
        """Open a handoff for the session, with its transcript and last passages copied in: (record,
        created). A session has at most one active handoff: asking again returns it (created False)."""
        sid = self.sessions.check_session_id(session_id)
        reason = mask_pii(self.check_text(reason, "handoff reason", MAX_REASON_CHARS))
        transcript = self.sessions.history(sid, self.transcript_limit)  # raises UnknownSessionError
        if not question:
            question = next((m["text"] for m in reversed(transcript) if m.get("role") == "user"), "")
        hid, now = uuid.uuid4().hex[:16], self._now()
        summary = {
            "id": hid,
            "tenant": self.tenant,
            "session_id": sid,
            "status": "open",
            "reason": reason,
            "question": mask_pii(question)[:MAX_REASON_CHARS],
            "created_at": now,
        }
        fields = [str(x) for kv in summary.items() for x in kv]
        fields += ["passages", _json(self.last_passages(sid))]
        handoff, messages = self._handoff_keys(hid)
        status, current = self._open(
            keys=[
                self.sessions.session_key(sid),
                handoff,
                messages,
                self.key("handoffs", "open"),
                self.key("inbox"),
                self.session_events_key(sid),
            ],
            args=[
                hid,
                now,
                _json({"handoff": summary}),
                _json({"handoff_id": hid, "status": "open", "created_at": now}),
                *self._stream_args(),
                len(fields),
                *fields,
                *(_json(m) for m in transcript),
            ],
        )
        if int(status) == -2:
            raise UnknownSessionError(sid)
        record = self.get(_str(current))
        if record is None:  # the session names a handoff that no longer exists: only by hand-editing
            raise UnknownHandoffError(_str(current))
        return record, int(status) == 1

    # ---- reading ---------------------------------------------------------------------------------

    @staticmethod
    def _summary(raw: dict[str, str]) -> dict[str, Any]:
        return {
            "id": raw["id"],
            "tenant": raw.get("tenant", DEFAULT_TENANT),
            "session_id": raw["session_id"],
            "status": raw["status"],
            "reason": raw.get("reason", ""),
            "question": raw.get("question", ""),
            "created_at": float(raw["created_at"]),
            "taken_by": raw.get("taken_by") or None,
            "taken_at": _float(raw, "taken_at"),
            "closed_by": raw.get("closed_by") or None,
            "closed_at": _float(raw, "closed_at"),
            "no_agent_at": _float(raw, "no_agent_at"),
            "has_contact": bool(raw.get("contact_email")),
            "csat": int(raw["csat"]) if raw.get("csat") else None,
        }

    def get(self, handoff_id: str) -> dict[str, Any] | None:
        """The whole handoff: its state, reason, question, conversation, passages, contact and rating."""
        if not isinstance(handoff_id, str) or not _ID_RE.match(handoff_id):
            return None
        handoff, messages = self._handoff_keys(handoff_id)
        pipe = self.r.pipeline(transaction=True)
        pipe.hgetall(handoff)
        pipe.lrange(messages, 0, -1)
        raw, rows = pipe.execute()
        if not raw:
            return None
        raw = _decoded(raw)
        return {
            **self._summary(raw),
            "contact_email": raw.get("contact_email") or None,
            "csat_comment": raw.get("csat_comment") or None,
            "passages": json.loads(raw.get("passages") or "[]"),
            "conversation": [json.loads(r) for r in rows],
        }

    def require(self, handoff_id: str) -> dict[str, Any]:
        record = self.get(self.check_id(handoff_id))
        if record is None:
            raise UnknownHandoffError(handoff_id)
        return record

    def list_handoffs(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Handoffs newest first, without their conversations: each with its message count and the
        last message, what an inbox list shows."""
        if status is not None and status not in STATUSES:
            raise InvalidRequestError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidRequestError(f"limit must be an integer in [1, 1000], got {limit!r}")
        ids: list[tuple[str, str]] = []
        for s in (status,) if status else STATUSES:
            ids += [(s, _str(i)) for i in self.r.zrevrange(self.key("handoffs", s), 0, limit - 1)]
        pipe = self.r.pipeline(transaction=False)
        for _, hid in ids:
            handoff, messages = self._handoff_keys(hid)
            pipe.hgetall(handoff)
            pipe.llen(messages)
            pipe.lindex(messages, -1)
        replies = pipe.execute()
        records, stale = [], []
        for n, (s, hid) in enumerate(ids):
            raw, count, last = replies[3 * n : 3 * n + 3]
            if not raw:
                stale.append((s, hid))  # a closed handoff whose retention ran out: drop its index entry
                continue
            record = self._summary(_decoded(raw))
            record["messages"] = int(count)
            record["last_message"] = json.loads(last) if last else None
            records.append(record)
        for s, hid in stale:
            self.r.zrem(self.key("handoffs", s), hid)
        records.sort(key=lambda h: h["created_at"], reverse=True)
        return records[:limit]

    def counts(self) -> dict[str, int]:
        pipe = self.r.pipeline(transaction=False)
        for s in ACTIVE:
            pipe.zcard(self.key("handoffs", s))
        return dict(zip(ACTIVE, (int(n) for n in pipe.execute()), strict=True))

    # ---- the agent's side ------------------------------------------------------------------------

    @staticmethod
    def _conflict(hid: str, code: int, by: str, taken_by_other: str) -> HandoffConflictError:
        if code == -3:
            return HandoffConflictError(f"handoff {hid} is closed", handoff_id=hid)
        if code == -5:
            return HandoffConflictError(f"handoff {hid} is not taken yet: take it before replying", handoff_id=hid)
        return HandoffConflictError(f"handoff {hid} is taken by {by!r}: {taken_by_other}", handoff_id=hid, taken_by=by)

    def _note(self, text: str, now: float) -> str:
        return _json({"id": uuid.uuid4().hex[:16], "role": "system", "text": mask_pii(text), "created_at": now})

    def take(self, handoff_id: str, agent: str) -> tuple[dict[str, Any], bool]:
        """The agent takes the handoff, and the customer is told they joined: (record, changed).
        Taking one's own again changes nothing; one taken by another agent, or closed, is a 409."""
        hid, agent = self.check_id(handoff_id), check_agent(agent)
        record = self.require(hid)
        now = self._now()
        handoff, messages = self._handoff_keys(hid)
        event = {"handoff_id": hid, "session_id": record["session_id"], "agent": agent, "at": now}
        code, by = self._take(
            keys=[
                handoff,
                self.key("handoffs", "open"),
                self.key("handoffs", "taken"),
                messages,
                self.key("inbox"),
                self.session_events_key(record["session_id"]),
            ],
            args=[
                hid,
                agent,
                now,
                self._note(f"{agent} joined the conversation", now),
                _json(event),
                _json(event),
                *self._stream_args(),
            ],
        )
        if int(code) == -1:
            raise UnknownHandoffError(hid)
        if int(code) < 0:
            raise self._conflict(hid, int(code), _str(by), "one agent holds a conversation")
        return self.require(hid), int(code) == 1

    def reply(self, handoff_id: str, agent: str, text: str) -> dict[str, Any]:
        """The taker's message to the customer (PII-masked, like every stored text)."""
        hid, agent = self.check_id(handoff_id), check_agent(agent)
        text = self.check_text(text, "reply text")
        record = self.require(hid)
        now = self._now()
        message = {
            "id": uuid.uuid4().hex[:16],
            "role": "agent",
            "agent": agent,
            "text": mask_pii(text),
            "created_at": now,
        }
        handoff, messages = self._handoff_keys(hid)
        code, by = self._reply(
            keys=[handoff, messages, self.key("inbox"), self.session_events_key(record["session_id"])],
            args=[
                agent,
                _json(message),
                _json({"handoff_id": hid, "session_id": record["session_id"], "message": message}),
                _json({"handoff_id": hid, "message": message}),
                *self._stream_args(),
                self.max_messages,
            ],
        )
        if int(code) == -1:
            raise UnknownHandoffError(hid)
        if int(code) < 0:
            raise self._conflict(hid, int(code), _str(by), "only they can reply")
        return message

    def close(self, handoff_id: str, agent: str) -> tuple[dict[str, Any], bool]:
        """Close the handoff; when an agent had taken it, the customer is asked for a rating:
        (record, changed). Only the taker may close a taken handoff; a closed one stays as it is."""
        hid, agent = self.check_id(handoff_id), check_agent(agent)
        record = self.require(hid)
        sid = record["session_id"]
        now = self._now()
        handoff, messages = self._handoff_keys(hid)
        closed = {"handoff_id": hid, "at": now}
        code, by = self._close(
            keys=[
                handoff,
                self.key("handoffs", "open"),
                self.key("handoffs", "taken"),
                self.key("handoffs", "closed"),
                messages,
                self.sessions.session_key(sid),
                self.key("inbox"),
                self.session_events_key(sid),
            ],
            args=[
                hid,
                agent,
                now,
                self.retention_s,
                self._note(f"{agent} closed the conversation", now),
                _json({**closed, "session_id": sid, "agent": agent}),
                _json({**closed, "csat": True}),
                _json({**closed, "csat": False}),
                *self._stream_args(),
            ],
        )
        if int(code) == -1:
            raise UnknownHandoffError(hid)
        if int(code) < 0:
            raise self._conflict(hid, int(code), _str(by), "only they can close it")
        return self.require(hid), int(code) == 1

    def notify_no_agent(self, handoff_id: str, timeout_s: float, message: str) -> bool:
        """Tell the customer nobody took the handoff in time and ask for an e-mail address: once per
        handoff, whichever replica or stream notices first. True when this call told them."""
        hid = self.check_id(handoff_id)
        handoff, _ = self._handoff_keys(hid)
        raw = self.r.hget(handoff, "session_id")
        if raw is None:
            return False
        sid, now = _str(raw), self._now()
        told = self._no_agent(
            keys=[handoff, self.key("inbox"), self.session_events_key(sid)],
            args=[
                now,
                timeout_s,
                _json({"handoff_id": hid, "session_id": sid, "at": now}),
                _json({"handoff_id": hid, "at": now, "message": message, "ask_email": True}),
                *self._stream_args(),
            ],
        )
        return int(told) == 1

    # ---- the customer's side ---------------------------------------------------------------------

    def active_id(self, session_id: str) -> str | None:
        """The session's open or taken handoff, if any (404 for an unknown session)."""
        hid = self._session_field(session_id, "handoff")
        return _str(hid) if hid else None

    def _session_field(self, session_id: str, name: str) -> Any:
        """One field of the session's hash (None if unset); UnknownSessionError if the session is gone."""
        key = self.sessions.session_key(session_id)
        pipe = self.r.pipeline(transaction=False)
        pipe.exists(key)
        pipe.hget(key, name)
        exists, value = pipe.execute()
        if not exists:
            raise UnknownSessionError(session_id)
        return value

    def customer_message(self, session_id: str, text: str) -> dict[str, Any] | None:
        """While the session's handoff is active, the customer's message goes to the agent (and the
        session's history) and the bot stays silent: the stored message. None: no active handoff."""
        sid = self.sessions.check_session_id(session_id)
        text = self.check_text(text, "message")
        hid = self.active_id(sid)
        if hid is None:
            return None
        now = self._now()
        message = {"id": uuid.uuid4().hex[:16], "role": "user", "text": mask_pii(text), "created_at": now}
        handoff, messages = self._handoff_keys(hid)
        code = int(
            self._customer(
                keys=[self.sessions.session_key(sid), handoff, messages, self.key("inbox")],
                args=[
                    hid,
                    _json(message),
                    _json({"handoff_id": hid, "session_id": sid, "message": message}),
                    self.inbox_maxlen,
                    self.max_messages,
                ],
            )
        )
        if code == -2:
            raise UnknownSessionError(sid)
        if code == 0:
            return None  # closed a moment ago: the bot answers this one
        self.sessions.add_message(sid, "user", text, handoff_id=hid)
        return {**message, "handoff_id": hid}

    def csat(self, session_id: str, rating: int, comment: str | None = None) -> dict[str, Any]:
        """The customer's rating (1-5) of the conversation an agent just closed: once per handoff."""
        sid = self.sessions.check_session_id(session_id)
        rating = check_rating(rating)
        note = mask_pii(self.check_text(comment, "comment", MAX_COMMENT_CHARS)) if comment and comment.strip() else ""
        pending = self._session_field(sid, "csat_pending")
        if not pending:
            raise HandoffConflictError(
                "there is no conversation to rate: ratings are asked for when an agent closes one, once",
                session_id=sid,
            )
        hid, now = _str(pending), self._now()
        code = int(
            self._csat(
                keys=[self.sessions.session_key(sid), self._handoff_keys(hid)[0], self.key("inbox")],
                args=[
                    hid,
                    rating,
                    note,
                    now,
                    _json({"handoff_id": hid, "session_id": sid, "rating": rating}),
                    self.inbox_maxlen,
                ],
            )
        )
        if code == -2:
            raise UnknownSessionError(sid)
        if code < 0:
            raise HandoffConflictError("this conversation has already been rated", session_id=sid, handoff_id=hid)
        return self.require(hid)

    def contact(self, session_id: str, email: str) -> dict[str, Any]:
        """The address the customer leaves to be answered by e-mail, on their active handoff."""
        sid = self.sessions.check_session_id(session_id)
        email = check_email(email)
        hid = self.active_id(sid)
        if hid is None:
            raise HandoffConflictError(
                "there is no open handoff to attach an e-mail address to: ask for a person first", session_id=sid
            )
        now = self._now()
        code = int(
            self._contact(
                keys=[self.sessions.session_key(sid), self._handoff_keys(hid)[0], self.key("inbox")],
                args=[hid, email, now, _json({"handoff_id": hid, "session_id": sid, "at": now}), self.inbox_maxlen],
            )
        )
        if code == -2:
            raise UnknownSessionError(sid)
        if code < 0:
            raise HandoffConflictError("the handoff closed before the address arrived", session_id=sid)
        return self.require(hid)

    def session_state(self, session_id: str) -> dict[str, Any]:
        """What a customer's event stream starts from: the active handoff (or None), a closed one
        awaiting a rating (or None), and the stream position to follow from."""
        key = self.sessions.session_key(session_id)
        pipe = self.r.pipeline(transaction=True)
        pipe.hmget(key, ["created_at", "handoff", "csat_pending"])
        pipe.xrevrange(self.session_events_key(session_id), count=1)
        (created, hid, pending), last = pipe.execute()
        if created is None:
            raise UnknownSessionError(session_id)
        active = self.get(_str(hid)) if hid else None
        if active is not None:
            active = {k: active[k] for k in ("id", "status", "taken_by", "created_at", "no_agent_at", "has_contact")}
        return {
            "handoff": active,
            "csat_pending": _str(pending) if pending else None,
            "cursor": _str(last[0][0]) if last else "0-0",
        }

    # ---- event streams ---------------------------------------------------------------------------

    def _read(self, key: str, after: str, count: int) -> list[StreamEvent]:
        rows = self.r.xread({key: check_cursor(after)}, count=count)
        events = []
        for _stream, entries in rows or []:
            for eid, fields in entries:
                f = _decoded(fields)
                events.append(StreamEvent(_str(eid), f.get("type", "message"), json.loads(f.get("data") or "{}")))
        return events

    def session_events(self, session_id: str, after: str, count: int = 100) -> list[StreamEvent]:
        return self._read(self.session_events_key(session_id), after, count)

    def inbox_events(self, after: str, count: int = 100) -> list[StreamEvent]:
        return self._read(self.key("inbox"), after, count)

    def inbox_cursor(self) -> str:
        last = self.r.xrevrange(self.key("inbox"), count=1)
        return _str(last[0][0]) if last else "0-0"
