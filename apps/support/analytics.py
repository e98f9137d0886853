"""Support analytics over time, per UTC day and tenant: how many conversations the bot handled on its
own (deflection), how many went to a person, the customers' ratings of those, and the questions
handed off most often.

    {ns}:tenant:{t}:daily:{YYYYMMDD}              hash  conversations, handed_off, handoffs, bot_turns,
                                                        answered_turns, csat_count, csat_sum, csat_1..5
    {ns}:tenant:{t}:daily:{YYYYMMDD}:unanswered   zset  masked, normalised handed-off question -> count
    {ns}:session:{sid}                            hash  + conv_day, handoff_day: the day the session
                                                        was last counted as a conversation, a handoff

A conversation is a session with at least one bot turn or handoff that day, counted once per day (a
session that runs over midnight counts on both days). Deflection is the share of a day's
conversations that no handoff followed; the handoff rate is the rest. Day keys expire after
``retention_days``. The counters are written by one script per event, so a day never holds a
handoff without its conversation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

from apps.support.conversations import normalise_question
from core.errors import InvalidRequestError

MAX_DAYS = 90
DAY_S = 86400

# Both scripts start here: -2 for an expired session; a conversation counts once on each day it is active.
_CONVERSATION = """\
if redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
if redis.call('HGET', KEYS[1], 'conv_day') ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'conv_day', ARGV[1])
  redis.call('HINCRBY', KEYS[2], 'conversations', 1)
end
"""

# KEYS: session, day | ARGV: day, answered (0/1), retention
_TURN = f"""
{_CONVERSATION}redis.call('HINCRBY', KEYS[2], 'bot_turns', 1)
if ARGV[2] == '1' then redis.call('HINCRBY', KEYS[2], 'answered_turns', 1) end
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""

# KEYS: session, day, day's unanswered | ARGV: day, question ('' = not counted), retention, cap
_HANDOFF = f"""
{_CONVERSATION}if redis.call('HGET', KEYS[1], 'handoff_day') ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'handoff_day', ARGV[1])
  redis.call('HINCRBY', KEYS[2], 'handed_off', 1)
end
redis.call('HINCRBY', KEYS[2], 'handoffs', 1)
redis.call('EXPIRE', KEYS[2], ARGV[3])
if ARGV[2] ~= '' then
  redis.call('ZINCRBY', KEYS[3], 1, ARGV[2])
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -tonumber(ARGV[4]) - 1)
  redis.call('EXPIRE', KEYS[3], ARGV[3])
end
return 1
"""


def _int(raw: dict[Any, Any], name: str) -> int:
    value = raw.get(name, raw.get(name.encode(), 0))
    return int(value or 0)


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _summary(counts: dict[str, int]) -> dict[str, Any]:
    conversations, handed_off = counts["conversations"], counts["handed_off"]
    answered = max(0, conversations - handed_off)
    csat_count = counts["csat_count"]
    return {
        "conversations": conversations,
        "answered_by_bot": answered,
        "handed_off": handed_off,
        "deflection_rate": _rate(answered, conversations),
        "handoff_rate": _rate(handed_off, conversations),
        "bot_turns": counts["bot_turns"],
        "csat": {
            "mean": round(counts["csat_sum"] / csat_count, 3) if csat_count else None,
            "count": csat_count,
            "distribution": {str(r): counts[f"csat_{r}"] for r in range(1, 6)},
        },
    }


FIELDS = ("conversations", "handed_off", "bot_turns", "csat_count", "csat_sum", *(f"csat_{r}" for r in range(1, 6)))


class SupportAnalytics:
    """Daily counters of one tenant; ``clock`` is for tests (UTC days from Unix time)."""

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        tenant: str,
        *,
        retention_days: int = 120,
        max_questions: int = 500,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if retention_days < MAX_DAYS:
            raise ValueError(f"retention_days must be at least {MAX_DAYS} (the longest report), got {retention_days}")
        self.r: Any = client
        self.ns = namespace
        self.tenant = tenant
        self.retention_s = int(retention_days) * DAY_S
        self.max_questions = int(max_questions)
        self.clock = clock
        self._turn = client.register_script(_TURN)
        self._handoff = client.register_script(_HANDOFF)

    @staticmethod
    def day(ts: float) -> str:
        return time.strftime("%Y%m%d", time.gmtime(ts))

    def key(self, day: str, *parts: str) -> str:
        return ":".join((self.ns, "tenant", self.tenant, "daily", day, *parts))

    # ---- recording -------------------------------------------------------------------------------

    def record_turn(self, session_key: str, *, answered: bool) -> None:
        """One bot reply in the session: it counts the session as today's conversation once."""
        day = self.day(self.clock())
        self._turn(keys=[session_key, self.key(day)], args=[day, int(answered), self.retention_s])

    def record_handoff(self, session_key: str, question: str | None) -> None:
        """A new handoff for the session; ``question`` (masked and normalised here) is counted among
        the day's unanswered ones when given: the bot could not answer it."""
        day = self.day(self.clock())
        normalised = normalise_question(question) if question and question.strip() else ""
        self._handoff(
            keys=[session_key, self.key(day), self.key(day, "unanswered")],
            args=[day, normalised, self.retention_s, self.max_questions],
        )

    def record_csat(self, rating: int) -> None:
        key = self.key(self.day(self.clock()))
        pipe = self.r.pipeline(transaction=True)
        pipe.hincrby(key, "csat_count", 1)
        pipe.hincrby(key, "csat_sum", int(rating))
        pipe.hincrby(key, f"csat_{int(rating)}", 1)
        pipe.expire(key, self.retention_s)
        pipe.execute()

    # ---- the report ------------------------------------------------------------------------------

    def report(self, days: int = 14, top: int = 10) -> dict[str, Any]:
        """The last ``days`` UTC days (today included), oldest first, their totals, and the most
        handed-off questions over the window."""
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
            raise InvalidRequestError(f"days must be an integer from 1 to {MAX_DAYS}, got {days!r}")
        if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= 100:
            raise InvalidRequestError(f"top must be an integer from 1 to 100, got {top!r}")
        now = self.clock()
        dates = [self.day(now - i * DAY_S) for i in range(days - 1, -1, -1)]
        pipe = self.r.pipeline(transaction=True)
        for d in dates:
            pipe.hgetall(self.key(d))
        pipe.zunion([self.key(d, "unanswered") for d in dates], withscores=True)
        *raws, questions = pipe.execute()
        series, totals = [], dict.fromkeys(FIELDS, 0)
        for d, raw in zip(dates, raws, strict=True):
            counts = {f: _int(raw, f) for f in FIELDS}
            for f in FIELDS:
                totals[f] += counts[f]
            series.append({"date": f"{d[:4]}-{d[4:6]}-{d[6:]}", **_summary(counts)})
        counted = [(q.decode() if isinstance(q, bytes) else q, int(c)) for q, c in questions or []]
        ranked = sorted(counted, key=lambda qc: (-qc[1], qc[0]))
        return {
            "tenant": self.tenant,
            "days": days,
            "timezone": "UTC",
            "series": series,
            "totals": _summary(totals),
            "top_unanswered": [{"question": q, "count": c} for q, c in ranked[:top]],
        }
