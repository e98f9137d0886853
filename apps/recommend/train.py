"""``domainllm recommend train-ranker``: fit the blenders from logged events, split by time.

Events before the cut build the histories and the signals (popularity, co-visitation) as they were
then; each user's clicks, carts and purchases after the cut are the positives among the candidates
the pipeline would have generated at the cut. The pre-blend (no LLM) is fitted on every candidate
row; the final blend only on the LLM shortlist, where it is applied. Users are split 80/20 by a hash
for a held-out AUC next to the hand-set fallback's.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from apps.recommend.catalogue import VectorIndex
from apps.recommend.items import Event
from apps.recommend.pipeline import Pipeline, PipelineConfig, build_profile
from apps.recommend.ranking import (
    NO_LLM_FEATURES,
    LLMScorer,
    Rankers,
    fallback_blender,
    fit_blender,
    residual_blender,
)
from apps.recommend.settings import RecommendSettings
from apps.recommend.signals import MemorySignals
from core.errors import InvalidRequestError

POSITIVE_TYPES = {"click", "cart", "purchase"}


@dataclass
class TrainingRows:
    x: np.ndarray  # [n, len(FEATURES)]
    y: np.ndarray  # [n]
    shortlisted: np.ndarray  # [n] bool: the row was in the LLM shortlist
    held_out: np.ndarray  # [n] bool: the row's user is in the evaluation fifth
    users: np.ndarray  # [n] int: which user the row belongs to


def _held_out(user: str) -> bool:
    return hashlib.blake2b(user.encode(), digest_size=2).digest()[0] < 52  # about 20%


def training_rows(
    events: list[Event], index: VectorIndex, settings: RecommendSettings, llm: LLMScorer | None, cut_quantile: float
) -> TrainingRows:
    if not 0.1 <= cut_quantile <= 0.95:
        raise InvalidRequestError("the time cut must be between the 0.1 and 0.95 quantiles of event time")
    events = sorted((e for e in events if e.item_id in index), key=lambda e: e.ts)
    if len(events) < 50:
        raise InvalidRequestError(f"{len(events)} events on catalogue items; train-ranker needs at least 50")
    cut = float(np.quantile([e.ts for e in events], cut_quantile))
    before: dict[str, list[Event]] = defaultdict(list)
    after: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if e.ts <= cut:
            before[e.user_id].append(e)
        elif e.type in POSITIVE_TYPES:
            after[e.user_id].add(e.item_id)
    categories = {i: it.category for i, it in index.items.items()}
    signals = MemorySignals.from_histories(before, settings.popularity_half_life_s, settings.covis_window, categories)
    config = PipelineConfig(settings.candidates_per_source, settings.llm_candidates, settings.prompt_history)
    pre = fallback_blender(with_llm=False)
    pipeline = Pipeline(index, signals, config, fallback_blender(True), pre, llm)
    xs, ys, short, held, users = [], [], [], [], []
    for n, user in enumerate(sorted(after)):
        history = before.get(user, [])[::-1][: settings.history_len]  # newest first, as Redis keeps it
        profile = build_profile(history, index, settings.prompt_history)
        ids = [i for i in pipeline.candidates(profile, cut) if i not in profile.seen]
        if not ids:
            continue
        scores, x, used = pipeline.score(profile, ids, cut, use_llm=llm is not None)
        shortlisted = scores > -0.5 if used else np.zeros(len(ids), dtype=bool)
        xs.append(x)
        ys.append(np.asarray([int(i in after[user]) for i in ids]))
        short.append(shortlisted)
        held.append(np.full(len(ids), _held_out(user)))
        users.append(np.full(len(ids), n))
    if not xs:
        raise InvalidRequestError("no user has events on both sides of the time cut")
    return TrainingRows(*(np.concatenate(a) for a in (xs, ys, short, held, users)))


def _auc(y: np.ndarray, s: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if len(set(y.tolist())) == 2 else None


def fit_rankers(rows: TrainingRows, llm_model: str | None) -> tuple[Rankers, dict[str, Any]]:
    train, test = ~rows.held_out, rows.held_out
    pre = fit_blender(rows.x[train], rows.y[train], NO_LLM_FEATURES, {"llm_model": None})
    report: dict[str, Any] = {
        "rows": len(rows.y),
        "positives": int(rows.y.sum()),
        "held_out_auc": {
            "pre_trained": _auc(rows.y[test], pre.score(rows.x[test])),
            "pre_fallback": _auc(rows.y[test], fallback_blender(False).score(rows.x[test])),
        },
    }
    s_train, s_test = train & rows.shortlisted, test & rows.shortlisted
    if llm_model is not None and len(set(rows.y[s_train].tolist())) == 2:
        final = residual_blender(
            pre, rows.x[s_train], rows.y[s_train], rows.users[s_train], meta={"llm_model": llm_model}
        )
        report["held_out_auc"]["final_trained"] = _auc(rows.y[s_test], final.score(rows.x[s_test]))
        report["held_out_auc"]["final_fallback"] = _auc(rows.y[s_test], fallback_blender(True).score(rows.x[s_test]))
        report["shortlist_rows"] = int(rows.shortlisted.sum())
    else:
        final = pre  # no LLM scores to learn from: serve without the LLM rather than with a guessed weight
        report["note"] = "trained without LLM scores: the final blend ignores the LLM until retrained with it"
    return Rankers(final=final, pre=pre), report
