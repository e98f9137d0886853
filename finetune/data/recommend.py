"""Training rows for the recommend adapters (TALLRec-style "will this user like X?").

Training rows come from MovieLens ml-latest-small, read by ``domains.recommend.movielens`` (the
reader the ranking evaluation uses too): for a user's rating at time t, the history is the 10
ratings just before it, split into liked (rating > 3) and disliked titles, exactly as in the TALLRec
movie prompts; the answer is Yes when the target's rating is above 3. The TALLRec movie valid prompts
(built from ml-100k users) are the evaluation set; we never train on ml-100k. The prompt itself, its
labels and the like threshold are the domain's (``domains.recommend.prompt``).

``history`` below is ``MovieLens.title_ratings()``: user -> [(timestamp, title, rating)] in order.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections import defaultdict
from dataclasses import dataclass

from domains.recommend.movielens import HELD_OUT, without_held_out
from domains.recommend.prompt import HISTORY, LIKED_ABOVE, NEGATIVE, POSITIVE, PreferencePrompt, split_window
from finetune.config import ConfigError, TrainConfig

History = dict[int, list[tuple[int, str, float]]]

_YEAR = re.compile(r"\((\d{4})\)\s*$")


def released_by(history: History, year: int) -> History:
    """Each user's ratings of titles released in or before ``year`` (a title without a year is
    dropped), in the same order. ml-100k, where the TALLRec prompts come from, ends at 1998: the
    same cut gives the training windows that catalogue's titles, each seen many more times."""
    out = {}
    for user, events in history.items():
        kept = [e for e in events if (m := _YEAR.search(e[1])) is not None and int(m.group(1)) <= year]
        if kept:
            out[user] = kept
    return out


def window_prompts(events: list[tuple[int, str, float]], t: int, targets: int) -> list[PreferencePrompt]:
    """The 10 ratings before position t as liked / disliked titles, and a prompt for each of the
    ``targets`` ratings from t on."""
    liked, disliked = split_window([(title, r) for _, title, r in events[t - HISTORY : t]], HISTORY, LIKED_ABOVE)
    return [
        PreferencePrompt(tuple(liked), tuple(disliked), target, POSITIVE if rating > LIKED_ABOVE else NEGATIVE)
        for _, target, rating in events[t : t + targets]
    ]


def movielens_prompts(history: History, *, per_user: int, seed: int) -> list[PreferencePrompt]:
    """Up to ``per_user`` prompts per user, each target after at least 10 earlier ratings."""
    return [g[0] for g in movielens_groups(history, windows_per_user=per_user, targets_per_window=1, seed=seed)]


def movielens_groups(
    history: History, *, windows_per_user: int, targets_per_window: int, seed: int
) -> list[list[PreferencePrompt]]:
    """Groups of prompts that share one history window: the 10 ratings before position t, then the
    targets at t, t+1, ... (up to ``targets_per_window``). One group trains several labels with one
    pass over the ~200-token history, which is most of a prompt's cost."""
    rng = random.Random(seed)
    out = []
    for user in sorted(history):
        events = history[user]
        positions = list(range(HISTORY, len(events)))
        rng.shuffle(positions)
        out += [window_prompts(events, t, targets_per_window) for t in positions[:windows_per_user]]
    rng.shuffle(out)
    return out


def next_item_groups(
    history: History,
    *,
    windows_per_user: int,
    negatives: int,
    seed: int,
    holdout_last: int = HELD_OUT,
) -> list[list[PreferencePrompt]]:
    """Groups for the next-item objective, in the same prompt: the 10 ratings before position t,
    then the title the user rated at t (Yes, whatever the rating) and ``negatives`` titles the user
    never rated, drawn by popularity (No), shuffled. Popular negatives are what the recommender's
    candidate sources put next to the real next item. A user's last ``holdout_last`` ratings are
    never targets: they are the ranking evaluation's validation and test items."""
    rng = random.Random(seed)
    rates = like_rates(history)
    titles = sorted(rates)
    cumulative = list(itertools.accumulate(rates[t][1] for t in titles))  # by number of ratings
    out = []
    for user in sorted(history):
        events = history[user]
        seen = {title for _, title, _ in events}
        positions = list(range(HISTORY, len(events) - holdout_last))
        if positions and len(titles) - len(seen) < negatives:
            raise ValueError(f"user {user} has rated all but {len(titles) - len(seen)} titles: too few negatives")
        rng.shuffle(positions)
        for t in positions[:windows_per_user]:
            head = window_prompts(events, t, 1)[0]
            picked: list[str] = []
            while len(picked) < negatives:
                for title in rng.choices(titles, cum_weights=cumulative, k=2 * negatives):
                    if title not in seen and title not in picked and len(picked) < negatives:
                        picked.append(title)
            rows = [PreferencePrompt(head.liked, head.disliked, head.target, POSITIVE)]
            rows += [PreferencePrompt(head.liked, head.disliked, title, NEGATIVE) for title in picked]
            rng.shuffle(rows)
            out.append(rows)
    rng.shuffle(out)
    return out


