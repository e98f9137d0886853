"""A store's own recommend adapter: its catalogue and events in, a next-product adapter out, checked
on each user's last product. ``finetune.tasks.recommend`` exports these under the names the
orchestrator calls (``read_own``, ``split_own``, ``train_own``, ``evaluate_own``, ``guard_rows``).

    read_own     the two files (``domains.recommend.own``), strictly: a bad row stops it, naming the
                 file, the line and the problem
    split_own    each user with 3+ products holds out the last; the same files give the same split
    train_own    shared-prefix groups from the rest (the real next product, 2 co-purchased and 3
                 popular negatives), the product wording, a few minutes of CPU
    evaluate_own a served model ranks each held-out product among 9 the user never touched, through
                 the Engine protocol only; ``score`` is the mean AUC of the held-out product against them
    guard_rows   60 Games-6k dev users' last products in the same shape (None without the shared data)

The gate's cost is CPU time, twice (two models): 10 candidates a case rather than LLMRank's 20 cost
1.4 s a case instead of 2.0 on the sample store, and 1.5 s instead of 3.1 on Games' longer titles (2
cores, measured); more cases with fewer candidates tell two versions apart better than the reverse,
since most of the spread is between users. ``bench``'s Games-6k report keeps LLMRank's 20.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.config import Settings
from core.errors import AdapterNotFoundError
from core.interface import Engine
from domains.recommend.games import DATA_SUBDIR, read_games, split_games
from domains.recommend.own import MIN_SEQUENCE, read_own_files
from domains.recommend.prompt import HISTORY, NEGATIVE, POSITIVE, PRODUCT, PreferencePrompt, item_text, split_window
from domains.recommend.records import Item
from domains.recommend.scoring import BASE, LLMScorer
from domains.records import DataFileError
from finetune.config import LoraSpec, TrainConfig

SEED = 42
NEGATIVES = 9  # with the held-out product, 10 candidates a case
GUARD_CASES = 60
MAX_GROUPS = 120  # training groups: about 60 optimiser steps, 2-3 minutes on a 2-core CPU
MAX_DEV_USERS = 12
# held-out cases a gate evaluates (the same subset for both models, chosen by the user id's hash): a
# case costs over a second on a CPU, and a store's file can hold thousands of users
MAX_EVAL_CASES = 100
TRAIN_MINUTES = 2.0  # the trainer's own budget; the dev check runs once, at the end
GROUP_NEGATIVES, GROUP_HARD = 5, 2
Progress = Callable[[int, int, float], None]


@dataclass
class RecommendOwnData:
    """Products by id, each user's products in time order (first event each), the disliked ones."""

    items: dict[str, Item]
    sequences: dict[str, list[str]]
    disliked: dict[str, set[str]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        """The purchase/interaction rows the sequences hold (what "rows to train on" counts)."""
        return sum(len(s) for s in self.sequences.values())

    def item_fields(self) -> tuple[str, ...]:
        """Title, and category when most products have one: what the prompt names a product by."""
        with_category = sum(1 for i in self.items.values() if i.category)
        return ("title", "category") if with_category * 2 >= len(self.items) else ("title",)


@dataclass(frozen=True)
class HeldOutCase:
    user: str
    history: tuple[Item, ...]  # oldest first
    disliked: frozenset[str]  # ids in the history the user rated low
    target: Item  # the user's last product
    negatives: tuple[Item, ...]  # products the user never touched


@dataclass
class RecommendHeldOut:
    cases: list[HeldOutCase]
    source: str

    def __len__(self) -> int:
        return len(self.cases)


def read_own(files: list[Path]) -> RecommendOwnData:
    data = read_own_files(files)
    return RecommendOwnData(data.items, data.sequences(), data.disliked(), data.files)


def _negatives(user: str, items: list[str], exclude: set[str], n: int) -> list[str]:
    """Up to ``n`` distinct products outside ``exclude``, the same for the same user and catalogue."""
    pool = [i for i in items if i not in exclude]
    return random.Random(f"{SEED}:{user}").sample(pool, min(n, len(pool)))


def split_own(data: RecommendOwnData) -> tuple[RecommendOwnData, RecommendHeldOut]:
    """Each user with ``MIN_SEQUENCE``+ products holds out the last one; the rest train."""
    ids = sorted(data.items)
    train: dict[str, list[str]] = {}
    cases = []
    for user in sorted(data.sequences):
        sequence = data.sequences[user]
        if len(sequence) < MIN_SEQUENCE:
            train[user] = list(sequence)
            continue
        train[user] = sequence[:-1]
        negatives = _negatives(user, ids, set(sequence), NEGATIVES)
        cases.append(
            HeldOutCase(
                user=user,
                history=tuple(data.items[i] for i in sequence[:-1]),
                disliked=frozenset(data.disliked.get(user, set()) & set(sequence[:-1])),
                target=data.items[sequence[-1]],
                negatives=tuple(data.items[i] for i in negatives),
            )
        )
    return replace(data, sequences=train), RecommendHeldOut(cases, "own: each user's last product")


# ---- training --------------------------------------------------------------------------------------


def _prompt_names(
    data: RecommendOwnData, user: str, window: list[str], fields: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    disliked = data.disliked.get(user, set())
    marked = [(i, 0.0 if i in disliked else None) for i in window]
    liked_ids, disliked_ids = split_window(marked, HISTORY)

    def name(i: str) -> str:
        it = data.items[i]
        return item_text(it.title, it.category, it.price, fields)

    return tuple(name(i) for i in liked_ids), tuple(name(i) for i in disliked_ids)


def own_training_rows(
    data: RecommendOwnData, fields: tuple[str, ...], seed: int = SEED
) -> tuple[list[list[PreferencePrompt]], list[PreferencePrompt]]:
    """(groups, dev rows): a window per position of each user's training products; a few users'
    last training products are the dev rows that pick the checkpoint, never a training target."""
    from finetune.data.games import NegativeSampler

    rng = random.Random(seed)
    ids = sorted(data.items)
    sampler = NegativeSampler(data.sequences, ids, seed)
    users = sorted(u for u, s in data.sequences.items() if len(s) >= 2)
    rng.shuffle(users)
    dev_users = set(users[: max(2, min(MAX_DEV_USERS, len(users) // 10))])

    def group(user: str, t: int) -> list[PreferencePrompt]:
        sequence = data.sequences[user]
        liked, disliked = _prompt_names(data, user, sequence[:t], fields)
        it = data.items[sequence[t]]
        rows = [PreferencePrompt(liked, disliked, item_text(it.title, it.category, it.price, fields), POSITIVE)]
        for n in sampler.sample(sequence[:t][-HISTORY:], set(sequence), GROUP_NEGATIVES, GROUP_HARD):
            neg = data.items[n]
            rows.append(
                PreferencePrompt(liked, disliked, item_text(neg.title, neg.category, neg.price, fields), NEGATIVE)
            )
        rng.shuffle(rows)
        return rows

    windows = [(u, t) for u in users if u not in dev_users for t in range(1, len(data.sequences[u]))]
    windows += [(u, t) for u in dev_users for t in range(1, len(data.sequences[u]) - 1)]
    rng.shuffle(windows)
    groups = [group(u, t) for u, t in windows[:MAX_GROUPS]]
    dev = [row for u in sorted(dev_users) for row in group(u, len(data.sequences[u]) - 1)]
    return groups, dev


def own_config(name: str, data: RecommendOwnData, dev_rows: int) -> TrainConfig:
    return TrainConfig(
        task="recommend",
        adapter_name=name,
        data={f"file{n}": str(p) for n, p in enumerate(data.files)} or {"files": "(in memory)"},
        labels=["Yes", "No"],
        lora=LoraSpec(
            r=16,
            alpha=32,
            dropout=0.05,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            top_layers=14,
        ),
        learning_rate=4e-4,
        epochs=1,
        batch_size=2,
        max_length=320,
        seed=SEED,
        dev_rows=dev_rows,
        patience=1,
        max_minutes=TRAIN_MINUTES,
        eval_every_steps=None,
        options={"dataset": "own", "wording": PRODUCT.name, "objective": "next_item"},
    )


def train_own(
    train: RecommendOwnData, out_dir: Path, settings: Settings, *, progress: Progress | None = None
) -> dict[str, Any]:
    from finetune.tasks.games import fit_next_item

    fields = train.item_fields()
    groups, dev = own_training_rows(train, fields)
    if not groups or len({r.label for r in dev}) < 2:
        raise DataFileError("too few users with two or more products to train and pick a checkpoint on")
    config = own_config(out_dir.name or "recommend", train, len(dev))
    out_dir.mkdir(parents=True, exist_ok=True)
    card = fit_next_item(
        config,
        settings,
        groups,
        dev,
        out_dir,
        data_files=[p for p in train.files if p.is_file()],
        item_fields=fields,
        progress=progress,
    )
    t = card["training"]
    return {
        "training": {
            "steps": t["steps"],
            "seconds": t["seconds"],
            "rows": card["data"]["train_rows"],
            "groups": t["shared_prefix_groups"],
            "dev_rows": len(dev),
            "adapter_bytes": t["adapter_bytes"],
            "best_dev_auc": t["best_metric"],
            "stopped_by": t["stopped_by"],
        },
        "serving": card["serving"],
    }


# ---- evaluation through the Engine protocol ------------------------------------------------------


def evaluate_own(engine: Engine, model: str, heldout: RecommendHeldOut) -> dict[str, float]:
    """Each case: the served ``model`` scores the held-out product and its negatives after the
    user's history, prompted as its card says. ``score``: mean AUC of the held-out product against
    its negatives (ties count half); also NDCG@10, HR@1, HR@5 and MRR of its rank (ties against)."""
    if model != BASE and not engine.has_model(model):
        raise AdapterNotFoundError(model, [m["id"] for m in engine.list_models()])
    if not heldout.cases:
        raise DataFileError("no held-out cases to evaluate")
    scorer = LLMScorer(engine, model)
    serving = scorer.serving(model)
    fields = serving.item_fields
    cases = sorted(heldout.cases, key=lambda c: hashlib.sha256(f"{SEED}:{c.user}".encode()).digest())
    cases = cases[:MAX_EVAL_CASES]
    aucs, ndcg, hr1, hr5, rr = [], [], [], [], []
    for case in cases:
        window = [(it, 0.0 if it.id in case.disliked else None) for it in case.history]
        recent = window[-serving.history :]
        liked = [item_text(i.title, i.category, i.price, fields) for i, r in recent if r is None]
        disliked = [item_text(i.title, i.category, i.price, fields) for i, r in recent if r is not None]
        names = [item_text(i.title, i.category, i.price, fields) for i in (case.target, *case.negatives)]
        p = np.asarray(scorer.score(liked, disliked, names))
        target, others = p[0], p[1:]
        aucs.append(float(((others < target).sum() + 0.5 * (others == target).sum()) / max(len(others), 1)))
        rank = int((others >= target).sum())  # a tie counts against the model
        ndcg.append(1.0 / np.log2(rank + 2) if rank < 10 else 0.0)
        hr1.append(float(rank == 0))
        hr5.append(float(rank < 5))
        rr.append(1.0 / (rank + 1))
    return {
        "score": float(np.mean(aucs)),
        "auc": float(np.mean(aucs)),
        "ndcg@10": float(np.mean(ndcg)),
        "hr@1": float(np.mean(hr1)),
        "hr@5": float(np.mean(hr5)),
        "mrr": float(np.mean(rr)),
        "cases": float(len(cases)),
        "cases_held_out": float(len(heldout.cases)),
    }


def guard_rows(settings: Settings) -> RecommendHeldOut | None:
    """``GUARD_CASES`` Games-6k dev users' last products against ``NEGATIVES`` products each never bought:
    public, fixed, never a report user. None when the shared data is not there."""
    folder = settings.shared_data_dir / DATA_SUBDIR
    try:
        games = read_games(folder)
    except DataFileError:
        return None
    split = split_games(games)
    items = games.items()
    ids = sorted(items, key=lambda i: (len(i), i))
    users = sorted(split.dev, key=lambda u: random.Random(f"{SEED}:guard:{u}").random())[:GUARD_CASES]
    cases = []
    for user in users:
        history = split.history[user]
        negatives = _negatives(user, ids, set(history) | {split.target[user]}, NEGATIVES)
        cases.append(
            HeldOutCase(
                user=user,
                history=tuple(items[i] for i in history),
                disliked=frozenset(),
                target=items[split.target[user]],
                negatives=tuple(items[i] for i in negatives),
            )
        )
    return RecommendHeldOut(cases, f"Games-6k: {len(cases)} dev users' last products (guard)")
