"""The live signals in Redis: per-user history, popularity with recency decay, co-visitation.

``RedisSignals`` implements ``domains.recommend.signals.Signals`` for the API, with the same
weights and pair rules as the in-memory signals the offline evaluation and ranker training use.

Redis keys (``{ns}`` is the namespace):

    {ns}:u:{user}:h   list  the user's recent events (Event JSON), newest pushed first, trimmed
    {ns}:u:{user}:x   set   items the user may not be shown again (purchased, by default)
    {ns}:u:{user}:s   zset  items shown to the user, by time shown
    {ns}:pop          zset  item -> sum of weight * 2^((ts - epoch) / half_life) (decay without rewrites)
    {ns}:pop:c:{cat}  zset  the same per category
    {ns}:pop:epoch    str   the epoch of those scores (moved forward by ``rebase`` long before overflow)
    {ns}:cv:{item}    zset  co-visitation: items seen after (weight 1/d) or before (half) this one
    {ns}:log          stream every accepted event, for ``train-ranker``
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
import redis

from domains.recommend.records import Event
from domains.recommend.signals import covis_pairs, event_weight

REBASE_AT = 400.0  # 2^400 is far from float overflow (2^1024); move the epoch before then


class RedisSignals:
    """Signals and per-user state in Redis, updated as events arrive."""

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        *,
        half_life_s: float,
        window: int,
        history_len: int,
        user_ttl_s: int = 365 * 86400,
    ):
        self.client: Any = client  # redis-py's sync/async union types are noise here
        self.user_ttl_s = user_ttl_s
        self.ns = namespace
        self.half_life_s = half_life_s
        self.window = window
        self.history_len = history_len

    def _key(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    # ---- per user ------------------------------------------------------------------------------

    def history(self, user: str) -> list[Event]:
        """The user's recent events, newest first."""
        raw = self.client.lrange(self._key("u", user, "h"), 0, self.history_len - 1)
        return sorted((Event.from_json(r) for r in raw), key=lambda e: -e.ts)

    def excluded(self, user: str) -> set[str]:
        return {m.decode() for m in self.client.smembers(self._key("u", user, "x"))}

    def shown(self, user: str, since: float) -> set[str]:
        raw = self.client.zrangebyscore(self._key("u", user, "s"), since, "+inf")
        return {m.decode() for m in raw}

    def mark_shown(self, user: str, items: list[str], now: float, ttl_s: float) -> None:
        if not items:
            return
        key = self._key("u", user, "s")
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(key, dict.fromkeys(items, now))
        pipe.zremrangebyscore(key, "-inf", now - ttl_s)
        pipe.expire(key, max(1, int(ttl_s) + 60))
        pipe.execute()

    # ---- recording -----------------------------------------------------------------------------

    def _epoch(self) -> float:
        raw = self.client.get(self._key("pop", "epoch"))
        if raw is None:
            self.client.setnx(self._key("pop", "epoch"), "1577836800")  # 2020-01-01: any fixed past time
            raw = self.client.get(self._key("pop", "epoch"))
        return float(raw or 0)

    def record(self, events: list[Event], categories: dict[str, str], exclude_types: Iterable[str]) -> None:
        """Apply ``events`` (any order, several users) to histories, popularity and co-visitation."""
        if not events:
            return
        epoch = self._epoch()
        if max(e.ts for e in events) - epoch > REBASE_AT * self.half_life_s:
            epoch = self.rebase(max(e.ts for e in events) - self.half_life_s)
        exclude = set(exclude_types)
        users = sorted({e.user_id for e in events})
        pipe = self.client.pipeline(transaction=False)
        for u in users:
            pipe.lrange(self._key("u", u, "h"), 0, self.window - 1)
        previous = {
            u: [e.item_id for e in sorted((Event.from_json(r) for r in raw), key=lambda e: e.ts)]
            for u, raw in zip(users, pipe.execute(), strict=True)
        }
        pipe = self.client.pipeline(transaction=False)
        for e in sorted(events, key=lambda e: e.ts):
            w = event_weight(e)
            hist = self._key("u", e.user_id, "h")
            pipe.lpush(hist, e.to_json())
            pipe.ltrim(hist, 0, self.history_len - 1)
            if e.type in exclude:
                pipe.sadd(self._key("u", e.user_id, "x"), e.item_id)
            boosted = w * math.pow(2.0, (e.ts - epoch) / self.half_life_s)
            pipe.zincrby(self._key("pop"), boosted, e.item_id)
            if categories.get(e.item_id):
                pipe.zincrby(self._key("pop", "c", categories[e.item_id]), boosted, e.item_id)
            for a, b, pw in covis_pairs(previous[e.user_id], e.item_id, w, self.window):
                pipe.zincrby(self._key("cv", a), pw, b)
            previous[e.user_id] = [*previous[e.user_id][-self.window :], e.item_id]
            pipe.expire(hist, self.user_ttl_s)  # a user gone quiet this long is forgotten
            if e.type in exclude:
                pipe.expire(self._key("u", e.user_id, "x"), self.user_ttl_s)
            pipe.xadd(self._key("log"), {"e": e.to_json()}, maxlen=1_000_000, approximate=True)
        pipe.execute()

    def rebase(self, new_epoch: float) -> float:
        """Move the popularity epoch forward, scaling every stored score to match (rare: years apart)."""
        old = self._epoch()
        factor = math.pow(2.0, -(new_epoch - old) / self.half_life_s)
        for key in [self._key("pop"), *self.client.scan_iter(match=self._key("pop", "c", "*"))]:
            scores = self.client.zrange(key, 0, -1, withscores=True)
            if scores:
                self.client.zadd(key, {m: s * factor for m, s in scores})
        self.client.set(self._key("pop", "epoch"), repr(new_epoch))
        return new_epoch

    def forget_items(self, ids: list[str]) -> None:
        """Drop deleted items from popularity and co-visitation (histories keep them: they happened)."""
        if not ids:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.zrem(self._key("pop"), *ids)
        for item in ids:
            pipe.delete(self._key("cv", item))
        pipe.execute()

    def logged_events(self, limit: int = 1_000_000) -> list[Event]:
        return [Event.from_json(fields[b"e"]) for _, fields in self.client.xrange(self._key("log"), count=limit)]

    # ---- Signals -------------------------------------------------------------------------------

    def _scale(self, now: float) -> float:
        return math.pow(2.0, -(now - self._epoch()) / self.half_life_s)

    def popular(self, n: int, now: float, category: str | None = None) -> list[tuple[str, float]]:
        key = self._key("pop", "c", category) if category else self._key("pop")
        scale = self._scale(now)
        return [(m.decode(), s * scale) for m, s in self.client.zrevrange(key, 0, n - 1, withscores=True)]

    def popularity(self, ids: list[str], now: float) -> np.ndarray:
        if not ids:
            return np.zeros(0)
        scale = self._scale(now)
        return np.asarray([(s or 0.0) * scale for s in self.client.zmscore(self._key("pop"), ids)], dtype=np.float64)

    def covisited(self, seeds: list[tuple[str, float]], n: int) -> dict[str, dict[str, float]]:
        pipe = self.client.pipeline(transaction=False)
        for seed, _ in seeds:
            pipe.zrevrange(self._key("cv", seed), 0, n - 1, withscores=True)
        out: dict[str, dict[str, float]] = defaultdict(dict)
        for (seed, weight), rows in zip(seeds, pipe.execute(), strict=True):
            for member, score in rows:
                item = member.decode()
                out[item][seed] = out[item].get(seed, 0.0) + score * weight
        return dict(out)

    def covis_with(self, seeds: list[tuple[str, float]], ids: list[str]) -> np.ndarray:
        if not ids or not seeds:
            return np.zeros(len(ids))
        pipe = self.client.pipeline(transaction=False)
        for seed, _ in seeds:
            pipe.zmscore(self._key("cv", seed), ids)
        out = np.zeros(len(ids))
        for (_, weight), scores in zip(seeds, pipe.execute(), strict=True):
            out += weight * np.asarray([s or 0.0 for s in scores])
        return out
