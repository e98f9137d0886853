"""Alerts, their delivery outbox and their deliveries, in Redis.

    {ns}:alert:{id}             string  the alert, JSON
    {ns}:alerts                 zset    alert ids by fire time
    {ns}:lastfired              hash    "{rule}|{scope}" -> time it last fired (dedup and cooldown)
    {ns}:outbox                 zset    "{id}|{target}" still to be queued for delivery, by the time it
                                        was stored (or last taken by a drain)
    {ns}:claim:{id}|{target}    string  the token of the worker sending it now (SET NX, expires)
    {ns}:delivery:{id}          hash    target -> {"state": sent|failed|dead, "attempts", "error", "at"}
    {ns}:deadletter             zset    "{id}|{target}" by the time the target gave up

Firing is one Lua step that checks the (rule, scope) cooldown and stores the alert together with one
outbox entry per delivery target: two monitors evaluating at once (two beats, a retried task) store
one alert, never two, and a monitor that dies right after firing leaves its deliveries in the outbox,
where beat finds them (``take_outbox``), instead of losing them behind the cooldown. The cooldown is
measured on the monitor's clock, not Redis TTLs, so a replay on historical time behaves as live.

A delivery is claimed (``claim``) before it is sent, so two copies of one delivery task (a retry and a
redelivery, a resend) never send at once; a delivery recorded as sent stays sent.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis

from apps.sentiment.store import TAKE_DUE
from core.redis_client import NamespacedStore

_FIRE = """
local last = redis.call('HGET', KEYS[1], ARGV[1])
if last and math.abs(tonumber(ARGV[2]) - tonumber(last)) < tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[5])
for i = 7, #ARGV do
  redis.call('ZADD', KEYS[4], ARGV[6], ARGV[5] .. '|' .. ARGV[i])
end
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass
class Alert:
    id: str
    rule: str
    kind: str
    scope: str  # "entity:AAPL", "topic:earnings", "all"
    severity: str
    fired_at: float
    message: str
    numbers: dict[str, float | int | None]
    items: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.scope.split(":", 1)[-1]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "key": self.key}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alert:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def alert_id(rule: str, scope: str, fired_at: float) -> str:
    return "al_" + hashlib.sha256(f"{rule}|{scope}|{fired_at:.3f}".encode()).hexdigest()[:20]


