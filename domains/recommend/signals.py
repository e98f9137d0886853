"""Behavioural signals: popularity with recency decay, and co-visitation.

Two implementations of one ``Signals`` protocol: ``apps.recommend.signals.RedisSignals`` serves the
API (live events by API and files), ``MemorySignals`` here serves the offline evaluation and ranker
training (a whole event log at once). Both take their numbers from the same functions below, so a
blend trained offline sees the features the server computes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Protocol

import numpy as np

from domains.recommend.prompt import LIKED_ABOVE
from domains.recommend.records import Event

WEIGHTS = {"view": 0.5, "click": 1.0, "cart": 2.0, "purchase": 3.0}
BACKWARD = 0.5  # co-visitation weight of "seen before" relative to "seen after"


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
