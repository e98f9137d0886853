"""The handoff workflow on a real Redis (the embedded redis-server): open → taken → closed, one
winner when two agents take, only the taker replies and closes, the customer's messages reach the
agent while the bot stays silent, the rating and the e-mail address, the no-agent notice, the event
streams both sides follow, and the webhook events queued on the way. Bad input is refused with a
4xx-mapped error before anything is written (the namespace's dump is unchanged)."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from typing import Any

import pytest
import redis

from apps.errors import status_for
from apps.support.conversations import ConversationStore, UnknownSessionError
from apps.support.handoffs import HandoffConflictError, HandoffDesk, StreamEvent, UnknownHandoffError
from apps.support.inbox import Inbox
from apps.support.live import NoAgentTimer, customer_events, inbox_events
from apps.support.settings import SupportSettings
from core.errors import InputTooLargeError, InvalidRequestError

pytestmark = pytest.mark.unit

EMAIL, PHONE = "jane.doe@example.com", "+44 20 7946 0958"
T0 = 1_750_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Queue:
    """Stands in for the Celery queue: keeps the webhook events the inbox hands over."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def enqueue(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


@pytest.fixture
def client(redis_either: redis.Redis) -> redis.Redis:
    return redis_either


def make_inbox(client: redis.Redis, clock: Clock | None = None, **settings: Any) -> tuple[Inbox, Queue]:
    store = ConversationStore(client, f"t{uuid.uuid4().hex[:8]}", session_ttl_s=3600)
    values = {"webhook_url": "https://helpdesk.example/hooks/domainllm", "webhook_secret": "s3cret-for-tests"}
    queue = Queue()
    inbox = Inbox(store, SupportSettings(**(values | settings)), queue, clock=clock or Clock())
    return inbox, queue


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def inbox(client: redis.Redis, clock: Clock) -> Inbox:
    return make_inbox(client, clock)[0]


def raw_dump(inbox: Inbox) -> str:
    """Every key and value under the inbox's namespace, streams included, as one string."""
    r = inbox.sessions.r
    parts: list[str] = []
    for key in sorted(r.scan_iter(match=f"{inbox.sessions.ns}:*")):
        kind = r.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        value: Any = {
            "hash": lambda k: sorted(r.hgetall(k).items()),
            "list": lambda k: r.lrange(k, 0, -1),
            "zset": lambda k: r.zrange(k, 0, -1, withscores=True),
            "string": lambda k: r.get(k),
            "stream": lambda k: r.xrange(k),
        }[kind](key)
        parts.append(f"{key!r} {value!r}")
    return "\n".join(parts)


def handed_off(inbox: Inbox, question: str = "Do you sell car tyres?") -> tuple[str, dict[str, Any]]:
    """A session whose question the bot could not answer, handed off as ``SupportService.complete`` does."""
    sid = inbox.sessions.create_session()
    inbox.sessions.add_message(sid, "user", question)
    inbox.remember_passages(sid, [Passage("Tyres are not sold here.", "catalogue", "Catalogue", "/help/catalogue")])
    inbox.sessions.add_message(sid, "assistant", "I'm handing this conversation to a person.")
    inbox.record_turn(sid, answered=False)
    return sid, inbox.open(sid, "no_match", question=question, unanswered=True)


class Passage:
    def __init__(self, text: str, doc_id: str, title: str, url: str | None, cosine: float = 0.31) -> None:
        self.text, self.doc_id, self.title, self.url, self.cosine = text, doc_id, title, url, cosine


def events(inbox: Inbox, sid: str | None = None) -> list[StreamEvent]:
    return inbox.desk.session_events(sid, "0-0") if sid else inbox.desk.inbox_events("0-0")


# ---- open ----------------------------------------------------------------------------------------


def test_a_handoff_opens_once_with_the_conversation_passages_and_reason(inbox: Inbox) -> None:
    queue: Queue = inbox.webhooks  # type: ignore[assignment]
    sid, record = handed_off(inbox, f"Do you sell car tyres? Call me on {PHONE}")
    assert record["status"] == "open" and record["session_id"] == sid and record["tenant"] == "default"
    assert record["reason"] == "no_match" and record["question"] == "Do you sell car tyres? Call me on [PHONE]"
    assert [m["role"] for m in record["conversation"]] == ["user", "assistant"]
    assert record["passages"] == [
        {
            "doc_id": "catalogue",
            "title": "Catalogue",
            "url": "/help/catalogue",
            "text": "Tyres are not sold here.",
            "score": 0.31,
        }
    ]
    again = inbox.open(sid, "customer asked for a person")
    assert again == record  # one active handoff per session, the first reason kept
    assert inbox.sessions.session(sid)["handoff_id"] == record["id"]
    assert inbox.counts() == {"open": 1, "taken": 0}
    assert queue.types() == ["handoff.opened"]  # once, not for the repeat
    opened = queue.events[0]
    assert opened["handoff"]["id"] == record["id"] and opened["tenant"] == "default"
    assert opened["conversation"] == record["conversation"] and opened["passages"] == record["passages"]
    assert [e.type for e in events(inbox)] == ["handoff_opened"]
    assert [e.type for e in events(inbox, sid)] == ["handoff_opened"]
    assert PHONE not in raw_dump(inbox) and "7946" not in raw_dump(inbox)


