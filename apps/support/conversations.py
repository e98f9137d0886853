"""Support conversations, feedback and the counters behind the stats, in Redis.

    {ns}:session:{sid}            hash  created_at, updated_at, meta (JSON), messages; the handoff desk
                                        (``handoffs.py``) and the daily analytics add their fields here
    {ns}:session:{sid}:messages   list  the messages, oldest first, as JSON (capped at max_messages)
    {ns}:session:{sid}:roles      hash  message id -> role (what feedback and outcomes check)
    {ns}:session:{sid}:feedback   hash  message id -> "up"|"down"; "{id}:comment" -> JSON
    {ns}:session:{sid}:outcomes   hash  message id -> 1 once its outcome is counted
    {ns}:stats                    hash  sessions, messages, answered, handoffs, feedback_up, feedback_down
    {ns}:intents                  zset  intent -> questions counted
    {ns}:sources                  hash  answer source (extracted, canned, handoff) -> count
    {ns}:unanswered               zset  normalised masked question -> times asked (capped)

Every key of a session expires ``session_ttl_s`` after its last write. Handoffs to a person live in
``apps.support.handoffs`` (they outlive the session). All text is passed through ``mask_pii``
before it is stored.

Each write that checks something and then changes something is one Lua script, so it is atomic:
a message is never added to a session that expired a moment before, an outcome is counted once per
message however often it is retried, and a changed rating moves its count. Input is validated
whole before the script runs, so bad input stores nothing. Scripts build no keys of their own: any
Redis (or primary) works; not Redis Cluster, since the session and the global counters live in
different slots.
"""

from __future__ import annotations

import json
import math
import numbers
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from apps.http.pii import mask_pii
from core.errors import InputTooLargeError, InvalidRequestError, NotFoundError

ROLES = ("user", "assistant", "system")
RATINGS = ("up", "down")

_SESSION_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_ID_RE = re.compile(r"^[0-9a-f]{16}$")


class UnknownSessionError(NotFoundError):
    error_type = "unknown_session"

    def __init__(self, session_id: str) -> None:
        super().__init__(f"unknown or expired session {session_id!r}: start a new session", session_id=session_id)
        self.session_id = session_id


class UnknownMessageError(NotFoundError):
    error_type = "unknown_message"

    def __init__(self, session_id: str, message_id: str) -> None:
        super().__init__(
            f"message {message_id!r} is not part of session {session_id!r}",
            session_id=session_id,
            message_id=message_id,
        )
        self.session_id = session_id
        self.message_id = message_id


# KEYS: session, messages, roles, feedback, outcomes | ARGV: id, role, json, ttl, max_messages, now
_ADD_MESSAGE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[5]), -1)
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'messages', 1)
redis.call('HSET', KEYS[1], 'updated_at', ARGV[6])
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
return 1
"""

# KEYS: session, roles, outcomes, stats, intents, sources, unanswered, messages, feedback
# ARGV: message id, handoff (0/1), intent, source, question ('' = answered), cap, ttl
_RECORD_OUTCOME = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return -1 end
if redis.call('HSETNX', KEYS[3], ARGV[1], 1) == 0 then return 0 end
redis.call('HINCRBY', KEYS[4], 'messages', 1)
if ARGV[2] == '1' then
  redis.call('HINCRBY', KEYS[4], 'handoffs', 1)
else
  redis.call('HINCRBY', KEYS[4], 'answered', 1)
end
redis.call('ZINCRBY', KEYS[5], 1, ARGV[3])
redis.call('HINCRBY', KEYS[6], ARGV[4], 1)
if ARGV[5] ~= '' then
  redis.call('ZINCRBY', KEYS[7], 1, ARGV[5])
  redis.call('ZREMRANGEBYRANK', KEYS[7], 0, -tonumber(ARGV[6]) - 1)
end
for _, i in ipairs({1, 2, 3, 8, 9}) do redis.call('EXPIRE', KEYS[i], ARGV[7]) end
return 1
"""

# KEYS: session, roles, feedback, stats, messages, outcomes | ARGV: message id, rating, comment, ttl
_FEEDBACK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-2, ''} end
local role = redis.call('HGET', KEYS[2], ARGV[1])
if not role then return {-1, ''} end
if role ~= 'assistant' then return {-3, role} end
local prev = redis.call('HGET', KEYS[3], ARGV[1]) or ''
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[3], ARGV[1] .. ':comment')
else
  redis.call('HSET', KEYS[3], ARGV[1] .. ':comment', ARGV[3])
