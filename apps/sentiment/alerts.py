"""Alerts and their deliveries, in Redis.

    {ns}:alert:{id}       string  the alert, JSON
    {ns}:alerts           zset    alert ids by fire time
    {ns}:lastfired        hash    "{rule}|{scope}" -> time it last fired (dedup and cooldown)
    {ns}:delivery:{id}    hash    target -> {"state": sent|failed|dead, "attempts", "error", "at"}
    {ns}:deadletter       zset    "{id}|{target}" by the time the target gave up

Firing is one Lua step that checks the (rule, scope) cooldown and stores the alert together: two
monitors evaluating at once (two beats, a retried task) store one alert, never two. The cooldown is
measured on the monitor's clock, not Redis TTLs, so a replay on historical time behaves as live.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis

from core.redis_client import NamespacedStore

_FIRE = """
local last = redis.call('HGET', KEYS[1], ARGV[1])
if last and math.abs(tonumber(ARGV[2]) - tonumber(last)) < tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[5])
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

    def fire(self, alert: Alert, cooldown_s: float) -> bool:
        """Store the alert unless its (rule, scope) fired less than ``cooldown_s`` ago."""
        return bool(
            self._fire(
                keys=[self.key("lastfired"), self.key("alert", alert.id), self.key("alerts")],
                args=[f"{alert.rule}|{alert.scope}", alert.fired_at, cooldown_s, json.dumps(alert.to_dict()), alert.id],
            )
        )

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

    # ---- deliveries --------------------------------------------------------------------------

    def delivery(self, alert_id: str) -> dict[str, dict[str, Any]]:
        raw = cast(dict[str, str], self.r.hgetall(self.key("delivery", alert_id)))
        return {k: json.loads(v) for k, v in raw.items()}

    def delivered(self, alert_id: str, target: str) -> bool:
        raw = cast(str | None, self.r.hget(self.key("delivery", alert_id), target))
        return raw is not None and json.loads(raw).get("state") == "sent"

    def record(self, alert_id: str, target: str, state: str, error: str | None = None) -> None:
        previous = self.delivery(alert_id).get(target, {})
        attempts = int(previous.get("attempts", 0)) + (state != "dead")  # giving up is not another attempt
        status = {"state": state, "attempts": attempts, "error": error or previous.get("error"), "at": time.time()}
        pipe = self.r.pipeline()
        pipe.hset(self.key("delivery", alert_id), target, json.dumps(status))
        if state == "dead":
            pipe.zadd(self.key("deadletter"), {f"{alert_id}|{target}": time.time()})
        elif state == "sent":
            pipe.zrem(self.key("deadletter"), f"{alert_id}|{target}")
        pipe.execute()

    def dead_letters(self) -> list[tuple[str, str]]:
        """(alert id, target) pairs whose delivery gave up, oldest first."""
        members = cast(list[str], self.r.zrange(self.key("deadletter"), 0, -1))
        return [(a, t) for a, _, t in (m.partition("|") for m in members)]

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