class AlertStore(NamespacedStore):
    def __init__(self, client: redis.Redis, namespace: str = "sentiment") -> None:
        super().__init__(client, namespace)
        self._fire = client.register_script(_FIRE)
        self._release = client.register_script(_RELEASE)
        self._take_outbox = client.register_script(TAKE_DUE)

    def fire(self, alert: Alert, cooldown_s: float, targets: Sequence[str] = ()) -> bool:
        """Store the alert, and an outbox entry for each of ``targets``, unless its (rule, scope) fired
        less than ``cooldown_s`` ago: all or nothing."""
        keys = [self.key("lastfired"), self.key("alert", alert.id), self.key("alerts"), self.key("outbox")]
        rule_scope, record = f"{alert.rule}|{alert.scope}", json.dumps(alert.to_dict())
        args: list[str | float] = [rule_scope, alert.fired_at, cooldown_s, record, alert.id, time.time(), *targets]
        return bool(self._fire(keys=keys, args=args))

    def get(self, alert_id: str) -> Alert | None:
        raw = self.r.get(self.key("alert", alert_id))
        return Alert.from_dict(json.loads(raw)) if raw else None

    def recent(
        self, *, scope: str | None = None, since: float = 0, until: float | None = None, limit: int = 100
    ) -> list[Alert]:
        """Newest first, optionally of one scope and a time range."""
        top = "+inf" if until is None else until
        ids = cast(
            list[str],
            self.r.zrevrangebyscore(self.key("alerts"), top, since, start=0, num=limit if scope is None else 10_000),
        )
        out = []
        for raw in self.r.mget([self.key("alert", i) for i in ids]) if ids else []:
            if raw:
                alert = Alert.from_dict(json.loads(raw))
                if scope is None or alert.scope == scope:
                    out.append(alert)
        return out[:limit]

    # ---- the outbox --------------------------------------------------------------------------

    def outbox(self) -> list[tuple[str, str]]:
        """(alert id, target) pairs not yet queued for delivery, oldest first."""
        return _pairs(cast(list[str], self.r.zrange(self.key("outbox"), 0, -1)))

    def take_outbox(self, older_than_s: float, limit: int = 1000, now: float | None = None) -> list[tuple[str, str]]:
        """Outbox entries at least ``older_than_s`` old, re-stamped ``now`` in the same step: the caller
        queues them and then drops each (``outbox_done``); one it fails to queue comes back after
        another ``older_than_s``, and a concurrent caller does not take the same entries."""
        now = time.time() if now is None else now
        return _pairs(
            cast(list[str], self._take_outbox(keys=[self.key("outbox")], args=[now - older_than_s, now, limit]))
        )

    def outbox_done(self, alert_id: str, target: str) -> None:
        self.r.zrem(self.key("outbox"), f"{alert_id}|{target}")

    # ---- deliveries --------------------------------------------------------------------------

    def delivery(self, alert_id: str) -> dict[str, dict[str, Any]]:
        raw = cast(dict[str, str], self.r.hgetall(self.key("delivery", alert_id)))
        return {k: json.loads(v) for k, v in raw.items()}

    def delivered(self, alert_id: str, target: str) -> bool:
        raw = cast(str | None, self.r.hget(self.key("delivery", alert_id), target))
        return raw is not None and json.loads(raw).get("state") == "sent"

    def record(self, alert_id: str, target: str, state: str, error: str | None = None) -> bool:
        """Record a try's outcome (sent, failed, or dead: given up). A target already sent to stays
        sent: a late failure of a second copy (a retry that ran out while the first was sending) does
        not undo it. Returns whether it was recorded."""
        key = self.key("delivery", alert_id)

        def update(pipe: redis.client.Pipeline) -> bool:
            raw = pipe.hget(key, target)
            previous = json.loads(raw) if raw else {}
            if previous.get("state") == "sent" and state != "sent":
                return False
            attempts = int(previous.get("attempts", 0)) + (state != "dead")  # giving up is not another attempt
            now = time.time()
            status = {"state": state, "attempts": attempts, "error": error or previous.get("error"), "at": now}
            pipe.multi()
            pipe.hset(key, target, json.dumps(status))
            if state == "dead":
                pipe.zadd(self.key("deadletter"), {f"{alert_id}|{target}": now})
            elif state == "sent":
                pipe.zrem(self.key("deadletter"), f"{alert_id}|{target}")
            return True

        return bool(self.r.transaction(update, key, value_from_callable=True))  # type: ignore[arg-type]

    # ---- the claim on one delivery -----------------------------------------------------------

    def claim(self, alert_id: str, target: str, ttl_s: float) -> str | None:
        """Claim the sending of ``alert_id`` to ``target`` for ``ttl_s``: a token, or None when another
        worker holds it. The claim expires by itself if its holder dies."""
        token = secrets.token_hex(8)
        ok = self.r.set(self.key("claim", f"{alert_id}|{target}"), token, nx=True, px=max(1, int(ttl_s * 1000)))
        return token if ok else None

    def unclaim(self, alert_id: str, target: str, token: str) -> None:
        """Give the claim up (only if it is still ours), so a retry can take it at once."""
        self._release(keys=[self.key("claim", f"{alert_id}|{target}")], args=[token])

    def dead_letters(self) -> list[tuple[str, str]]:
        """(alert id, target) pairs whose delivery gave up, oldest first."""
        return _pairs(cast(list[str], self.r.zrange(self.key("deadletter"), 0, -1)))

    def take_dead_letters(self, alert_id: str | None = None) -> list[tuple[str, str]]:
        """Remove and return dead letters (of one alert, or all) so they can be sent again."""
        taken = [(a, t) for a, t in self.dead_letters() if alert_id is None or a == alert_id]
        if taken:
            self.r.zrem(self.key("deadletter"), *(f"{a}|{t}" for a, t in taken))
        return taken

    # ---- the monitor's lock ------------------------------------------------------------------

    def acquire(self, name: str, token: str, ttl_s: float) -> bool:
        return bool(self.r.set(self.key("lock", name), token, nx=True, px=int(ttl_s * 1000)))

    def release(self, name: str, token: str) -> None:
        self._release(keys=[self.key("lock", name)], args=[token])


def _pairs(members: list[str] | list[bytes]) -> list[tuple[str, str]]:
    """Members "{alert id}|{target}" as (alert id, target) pairs."""
    out = []
    for m in members:
        a, _, t = (m.decode() if isinstance(m, bytes) else m).partition("|")
        out.append((a, t))
    return out
