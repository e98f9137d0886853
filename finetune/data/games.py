"""Training groups for the Games adapter (``recommend-games``): the product wording, asked "will
the shopper choose this product next?".

A group is one history window and eight targets that share it (one pass over the history, as the
storefront scores its shortlist): the product the user bought next (Yes) and seven the user never
bought (No). Four of the seven are hard: drawn from the 50 products most co-purchased with the
window (item-kNN), which is where the recommender's shortlist comes from, so the adapter learns to
tell the real next product from the ones the pipeline would put next to it. Three are drawn by
popularity.

Only the fit histories are used (each user's sequence less its last item; ``domains.recommend.games``):
no user's held-out last item is ever a target or in a window. The dev rows, which pick the
checkpoint, are the dev users' last items against negatives drawn the same way; the report users'
last items are never read here.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from domains.recommend.games import GamesSplit
from domains.recommend.prompt import HISTORY, NEGATIVE, POSITIVE, PreferencePrompt, item_text
from finetune.evals.games_baselines import ItemKNN

HARD_POOL = 50  # hard negatives come from the window's top co-purchased products


@dataclass
class GamesTraining:
    groups: list[list[PreferencePrompt]]  # shared-prefix groups from the fit histories
    dev_rows: list[PreferencePrompt]  # the dev users' last items and their negatives


class NegativeSampler:
    """Products a user never bought: ``hard`` from the window's item-kNN neighbours, the rest by
    popularity (number of fit histories that hold the product)."""

    def __init__(self, histories: dict[str, list[str]], item_ids: list[str], seed: int) -> None:
        self.rng = random.Random(seed)
        self.knn = ItemKNN(histories, item_ids)
        self.ids = item_ids
        counts = np.zeros(len(item_ids))
        for items in histories.values():
            for i in set(items):
                counts[self.knn.col[i]] += 1
        self.cumulative = list(itertools.accumulate(counts.tolist()))

    def sample(self, window: Sequence[str], exclude: set[str], negatives: int, hard: int) -> list[str]:
        picked: list[str] = []
        if hard > 0 and window:
            cols = [self.knn.col[i] for i in window]
            weights = np.asarray([self.knn.decay ** (len(cols) - 1 - k) for k in range(len(cols))])
            scores = np.asarray(self.knn.sim[cols].T @ weights).ravel()  # [items]
            top = [self.ids[c] for c in np.argsort(-scores)[: HARD_POOL + len(exclude)] if scores[c] > 0]
            pool = [i for i in top if i not in exclude][:HARD_POOL]
            picked = self.rng.sample(pool, min(hard, len(pool)))
        while len(picked) < negatives:
            for item in self.rng.choices(self.ids, cum_weights=self.cumulative, k=2 * negatives):
                if item not in exclude and item not in picked and len(picked) < negatives:
                    picked.append(item)
        return picked


def games_training(
    split: GamesSplit,
    titles: dict[str, str],
    item_ids: list[str],
    *,
    groups: int,
    dev_rows: int,
    negatives: int = 7,
    hard: int = 4,
    windows_per_user: int = 1,
    seed: int = 42,
) -> GamesTraining:
    """Up to ``groups`` training groups (``windows_per_user`` windows of randomly drawn users) and
    ``dev_rows`` dev rows, in the product wording's item names."""
    if not 0 <= hard <= negatives:
        raise ValueError(f"hard negatives must be between 0 and {negatives}, got {hard}")
    rng = random.Random(seed)
    sampler = NegativeSampler(split.history, item_ids, seed)

    def name(item: str) -> str:
        return item_text(titles[item])

    def group(window: Sequence[str], target: str, exclude: set[str]) -> list[PreferencePrompt]:
        liked = tuple(name(i) for i in window[-HISTORY:])
        rows = [PreferencePrompt(liked, (), name(target), POSITIVE)]
        rows += [
            PreferencePrompt(liked, (), name(n), NEGATIVE)
            for n in sampler.sample(window[-HISTORY:], exclude, negatives, hard)
        ]
        rng.shuffle(rows)
        return rows

    users = [u for u in split.history if len(split.history[u]) >= 2]
    rng.shuffle(users)
    out: list[list[PreferencePrompt]] = []
    for user in users:
        history = split.history[user]
        positions = list(range(1, len(history)))
        rng.shuffle(positions)
        for t in positions[:windows_per_user]:
            out.append(group(history[:t], history[t], set(history)))
        if len(out) >= groups:
            break
    dev: list[PreferencePrompt] = []
    for user in sorted(split.dev, key=lambda u: random.Random(f"{seed}:{u}").random()):
        if len(dev) >= dev_rows:
            break
        history = split.history[user]
        dev += group(history, split.target[user], set(history) | {split.target[user]})
    return GamesTraining(out[:groups], dev[:dev_rows])