def test_concurrent_handoff_requests_open_one(inbox: Inbox) -> None:
    sid = inbox.sessions.create_session()
    inbox.sessions.add_message(sid, "user", "help")
    ids: list[str] = []
    threads = [threading.Thread(target=lambda: ids.append(inbox.open(sid, "now")["id"])) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 10 and len(set(ids)) == 1
    assert len(inbox.desk.list_handoffs("open")) == 1 and len(events(inbox)) == 1


# ---- take, reply, close ------------------------------------------------------------------------------


def test_take_twice_is_409_for_another_agent_and_a_no_op_for_the_same(inbox: Inbox) -> None:
    queue: Queue = inbox.webhooks  # type: ignore[assignment]
    _, record = handed_off(inbox)
    taken = inbox.take(record["id"], "Dana")
    assert taken["status"] == "taken" and taken["taken_by"] == "Dana" and taken["taken_at"] is not None
    assert taken["conversation"][-1] == {
        **taken["conversation"][-1],
        "role": "system",
        "text": "Dana joined the conversation",
    }
    before = raw_dump(inbox)
    assert inbox.take(record["id"], "Dana") == taken  # again by the taker: nothing changes
    with pytest.raises(HandoffConflictError, match="taken by 'Dana'") as info:
        inbox.take(record["id"], "Sam")
    assert status_for(info.value) == 409 and info.value.error_type == "handoff_conflict"
    assert raw_dump(inbox) == before
    assert queue.types() == ["handoff.opened", "handoff.taken"]
    assert inbox.counts() == {"open": 0, "taken": 1}
    assert [h["id"] for h in inbox.desk.list_handoffs("taken")] == [record["id"]]
    assert inbox.desk.list_handoffs("open") == []


def test_concurrent_takes_have_one_winner(inbox: Inbox) -> None:
    _, record = handed_off(inbox)
    won, lost = [], []

    def take(agent: str) -> None:
        try:
            won.append(inbox.take(record["id"], agent)["taken_by"])
        except HandoffConflictError:
            lost.append(agent)

    threads = [threading.Thread(target=take, args=(f"agent {i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 7
    assert [e.type for e in events(inbox)].count("handoff_taken") == 1


def test_only_the_taker_replies_and_the_customer_gets_it(inbox: Inbox) -> None:
    sid, record = handed_off(inbox)
    hid = record["id"]
    with pytest.raises(HandoffConflictError, match="not taken yet"):
        inbox.reply(hid, "Dana", "Hello!")
    inbox.take(hid, "Dana")
    before = raw_dump(inbox)
    with pytest.raises(HandoffConflictError, match="taken by 'Dana'") as info:
        inbox.reply(hid, "Sam", "I'm not Dana")
    assert status_for(info.value) == 409
    assert raw_dump(inbox) == before
    message = inbox.reply(hid, "Dana", f"We don't sell tyres, sorry. Write to {EMAIL} for parts.")
    assert message["role"] == "agent" and message["agent"] == "Dana"
    assert message["text"] == "We don't sell tyres, sorry. Write to [EMAIL] for parts."
    customer = events(inbox, sid)
    assert [e.type for e in customer] == ["handoff_opened", "agent_joined", "agent_message"]
    assert customer[1].data["agent"] == "Dana" and customer[2].data["message"] == message
    assert inbox.get(hid)["conversation"][-1] == message


def test_closing_asks_for_a_rating_once_and_only_the_taker_closes(inbox: Inbox) -> None:
    queue: Queue = inbox.webhooks  # type: ignore[assignment]
    sid, record = handed_off(inbox)
    hid = record["id"]
    inbox.take(hid, "Dana")
    with pytest.raises(HandoffConflictError, match="only they can close"):
        inbox.close(hid, "Sam")
    closed = inbox.close(hid, "Dana")
    assert closed["status"] == "closed" and closed["closed_by"] == "Dana" and closed["closed_at"] is not None
    assert inbox.close(hid, "Sam") == closed  # closed already: nothing changes, whoever asks
    assert queue.types() == ["handoff.opened", "handoff.taken", "handoff.closed"]
    last = events(inbox, sid)[-1]
    assert last.type == "handoff_closed" and last.data["csat"] is True
    assert inbox.session_state(sid)["handoff"] is None and inbox.session_state(sid)["csat_pending"] == hid
    assert 0 < inbox.sessions.r.ttl(inbox.desk.key("handoff", hid)) <= inbox.desk.retention_s
    with pytest.raises(HandoffConflictError, match="closed"):
        inbox.take(hid, "Dana")
    with pytest.raises(HandoffConflictError, match="closed"):
        inbox.reply(hid, "Dana", "one more thing")
    # the session may ask again: a new handoff
    reopened = inbox.open(sid, "customer asked for a person")
    assert reopened["id"] != hid and inbox.session_state(sid)["csat_pending"] is None


def test_closing_an_untaken_handoff_asks_for_no_rating(inbox: Inbox) -> None:
    sid, record = handed_off(inbox)
    inbox.close(record["id"], "Sam")
    assert events(inbox, sid)[-1].data["csat"] is False
    with pytest.raises(HandoffConflictError, match="no conversation to rate"):
        inbox.csat(sid, 5)


def test_unknown_and_malformed_handoff_ids_are_404(inbox: Inbox) -> None:
    handed_off(inbox)
    before = raw_dump(inbox)
    for hid in ("0" * 16, "nope", "../../etc", "ABCDEF0123456789", ""):
        for call in (
            lambda h: inbox.get(h),
            lambda h: inbox.take(h, "Dana"),
            lambda h: inbox.reply(h, "Dana", "hi"),
            lambda h: inbox.close(h, "Dana"),
        ):
            with pytest.raises(UnknownHandoffError) as info:
                call(hid)
            assert status_for(info.value) == 404
    assert not inbox.check_no_agent("0" * 16)
    assert raw_dump(inbox) == before


def test_bad_agent_names_and_texts_change_nothing(client: redis.Redis) -> None:
    inbox, _ = make_inbox(client, max_message_chars=50)
    _, record = handed_off(inbox)
    hid = record["id"]
    inbox.take(hid, "Dana")
    before = raw_dump(inbox)
    for agent in ("", "   ", "x" * 65, "Dana\nSam", None, 7):
        with pytest.raises(InvalidRequestError):
            inbox.take(hid, agent)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError):
        inbox.reply(hid, "Dana", "   ")
    with pytest.raises(InputTooLargeError):
        inbox.reply(hid, "Dana", "x" * 51)
    with pytest.raises(InvalidRequestError):
        inbox.reply(hid, "Dana", "\ud800")
    with pytest.raises(InvalidRequestError, match="status"):
        inbox.list_handoffs("pending", 10)
    with pytest.raises(InvalidRequestError, match="limit"):
        inbox.list_handoffs(None, 0)
    assert raw_dump(inbox) == before


# ---- the customer's side -------------------------------------------------------------------------


def test_customer_messages_go_to_the_agent_only_while_a_handoff_is_active(inbox: Inbox) -> None:
    queue: Queue = inbox.webhooks  # type: ignore[assignment]
    sid = inbox.sessions.create_session()
    assert inbox.customer_message(sid, "hello?") is None  # no handoff: the bot answers it
    assert inbox.sessions.history(sid) == [] and events(inbox) == []
    _, record = handed_off(inbox)
    sid = record["session_id"]
    message = inbox.customer_message(sid, f"Still there? I'm {EMAIL}")
    assert message is not None and message["handoff_id"] == record["id"]
    assert message["role"] == "user" and message["text"] == "Still there? I'm [EMAIL]"
    assert inbox.get(record["id"])["conversation"][-1]["text"] == "Still there? I'm [EMAIL]"
    assert inbox.sessions.history(sid)[-1]["text"] == "Still there? I'm [EMAIL]"  # stored with the session too
    assert events(inbox)[-1].type == "customer_message"
    assert queue.types()[-1] == "handoff.customer_message"
    assert queue.events[-1]["message"]["text"] == "Still there? I'm [EMAIL]"
    inbox.take(record["id"], "Dana")
    assert inbox.customer_message(sid, "thanks") is not None  # taken: still the agent's
    inbox.close(record["id"], "Dana")
    assert inbox.customer_message(sid, "one more question") is None  # closed: the bot is back


def test_bad_customer_messages_and_unknown_sessions(inbox: Inbox) -> None:
    _, record = handed_off(inbox)
    sid = record["session_id"]
    before = raw_dump(inbox)
    for text in ("", "  ", None):
        with pytest.raises(InvalidRequestError):
            inbox.customer_message(sid, text)  # type: ignore[arg-type]
    with pytest.raises(InputTooLargeError):
        inbox.customer_message(sid, "x" * 2001)
    for bad in (uuid.uuid4().hex, "not-a-session"):
        for call in (
            lambda s: inbox.customer_message(s, "hi"),
            lambda s: inbox.csat(s, 5),
            lambda s: inbox.contact(s, EMAIL),
            lambda s: inbox.session_state(s),
            lambda s: inbox.open(s, "help"),
        ):
            with pytest.raises(UnknownSessionError) as info:
                call(bad)
            assert status_for(info.value) == 404
    assert raw_dump(inbox) == before


def test_the_rating_is_recorded_once_and_bad_ratings_change_nothing(inbox: Inbox) -> None:
    sid, record = handed_off(inbox)
    with pytest.raises(HandoffConflictError):
        inbox.csat(sid, 5)  # not closed yet
    inbox.take(record["id"], "Dana")
    inbox.close(record["id"], "Dana")
    before = raw_dump(inbox)
    for rating in (0, 6, -1, True, "5", 4.5, None):
        with pytest.raises(InvalidRequestError, match="rating"):
            inbox.csat(sid, rating)  # type: ignore[arg-type]
    with pytest.raises(InputTooLargeError):
        inbox.csat(sid, 4, "x" * 1001)
    assert raw_dump(inbox) == before
    rated = inbox.csat(sid, 4, f"Quick, thanks. {PHONE}")
    assert rated["csat"] == 4 and rated["csat_comment"] == "Quick, thanks. [PHONE]"
    assert events(inbox)[-1].type == "csat_recorded" and events(inbox)[-1].data["rating"] == 4
    after = raw_dump(inbox)
    with pytest.raises(HandoffConflictError, match="no conversation to rate"):
        inbox.csat(sid, 5)  # once
    assert raw_dump(inbox) == after
    assert inbox.report(1)["totals"]["csat"] == {
        "mean": 4.0,
        "count": 1,
        "distribution": {"1": 0, "2": 0, "3": 0, "4": 1, "5": 0},
    }


def test_an_email_address_is_kept_for_the_agent_and_masked_in_logs(
    inbox: Inbox, caplog: pytest.LogCaptureFixture
) -> None:
    queue: Queue = inbox.webhooks  # type: ignore[assignment]
    sid = inbox.sessions.create_session()
    with pytest.raises(HandoffConflictError, match="no open handoff"):
        inbox.contact(sid, EMAIL)
    _, record = handed_off(inbox)
    sid = record["session_id"]
    before = raw_dump(inbox)
    for bad in (
        "",
        "jane",
        "jane@",
        "@example.com",
        "jane@example",
        "jane doe@example.com",
        "a@b.c",
        "jane@@example.com",
        f"{'x' * 65}@example.com",
        "jane@exa_mple.com",
        "<jane@example.com>",
    ):
        with pytest.raises(InvalidRequestError, match="e-mail"):
            inbox.contact(sid, bad)
    assert raw_dump(inbox) == before
    with caplog.at_level(logging.INFO, logger="apps.support.inbox"):
        saved = inbox.contact(sid, f"  {EMAIL} ")
    assert saved["contact_email"] == EMAIL and saved["has_contact"]
    assert EMAIL not in caplog.text and "[EMAIL]" in caplog.text
    assert queue.events[-1]["type"] == "handoff.contact" and queue.events[-1]["contact"] == {"email": EMAIL}
    assert EMAIL not in str(events(inbox)[-1].data)  # the stream says an address came, not which
    listed = inbox.list_handoffs("open", 10)["handoffs"][0]
    assert listed["has_contact"] and "contact_email" not in listed


# ---- no agent in time --------------------------------------------------------------------------------


def test_nobody_taking_a_handoff_in_time_tells_the_customer_once(inbox: Inbox, clock: Clock) -> None:
    sid, record = handed_off(inbox)
    hid = record["id"]
    timeout = inbox.settings.handoff_timeout_s
    clock.now = T0 + timeout - 1
    assert not inbox.check_no_agent(hid)
    clock.now = T0 + timeout
    assert inbox.check_no_agent(hid)
    assert not inbox.check_no_agent(hid)  # once
    notice = events(inbox, sid)[-1]
    assert notice.type == "no_agent" and notice.data["ask_email"] is True
    assert notice.data["message"] == inbox.settings.handoff_timeout_message
    assert inbox.get(hid)["no_agent_at"] == T0 + timeout
    _, taken = handed_off(inbox)
    inbox.take(taken["id"], "Dana")
    clock.now = T0 + 10 * timeout
    assert not inbox.check_no_agent(taken["id"])  # someone took it


def test_the_no_agent_timer_follows_the_customer_stream() -> None:
    timer = NoAgentTimer(None, 60)
    assert timer.due(T0) is None
    timer.see(StreamEvent("1-0", "handoff_opened", {"handoff_id": "a" * 16, "created_at": T0}))
    assert timer.due(T0 + 59) is None and timer.due(T0 + 60) == "a" * 16
    timer.see(StreamEvent("2-0", "no_agent", {"handoff_id": "a" * 16}))
    assert timer.due(T0 + 600) is None
    timer.see(StreamEvent("3-0", "handoff_opened", {"handoff_id": "b" * 16, "created_at": T0}))
    timer.see(StreamEvent("4-0", "agent_joined", {"handoff_id": "b" * 16}))
    assert timer.due(T0 + 600) is None
    resumed = NoAgentTimer({"id": "c" * 16, "status": "open", "created_at": T0, "no_agent_at": None}, 60)
    assert resumed.due(T0 + 61) == "c" * 16
    assert NoAgentTimer({"id": "c" * 16, "status": "taken", "created_at": T0}, 60).due(T0 + 61) is None


# ---- the live streams --------------------------------------------------------------------------------


async def _take(stream: Any, n: int, timeout: float = 5.0) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []

    async def collect() -> None:
        async for event in stream:
            out.append(event)
            if len(out) == n:
                return

    await asyncio.wait_for(collect(), timeout)
    await stream.aclose()
    return out


def test_the_customer_stream_starts_with_state_then_follows_and_tells_about_no_agent(
    client: redis.Redis, clock: Clock
) -> None:
    inbox, _ = make_inbox(client, clock, events_poll_s=0.05, handoff_timeout_s=30)
    sid, record = handed_off(inbox)
    state = inbox.session_state(sid)
    assert state["handoff"]["id"] == record["id"] and state["handoff"]["status"] == "open"
    clock.now = T0 + 30  # past the timeout: the stream tells the customer as it starts
    got = asyncio.run(_take(customer_events(inbox, sid, state, None), 2))
    assert got[0]["event"] == "state" and '"status": "open"' in got[0]["data"]
    assert got[1]["event"] == "no_agent" and got[1]["id"]
    # reconnecting after that event replays nothing; from the start, everything
    again = asyncio.run(_take(customer_events(inbox, sid, inbox.session_state(sid), got[1]["id"]), 1))
    assert [e["event"] for e in again] == ["state"]
    replay = asyncio.run(_take(customer_events(inbox, sid, inbox.session_state(sid), "0-0"), 3))
    assert [e["event"] for e in replay] == ["state", "handoff_opened", "no_agent"]


def test_the_inbox_stream_sees_a_new_handoff_and_ends_for_a_reconnect(client: redis.Redis) -> None:
    inbox, _ = make_inbox(client, events_poll_s=0.05, events_max_stream_s=10)
    cursor = inbox.desk.inbox_cursor()

    async def scenario() -> list[dict[str, str]]:
        stream = inbox_events(inbox, cursor)
        first = await stream.__anext__()
        await asyncio.to_thread(handed_off, inbox)
        rest = await _take(stream, 1)
        return [first, *rest]

    got = asyncio.run(scenario())
    assert got[0]["event"] == "ready" and got[1]["event"] == "handoff_opened"
    assert '"status": "open"' in got[1]["data"]
    with pytest.raises(InvalidRequestError, match="event id"):
        inbox.desk.inbox_events("$")


def test_a_handoff_keeps_its_newest_messages_only(inbox: Inbox) -> None:
    desk = HandoffDesk(inbox.sessions, max_messages=3)
    sid, record = handed_off(inbox)
    desk.take(record["id"], "Dana")
    for i in range(3):
        desk.customer_message(sid, f"customer {i}")
        desk.reply(record["id"], "Dana", f"agent {i}")
    assert [m["text"] for m in desk.require(record["id"])["conversation"]] == ["agent 1", "customer 2", "agent 2"]
