"""Behavioural signals: per-user history, popularity with recency decay, co-visitation.

Two implementations of one ``Signals`` protocol: ``RedisSignals`` serves the API (live events by
API and files), ``MemorySignals`` serves the offline evaluation and ranker training (a whole event
log at once). Both take their numbers from the same functions below, so a model trained offline
sees the features the server computes.

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
from typing import Any, Protocol

import numpy as np
import redis

from apps.recommend.items import Event

WEIGHTS = {"view": 0.5, "click": 1.0, "cart": 2.0, "purchase": 3.0}
LIKED_ABOVE = 3.0  # TALLRec: a rating above 3 is a like
BACKWARD = 0.5  # co-visitation weight of "seen before" relative to "seen after"
REBASE_AT = 400.0  # 2^400 is far from float overflow (2^1024); move the epoch before then


def event_weight(event: Event) -> float:
    """How much an event says about interest; a disliked rating still counts a little as a visit."""
    if event.type == "rating":
        return 1.5 if (event.value or 0.0) > LIKED_ABOVE else 0.5
    return WEIGHTS[event.type]


def is_disliked(event: Event) -> bool:
    return event.type == "rating" and (event.value or 0.0) <= LIKED_ABOVE


def covis_pairs(previous: list[str], item: str, weight: float, window: int) -> Iterable[tuple[str, str, float]]:
    """(from, to, weight) pairs added when ``item`` follows ``previous`` (oldest first) for one user."""
    seen: set[str] = {item}
    distance = 0
    for prev in reversed(previous):
        if prev in seen:
            continue
        seen.add(prev)
        distance += 1
        if distance > window:
            break
        w = weight / distance
        yield prev, item, w
        yield item, prev, w * BACKWARD


class Signals(Protocol):
    def popular(self, n: int, now: float, category: str | None = None) -> list[tuple[str, float]]: ...

    def popularity(self, ids: list[str], now: float) -> np.ndarray: ...

    def covisited(self, seeds: list[tuple[str, float]], n: int) -> dict[str, dict[str, float]]:
        """candidate -> {seed: weighted co-visitation}, over each seed's top ``n``."""
        ...

    def covis_with(self, seeds: list[tuple[str, float]], ids: list[str]) -> np.ndarray:
        """[len(ids)] weighted co-visitation of each item with the seeds (exact, any item)."""
        ...


class MemorySignals:
    """Signals from an event log held in memory (evaluation, ranker training)."""

    def __init__(self, half_life_s: float, window: int, categories: dict[str, str] | None = None) -> None:
        self.half_life_s = half_life_s
        self.window = window
        self.categories = categories or {}
        self.covis: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._code: dict[str, int] = {}
        self._names: list[str] = []
        self._rows: list[tuple[int, float, float]] = []  # (item code, ts, weight) per event
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._cache: tuple[float, np.ndarray] | None = None

    @classmethod
    def from_histories(
        cls,
        histories: dict[str, list[Event]],
        half_life_s: float,
        window: int,
        categories: dict[str, str] | None = None,
    ) -> MemorySignals:
        """``histories``: user -> events in time order."""
        signals = cls(half_life_s, window, categories)
        for events in histories.values():
            previous: list[str] = []
            for e in events:
                signals.add(e, previous)
                previous.append(e.item_id)
        return signals

    def add(self, event: Event, previous: list[str]) -> None:
        w = event_weight(event)
        code = self._code.setdefault(event.item_id, len(self._names))
        if code == len(self._names):
            self._names.append(event.item_id)
        self._rows.append((code, event.ts, w))
        self._arrays = None
        self._cache = None
        for a, b, pw in covis_pairs(previous, event.item_id, w, self.window):
            self.covis[a][b] += pw

    def _decayed(self, now: float) -> np.ndarray:
        """[n_items] decayed popularity at ``now``, counting only events up to ``now``."""
        if self._cache is None or self._cache[0] != now:
            if self._arrays is None:
                rows = np.asarray(self._rows, dtype=np.float64).reshape(-1, 3)
                self._arrays = (rows[:, 0].astype(np.int64), rows[:, 1], rows[:, 2])
            codes, ts, w = self._arrays
            keep = ts <= now
            weights = w[keep] * np.exp2(-(now - ts[keep]) / self.half_life_s)
            self._cache = (now, np.bincount(codes[keep], weights, minlength=len(self._names)))
        return self._cache[1]

    def popular(self, n: int, now: float, category: str | None = None) -> list[tuple[str, float]]:
        pop = self._decayed(now)
        order = np.argsort(-pop, kind="stable")
        out: list[tuple[str, float]] = []
        for code in order:
            if pop[code] <= 0 or len(out) >= n:
                break
            name = self._names[code]
            if category is None or self.categories.get(name) == category:
                out.append((name, float(pop[code])))
        return out

    def popularity(self, ids: list[str], now: float) -> np.ndarray:
        pop = self._decayed(now)
        return np.asarray([pop[self._code[i]] if i in self._code else 0.0 for i in ids], dtype=np.float64)

    def covisited(self, seeds: list[tuple[str, float]], n: int) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = defaultdict(dict)
        for seed, weight in seeds:
            row = self.covis.get(seed)
            if not row:
                continue
            for item, score in sorted(row.items(), key=lambda p: -p[1])[:n]:
                out[item][seed] = out[item].get(seed, 0.0) + score * weight
        return dict(out)

    def covis_with(self, seeds: list[tuple[str, float]], ids: list[str]) -> np.ndarray:
        out = np.zeros(len(ids))
        for seed, weight in seeds:
            row = self.covis.get(seed)
            if row:
                out += weight * np.asarray([row.get(i, 0.0) for i in ids])
        return out


class RedisSignals:
    """Signals and per-user state in Redis, updated as events arrive."""

    def __init__(self, client: redis.Redis, namespace: str, *, half_life_s: float, window: int, history_len: int):
        self.client: Any = client  # redis-py's sync/async union types are noise here
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