end
if prev ~= ARGV[2] then
  if prev ~= '' then redis.call('HINCRBY', KEYS[4], 'feedback_' .. prev, -1) end
  redis.call('HINCRBY', KEYS[4], 'feedback_' .. ARGV[2], 1)
end
for _, i in ipairs({1, 2, 3, 5, 6}) do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
return {1, prev}
"""


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decoded(mapping: dict[Any, Any]) -> dict[str, str]:
    return {_str(k): _str(v) for k, v in mapping.items()}


def _mask_strings(value: Any) -> Any:
    """Masks every string inside JSON-like ``value`` (message and session meta)."""
    if isinstance(value, str):
        return mask_pii(value)
    if isinstance(value, dict):
        return {k: _mask_strings(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_strings(v) for v in value]
    return value


def _to_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"{what} must be JSON-serialisable: {exc}") from exc


def normalise_question(question: str, max_chars: int = 200) -> str:
    """The form a question is counted under: masked, lower-case, single-spaced, no end punctuation."""
    text = " ".join(mask_pii(question).split()).lower().rstrip("?!.,;: ")
    return text[:max_chars].rstrip()


class ConversationStore:
    """Sessions, messages and feedback of the support app on one Redis client.

    ``low_confidence``: an outcome below it (or a handoff) counts its question as unanswered,
    unless ``record_outcome`` is told otherwise. ``clock`` is for tests.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        namespace: str = "support",
        session_ttl_s: int = 86400,
        *,
        max_messages: int = 200,
        max_text_chars: int = 8000,
        low_confidence: float = 0.4,
        max_unanswered: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not namespace or any(c.isspace() for c in namespace):
            raise ValueError(f"namespace must be a non-empty word, got {namespace!r}")
        for name, value in (
            ("session_ttl_s", session_ttl_s),
            ("max_messages", max_messages),
            ("max_text_chars", max_text_chars),
            ("max_unanswered", max_unanswered),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if not 0.0 <= low_confidence <= 1.0:
            raise ValueError(f"low_confidence must be within [0, 1], got {low_confidence}")
        self.r: Any = redis_client  # redis-py's sync/async union return types are noise here
        self.ns = namespace
        self.session_ttl_s = int(session_ttl_s)
        self.max_messages = int(max_messages)
        self.max_text_chars = int(max_text_chars)
        self.low_confidence = float(low_confidence)
        self.max_unanswered = int(max_unanswered)
        self.clock = clock
        self._add_message = redis_client.register_script(_ADD_MESSAGE)
        self._record_outcome = redis_client.register_script(_RECORD_OUTCOME)
        self._feedback = redis_client.register_script(_FEEDBACK)

    # ---- keys ------------------------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    def _session_keys(self, session_id: str) -> dict[str, str]:
        base = self.key("session", session_id)
        return {
            "session": base,
            "messages": f"{base}:messages",
            "roles": f"{base}:roles",
            "feedback": f"{base}:feedback",
            "outcomes": f"{base}:outcomes",
        }

    def session_key(self, session_id: str) -> str:
        """The session's hash: other support stores (handoffs, analytics) keep their fields there."""
        return self._session_keys(self.check_session_id(session_id))["session"]

    def _now(self) -> float:
        return round(self.clock(), 3)

    # ---- validation (before anything is written) -------------------------------------------------

    def check_session_id(self, session_id: Any) -> str:
        if not isinstance(session_id, str) or not _SESSION_ID_RE.match(session_id):
            raise UnknownSessionError(str(session_id))  # a malformed id names no session: 404, not 400
        return session_id

    def _check_message_id(self, session_id: str, message_id: Any) -> str:
        if not isinstance(message_id, str) or not _ID_RE.match(message_id):
            raise UnknownMessageError(session_id, str(message_id))
        return message_id

    def _check_text(self, text: Any, what: str, *, allow_empty: bool = False) -> str:
        if not isinstance(text, str):
            raise InvalidRequestError(f"{what} must be a string, got {type(text).__name__}")
        if not allow_empty and not text.strip():
            raise InvalidRequestError(f"{what} must not be empty")
        if len(text) > self.max_text_chars:
            raise InputTooLargeError(
                f"{what} has {len(text)} characters; the limit is {self.max_text_chars}",
                limit=self.max_text_chars,
                actual=len(text),
            )
        return text

    # ---- sessions and messages -------------------------------------------------------------------

    def create_session(self, meta: dict[str, Any] | None = None) -> str:
        if meta is not None and not isinstance(meta, dict):
            raise InvalidRequestError(f"session meta must be an object, got {type(meta).__name__}")
        meta_json = _to_json(_mask_strings(meta or {}), "session meta")
        session_id = uuid.uuid4().hex
        now = self._now()
        key = self._session_keys(session_id)["session"]
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(key, mapping={"created_at": now, "updated_at": now, "meta": meta_json, "messages": 0})
        pipe.expire(key, self.session_ttl_s)
        pipe.hincrby(self.key("stats"), "sessions", 1)
        pipe.execute()
        return session_id

    def require(self, session_id: str) -> None:
        """Raises UnknownSessionError unless the session exists (and has not expired)."""
        sid = self.check_session_id(session_id)
        if not self.r.exists(self._session_keys(sid)["session"]):
            raise UnknownSessionError(sid)

    def session(self, session_id: str) -> dict[str, Any]:
        """The session's record: id, created_at, updated_at, meta, messages (count), active handoff id."""
        sid = self.check_session_id(session_id)
        raw = _decoded(self.r.hgetall(self._session_keys(sid)["session"]))
        if not raw:
            raise UnknownSessionError(sid)
        return {
            "session_id": sid,
            "created_at": float(raw["created_at"]),
            "updated_at": float(raw["updated_at"]),
            "meta": json.loads(raw.get("meta") or "{}"),
            "messages": int(raw.get("messages", 0)),
            "handoff_id": raw.get("handoff"),
        }

    def add_message(self, session_id: str, role: str, text: str, **meta: Any) -> str:
        """Appends a message (its text and meta strings PII-masked) and refreshes the session's TTL."""
        sid = self.check_session_id(session_id)
        if role not in ROLES:
            raise InvalidRequestError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        self._check_text(text, f"{role} message text")
        message_id = uuid.uuid4().hex[:16]
        now = self._now()
        record = {
            "id": message_id,
            "role": role,
            "text": mask_pii(text),
            "created_at": now,
            "meta": _mask_strings(meta),
        }
        payload = _to_json(record, "message meta")
        keys = self._session_keys(sid)
        ok = self._add_message(
            keys=list(keys.values()),
            args=[message_id, role, payload, self.session_ttl_s, self.max_messages, now],
        )
        if not ok:
            raise UnknownSessionError(sid)
        return message_id

    def history(self, session_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """The last ``limit`` messages, oldest first: {id, role, text, created_at, meta}."""
        sid = self.check_session_id(session_id)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidRequestError(f"limit must be a positive integer, got {limit!r}")
        keys = self._session_keys(sid)
        pipe = self.r.pipeline(transaction=False)
        pipe.exists(keys["session"])
        pipe.lrange(keys["messages"], -min(limit, self.max_messages), -1)
        exists, rows = pipe.execute()
        if not exists:
            raise UnknownSessionError(sid)
        return [json.loads(row) for row in rows]

    def message_meta(self, session_id: str, message_id: str) -> dict[str, Any]:
        """A message's meta (its model, intent, source...), {} when it has left the session's history."""
        for row in reversed(self.history(session_id, limit=self.max_messages)):
            if row.get("id") == message_id:
                return dict(row.get("meta") or {})
        return {}

    # ---- outcomes and feedback -------------------------------------------------------------------

    def record_outcome(
        self,
        session_id: str,
        message_id: str,
        *,
        question: str,
        intent: str,
        handoff: bool,
        source: str,
        confidence: float,
        unanswered: bool | None = None,
    ) -> bool:
        """Counts how the message (normally the assistant's answer) turned out: answered or handed
        off, its intent and answer source, and, when handed off or below ``low_confidence`` (or
        ``unanswered=True``), its question among the unanswered ones. Counted once per message:
        True now, False when it had already been counted."""
        sid = self.check_session_id(session_id)
        mid = self._check_message_id(sid, message_id)
        self._check_text(question, "question", allow_empty=True)
        if not isinstance(handoff, bool):
            raise InvalidRequestError(f"handoff must be true or false, got {handoff!r}")
        labels = {}
        for name, value in (("intent", intent), ("source", source)):
            if not isinstance(value, str) or not value.strip() or len(value) > 64:
                raise InvalidRequestError(f"{name} must be a non-empty string of at most 64 characters")
            labels[name] = value.strip().lower()
        if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not math.isfinite(confidence):
            raise InvalidRequestError(f"confidence must be a number, got {confidence!r}")
        if not 0.0 <= confidence <= 1.0:
            raise InvalidRequestError(f"confidence must be within [0, 1], got {confidence}")
        if unanswered is None:
            unanswered = handoff or confidence < self.low_confidence
        normalised = normalise_question(question) if unanswered else ""
        keys = self._session_keys(sid)
        result = int(
            self._record_outcome(
                keys=[
                    keys["session"],
                    keys["roles"],
                    keys["outcomes"],
                    self.key("stats"),
                    self.key("intents"),
                    self.key("sources"),
                    self.key("unanswered"),
                    keys["messages"],
                    keys["feedback"],
                ],
                args=[
                    mid,
                    int(handoff),
                    labels["intent"],
                    labels["source"],
                    normalised,
                    self.max_unanswered,
                    self.session_ttl_s,
                ],
            )
        )
        if result == -2:
            raise UnknownSessionError(sid)
        if result == -1:
            raise UnknownMessageError(sid, mid)
        return result == 1

    def feedback(self, session_id: str, message_id: str, rating: str, comment: str | None = None) -> dict[str, Any]:
        """Rates an assistant message up or down. The last rating (and comment) per message wins, and
        the counters follow it: up then down moves one count; the same rating twice counts once."""
        if rating not in RATINGS:
            raise InvalidRequestError(f"rating must be 'up' or 'down', got {rating!r}")
        if comment is not None:
            self._check_text(comment, "feedback comment", allow_empty=True)
        sid = self.check_session_id(session_id)
        mid = self._check_message_id(sid, message_id)
        now = self._now()
        comment_json = (
            _to_json({"comment": mask_pii(comment), "at": now}, "comment") if comment and comment.strip() else ""
        )
        keys = self._session_keys(sid)
        status, detail = self._feedback(
            keys=[
                keys["session"],
                keys["roles"],
                keys["feedback"],
                self.key("stats"),
                keys["messages"],
                keys["outcomes"],
            ],
            args=[mid, rating, comment_json, self.session_ttl_s],
        )
        status, detail = int(status), _str(detail)
        if status == -2:
            raise UnknownSessionError(sid)
        if status == -1:
            raise UnknownMessageError(sid, mid)
        if status == -3:
            raise InvalidRequestError(
                f"only assistant messages can be rated; {mid!r} is a {detail} message",
                session_id=sid,
                message_id=mid,
            )
        previous = detail or None
        return {
            "session_id": sid,
            "message_id": mid,
            "rating": rating,
            "previous": previous,
            "changed": previous != rating,
        }

    # ---- stats -----------------------------------------------------------------------------------

    def stats(self, top: int = 10) -> dict[str, Any]:
        if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= 1000:
            raise InvalidRequestError(f"top must be an integer in [1, 1000], got {top!r}")
        pipe = self.r.pipeline(transaction=True)  # one consistent snapshot
        pipe.hgetall(self.key("stats"))
        pipe.zrevrange(self.key("intents"), 0, top - 1, withscores=True)
        pipe.hgetall(self.key("sources"))
        pipe.zrevrange(self.key("unanswered"), 0, top - 1, withscores=True)
        raw_counts, intents, sources, unanswered = pipe.execute()
        counts = {k: int(v) for k, v in _decoded(raw_counts).items()}
        messages, answered, handoffs = counts.get("messages", 0), counts.get("answered", 0), counts.get("handoffs", 0)
        up, down = counts.get("feedback_up", 0), counts.get("feedback_down", 0)
        return {
            "sessions": counts.get("sessions", 0),
            "messages": messages,
            "answered": answered,
            "handoffs": handoffs,
            "deflection_rate": round(answered / messages, 6) if messages else 0.0,
            "handoff_rate": round(handoffs / messages, 6) if messages else 0.0,
            "feedback": {"up": up, "down": down},
            "thumbs_up_rate": round(up / (up + down), 6) if up + down else None,
            "top_intents": [{"intent": _str(i), "count": int(c)} for i, c in intents],
            "unanswered": [{"question": _str(q), "count": int(c)} for q, c in unanswered],
            "by_source": dict(sorted((k, int(v)) for k, v in _decoded(sources).items())),
        }
