"""Business rules, diversity and reasons: what may be shown, in what order, and why.

Rules are hard: an item that breaks one never reaches the list, whatever its score. MMR then trades
relevance against similarity to what is already picked (``lambda`` 1: relevance only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from domains.recommend.records import Item


@dataclass(frozen=True)
class Filters:
    category: str | None = None
    price_min: float | None = None
    price_max: float | None = None
    exclude: frozenset[str] = field(default_factory=frozenset)


def allowed(item: Item, filters: Filters, blocked: set[str]) -> bool:
    """In stock, not blocked for this user (purchased, shown, seen), and inside the request's filters."""
    if not item.in_stock or item.id in blocked or item.id in filters.exclude:
        return False
    if filters.category is not None and item.category.lower() != filters.category.lower():
        return False
    if filters.price_min is not None and (item.price is None or item.price < filters.price_min):
        return False
    return not (filters.price_max is not None and (item.price is None or item.price > filters.price_max))


def mmr(relevance: np.ndarray, vectors: np.ndarray, k: int, lam: float) -> list[int]:
    """Indices of ``k`` picks by maximal marginal relevance.

    relevance: [n] (any scale; min-max normalised here), vectors: [n, dim] unit rows.
    Each pick maximises lam * relevance - (1 - lam) * max cosine to the picks so far."""
    n = len(relevance)
    if n == 0 or k <= 0:
        return []
    span = float(relevance.max() - relevance.min())
    rel = (relevance - relevance.min()) / span if span > 0 else np.ones(n)
    sims = vectors @ vectors.T  # [n, n]
    picked: list[int] = []
    closest = np.full(n, -np.inf)
    available = np.ones(n, dtype=bool)
    for _ in range(min(k, n)):
        penalty = np.where(np.isfinite(closest), closest, 0.0)
        gain = lam * rel - (1.0 - lam) * penalty
        gain[~available] = -np.inf
        best = int(np.argmax(gain))
        picked.append(best)
        available[best] = False
        closest = np.maximum(closest, sims[best])
    return picked


LIKED_VERBS = {"purchase": "bought", "cart": "added", "click": "looked at", "view": "viewed", "rating": "liked"}


@dataclass
class Evidence:
    """What brought a candidate here, for its reason and for the stats' "source"."""

    seed_sim: tuple[str, float] | None = None  # (history item, cosine) most similar
    seed_covis: tuple[str, float] | None = None  # (history item, weight) most co-visited
    context: float = 0.0
    popular: bool = False


def reason_for(
    evidence: Evidence, item: Item, titles: dict[str, str], verbs: dict[str, str], context_title: str | None
) -> tuple[str, str]:
    """(reason, source); source is one of context, covisit, similar, popular."""
    if context_title and evidence.context >= 0.5:
        return f"similar to {context_title}", "context"
    if evidence.seed_covis is not None and evidence.seed_covis[0] in titles:
        seed = evidence.seed_covis[0]
        return f"often chosen together with {titles[seed]}", "covisit"
    if evidence.seed_sim is not None and evidence.seed_sim[1] >= 0.3 and evidence.seed_sim[0] in titles:
        seed = evidence.seed_sim[0]
        return f"because you {verbs.get(seed, 'liked')} {titles[seed]}", "similar"
    if evidence.popular:
        return (f"popular in {item.category}" if item.category else "popular right now"), "popular"
    # filler from a thin catalogue or the diversity pass: say no more than we know
    return (f"more from {item.category}" if item.category else "you may also like this"), "popular"