def like_rates(history: History) -> dict[str, tuple[int, int]]:
    """title -> (likes, ratings): the popularity baseline's statistics."""
    stats: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for events in history.values():
        for _, title, rating in events:
            stats[title][0] += int(rating > LIKED_ABOVE)
            stats[title][1] += 1
    return {t: (s[0], s[1]) for t, s in stats.items()}


# ---- the whole training set of one config --------------------------------------------------------


@dataclass
class TrainingSet:
    groups: list[list[PreferencePrompt]]  # shared-prefix groups (one history window each), or
    rows: list[PreferencePrompt]  # single prompts (when the config trains without groups)
    dev_rows: list[PreferencePrompt]  # from dev users, never trained on

    def targets(self) -> list[PreferencePrompt]:
        return [r for g in self.groups for r in g] + self.rows + self.dev_rows


def assemble(history: History, config: TrainConfig) -> TrainingSet:
    """The rows a recommend config trains and selects on, from ``MovieLens.title_ratings()``.

    options: ``objective`` (like: will the user like the target; next_item: was it the user's next
    title), ``holdout_last`` (each user's last ratings, never a target nor in a history window;
    default HELD_OUT, the ranking evaluation's validation and test items), ``released_by``,
    ``targets_per_window``, ``windows_per_user``, ``per_user``, ``negatives``. 10% of users are dev
    users, never trained on."""
    options = config.options
    next_item = options.get("objective", "like") == "next_item"
    holdout_last = int(options.get("holdout_last", HELD_OUT))
    if not next_item:  # next_item_groups holds them out itself: it needs them to pick no rated negative
        history = {u: without_held_out(e, holdout_last) for u, e in history.items() if len(e) > holdout_last}
    if options.get("released_by") is not None:
        if next_item:  # next_item_groups would hold out the last ratings of the filtered list, not the user's
            raise ConfigError("options.released_by is for the like objective; next_item holds out unfiltered ratings")
        history = released_by(history, int(options["released_by"]))
    users = sorted(history)
    rng = random.Random(config.seed)
    dev_users = set(rng.sample(users, max(1, len(users) // 10)))
    train_history = {u: history[u] for u in users if u not in dev_users}
    dev_history = {u: history[u] for u in dev_users}
    windows = int(options.get("windows_per_user", 10))
    targets_per_window = int(options.get("targets_per_window", 1))
    limit = config.max_train_rows or None  # counts groups when training on groups
    if next_item:  # "was this the user's next title?": the ranking pipeline's question
        negatives = int(options.get("negatives", 7))
        dev_groups = next_item_groups(
            dev_history, windows_per_user=3, negatives=negatives, seed=config.seed, holdout_last=holdout_last
        )
        groups = next_item_groups(
            train_history, windows_per_user=windows, negatives=negatives, seed=config.seed, holdout_last=holdout_last
        )
        return TrainingSet(groups[:limit], [], [r for g in dev_groups for r in g][: config.dev_rows])
    per_user = max(3, math.ceil(config.dev_rows / len(dev_users)))
    dev_rows = movielens_prompts(dev_history, per_user=per_user, seed=config.seed)[: config.dev_rows]
    if targets_per_window > 1:
        groups = movielens_groups(
            train_history, windows_per_user=windows, targets_per_window=targets_per_window, seed=config.seed
        )
        return TrainingSet(groups[:limit], [], dev_rows)
    rows = movielens_prompts(train_history, per_user=int(options.get("per_user", 20)), seed=config.seed)
    return TrainingSet([], rows[:limit], dev_rows)
