"""TALLRec-style "will this user like X?" rows.

Training rows come from MovieLens ml-latest-small: for a user's rating at time t, the history is the
10 ratings just before it, split into liked (rating > 3) and disliked titles, exactly as in the
TALLRec movie prompts; the answer is Yes when the target's rating is above 3. The TALLRec movie
valid prompts (built from ml-100k users) are the evaluation set; we never train on ml-100k.
"""

from __future__ import annotations

import csv
import itertools
import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

INSTRUCTION = (
    "Given the user's preference and unpreference, identify whether the user will like the target movie "
    'by answering "Yes." or "No.".'
)
TARGET_LEAD = "Whether the user will like the target movie"
HISTORY = 10
LIKED_ABOVE = 3.0


@dataclass(frozen=True)
class PreferencePrompt:
    liked: tuple[str, ...]
    disliked: tuple[str, ...]
    target: str
    label: str  # "Yes" or "No"

    def history_text(self) -> str:
        liked = ", ".join(f'"{t}"' for t in self.liked)
        disliked = ", ".join(f'"{t}"' for t in self.disliked)
        return f"User Preference: {liked}\nUser Unpreference: {disliked}\n"

    def target_text(self) -> str:
        return f'{TARGET_LEAD} "{self.target}"?'

    def text(self) -> str:
        return self.history_text() + self.target_text()


_QUOTED = re.compile(r'"([^"]+)"')


def read_tallrec(path: Path) -> list[PreferencePrompt]:
    rows = []
    for item in json.loads(path.read_text()):
        pref, rest = item["input"].split("User Unpreference:", 1)
        unpref, target = rest.split("Whether the user will like the target", 1)
        [title] = _QUOTED.findall(target)[:1] or [""]
        rows.append(
            PreferencePrompt(
                liked=tuple(_QUOTED.findall(pref)),
                disliked=tuple(_QUOTED.findall(unpref)),
                target=title,
                label="Yes" if item["output"].strip().lower().startswith("yes") else "No",
            )
        )
    return rows


def read_movielens(ratings_path: Path, movies_path: Path) -> dict[int, list[tuple[int, str, float]]]:
    """user -> [(timestamp, title, rating)] in time order."""
    with movies_path.open(encoding="utf-8", newline="") as fh:
        titles = {int(r["movieId"]): r["title"].strip() for r in csv.DictReader(fh)}
    history: dict[int, list[tuple[int, str, float]]] = defaultdict(list)
    with ratings_path.open(encoding="utf-8", newline="") as fh:
        for r in csv.DictReader(fh):
            movie = int(r["movieId"])
            if movie in titles:
                history[int(r["userId"])].append((int(r["timestamp"]), titles[movie], float(r["rating"])))
    for events in history.values():
        events.sort(key=lambda e: (e[0], e[1]))
    return dict(history)


_YEAR = re.compile(r"\((\d{4})\)\s*$")


def released_by(history: dict[int, list[tuple[int, str, float]]], year: int) -> dict[int, list[tuple[int, str, float]]]:
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
    window = events[t - HISTORY : t]
    liked = tuple(title for _, title, r in window if r > LIKED_ABOVE)
    disliked = tuple(title for _, title, r in window if r <= LIKED_ABOVE)
    return [
        PreferencePrompt(liked, disliked, target, "Yes" if rating > LIKED_ABOVE else "No")
        for _, target, rating in events[t : t + targets]
    ]


def movielens_prompts(
    history: dict[int, list[tuple[int, str, float]]], *, per_user: int, seed: int
) -> list[PreferencePrompt]:
    """Up to ``per_user`` prompts per user, each target after at least 10 earlier ratings."""
    rng = random.Random(seed)
    out = []
    for user in sorted(history):
        events = history[user]
        positions = list(range(HISTORY, len(events)))
        rng.shuffle(positions)
        out += [window_prompts(events, t, 1)[0] for t in positions[:per_user]]
    rng.shuffle(out)
    return out


def movielens_groups(
    history: dict[int, list[tuple[int, str, float]]], *, windows_per_user: int, targets_per_window: int, seed: int
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
    history: dict[int, list[tuple[int, str, float]]],
    *,
    windows_per_user: int,
    negatives: int,
    seed: int,
    holdout_last: int = 2,
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
        rng.shuffle(positions)
        for t in positions[:windows_per_user]:
            head = window_prompts(events, t, 1)[0]
            picked: list[str] = []
            while len(picked) < negatives:
                for title in rng.choices(titles, cum_weights=cumulative, k=2 * negatives):
                    if title not in seen and title not in picked and len(picked) < negatives:
                        picked.append(title)
            rows = [PreferencePrompt(head.liked, head.disliked, head.target, "Yes")]
            rows += [PreferencePrompt(head.liked, head.disliked, title, "No") for title in picked]
            rng.shuffle(rows)
            out.append(rows)
    rng.shuffle(out)
    return out


def like_rates(history: dict[int, list[tuple[int, str, float]]]) -> dict[str, tuple[int, int]]:
    """title -> (likes, ratings): the popularity baseline's statistics."""
    stats: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for events in history.values():
        for _, title, rating in events:
            stats[title][0] += int(rating > LIKED_ABOVE)
            stats[title][1] += 1
    return {t: (s[0], s[1]) for t, s in stats.items()}
