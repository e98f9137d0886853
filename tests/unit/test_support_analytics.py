"""Daily support analytics on a real Redis: conversations counted once a day, deflection and handoff
rates, CSAT mean and count, the top handed-off questions over a window, and the refusals."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from apps.support.analytics import DAY_S, SupportAnalytics
from apps.support.conversations import ConversationStore
from core.errors import InvalidRequestError
from tests.doubles.redis import RedisProcess

pytestmark = pytest.mark.unit

MONDAY = 1_750_032_000.0  # 2025-06-16 00:00 UTC


class Clock:
    def __init__(self) -> None:
        self.now = MONDAY + 3600

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    local = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    r = redis.Redis.from_url(local.url)
    yield r
    r.close()
    local.stop()


def test_a_day_counts_conversations_once_and_rates_follow(client: redis.Redis) -> None:
    clock = Clock()
    store = ConversationStore(client, f"t{uuid.uuid4().hex[:8]}")
    analytics = SupportAnalytics(client, store.ns, "default", clock=clock)
    sessions = [store.session_key(store.create_session()) for _ in range(4)]
    # Monday: four conversations; two answered on their own, one handed off after an answer, one
    # handed off at once (the customer asked for a person: not an unanswered question)
    for key in sessions:
        analytics.record_turn(key, answered=True)
        analytics.record_turn(key, answered=True)  # a second turn: still one conversation
    analytics.record_handoff(sessions[2], "Do you sell TYRES?")
    analytics.record_handoff(sessions[2], "do you sell tyres")  # a second handoff, same session: one handed off
    analytics.record_handoff(sessions[3], None)
    analytics.record_csat(5)
    analytics.record_csat(2)
    # Tuesday: one of Monday's sessions comes back and is handed off; a new one asks about tyres too
    clock.now += DAY_S
    analytics.record_handoff(sessions[0], "do you sell tyres?")
    newcomer = store.session_key(store.create_session())
    analytics.record_turn(newcomer, answered=False)
    analytics.record_handoff(newcomer, "Call me on +44 20 7946 0958 about a refund")

    report = analytics.report(days=3)
    assert [d["date"] for d in report["series"]] == ["2025-06-15", "2025-06-16", "2025-06-17"]
    sunday, monday, tuesday = report["series"]
    assert sunday["conversations"] == 0 and sunday["deflection_rate"] is None and sunday["csat"]["mean"] is None
    assert monday["conversations"] == 4 and monday["handed_off"] == 2 and monday["answered_by_bot"] == 2
    assert monday["deflection_rate"] == 0.5 and monday["handoff_rate"] == 0.5 and monday["bot_turns"] == 8
    assert monday["csat"] == {"mean": 3.5, "count": 2, "distribution": {"1": 0, "2": 1, "3": 0, "4": 0, "5": 1}}
    assert tuesday["conversations"] == 2 and tuesday["handed_off"] == 2 and tuesday["deflection_rate"] == 0.0
    assert report["totals"]["conversations"] == 6 and report["totals"]["handed_off"] == 4
    assert report["top_unanswered"] == [
        {"question": "do you sell tyres", "count": 3},
        {"question": "call me on [phone] about a refund", "count": 1},
    ]
    assert analytics.report(days=1, top=1)["top_unanswered"] == [
        {"question": "call me on [phone] about a refund", "count": 1}
    ]
    day_key = analytics.key(analytics.day(clock.now))
    assert 0 < client.ttl(day_key) <= analytics.retention_s


def test_bad_windows_are_refused(client: redis.Redis) -> None:
    analytics = SupportAnalytics(client, "x", "default")
    for days in (0, 91, -1, True, "7", 2.5):
        with pytest.raises(InvalidRequestError, match="days"):
            analytics.report(days)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="top"):
        analytics.report(7, top=0)
    with pytest.raises(ValueError):
        SupportAnalytics(client, "x", "default", retention_days=30)
