"""Ranker training: the blenders that combine the recommender's features, fitted offline.

``domainllm recommend train-ranker`` fits them on a store's logged events, split by time. Events
before the cut build the histories and the signals (popularity, co-visitation) as they were then;
each user's clicks, carts and purchases after the cut are the positives among the candidates the
pipeline would have generated at the cut. The pre-blend (no LLM) is fitted on every candidate row;
the final blend only on the LLM shortlist, where it is applied. Users are split 80/20 by a hash for
a held-out AUC next to the hand-set fallback's. The MovieLens evaluation (``finetune/evals``) fits
the same blenders on its validation items.

The result is saved as JSON (``domains.recommend.ranking.Rankers``), which the API reloads.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import InvalidRequestError
from domains.recommend.index import VectorIndex
from domains.recommend.pipeline import Pipeline, PipelineConfig, build_profile
from domains.recommend.ranking import FEATURES, NO_LLM_FEATURES, Blender, Rankers, fallback_blender
from domains.recommend.records import Event
from domains.recommend.scoring import LLMScorer
from domains.recommend.signals import MemorySignals


def ndcg_at_k(rank: int | None, k: int = 10) -> float:
    """One relevant item at 0-based ``rank`` (None: not ranked)."""
    return 1.0 / math.log2(rank + 2) if rank is not None and rank < k else 0.0


def fit_blender(x: np.ndarray, y: np.ndarray, features: Sequence[str], meta: dict[str, Any] | None = None) -> Blender:
    """Logistic regression on standardised features; x: [n, len(FEATURES)], y: [n] in {0, 1}."""
    import sklearn
    from sklearn.linear_model import LogisticRegression

    if len(set(y.tolist())) < 2:
        raise InvalidRequestError("the training data holds only one class: log more events (clicks and misses)")
    cols = [FEATURES.index(f) for f in features]
    xs = x[:, cols]
    mean = xs.mean(axis=0)
    scale = xs.std(axis=0)
    scale[scale < 1e-9] = 1.0
    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000)
    model.fit((xs - mean) / scale, y)
    return Blender(
        features=tuple(features),
        weights=model.coef_[0].astype(np.float64),
        mean=mean,
        scale=scale,
        intercept=float(model.intercept_[0]),
        kind="trained",
        meta={"sklearn": sklearn.__version__, "rows": len(y), "positives": int(y.sum()), **(meta or {})},
    )


def fit_listwise_blender(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    features: Sequence[str],
    l2: float = 1e-3,
    meta: dict[str, Any] | None = None,
) -> Blender:
    """Weights that rank each user's held-out item first among that user's candidates: the softmax
    over one user's candidates of sum_f w_f * z_f, maximised for the positive (a conditional logit,
    the ranking loss of one relevant item per list), with an L2 penalty; L-BFGS over numpy.

    x: [n, len(FEATURES)], y: [n] in {0, 1}, groups: [n] the user of each row. Users whose item is
    not among their candidates teach nothing and are left out. Pointwise logistic regression
    (``fit_blender``) weighs every candidate row alike, and on Games-6k blended worse than its best
    single feature; this fits the order within each list, which is what NDCG@10 counts."""
    import sklearn
    from scipy.optimize import minimize

    cols = [FEATURES.index(f) for f in features]
    keep = np.isin(groups, np.unique(groups[y == 1]))
    xs, ys, gs = x[keep][:, cols], y[keep], groups[keep]
    if not len(ys):
        raise InvalidRequestError("no user's held-out item is among its candidates: nothing to fit a ranking on")
    order = np.argsort(gs, kind="stable")
    xs, ys, gs = xs[order], ys[order], gs[order]
    mean = xs.mean(axis=0)
    scale = xs.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = (xs - mean) / scale  # [n, f]
    starts = np.flatnonzero(np.r_[True, gs[1:] != gs[:-1]])  # first row of each user
    sizes = np.diff(np.r_[starts, len(gs)])
    lists = len(starts)
    positive_sum = np.add.reduceat(z * ys[:, None], starts)  # [users, f]: the positive's z (one per user)
    positives = np.add.reduceat(ys, starts).astype(np.float64)  # [users]

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = z @ w  # [n]
        top = np.maximum.reduceat(s, starts)  # [users]
        e = np.exp(s - np.repeat(top, sizes))
        total = np.add.reduceat(e, starts)  # [users]
        log_norm = top + np.log(total)
        soft = e / np.repeat(total, sizes)  # [n] softmax within each user's list
        expected = np.add.reduceat(z * soft[:, None], starts)  # [users, f]
        value = float((positives * log_norm - positive_sum @ w).sum()) / lists + l2 * float(w @ w)
        grad = (positives[:, None] * expected - positive_sum).sum(axis=0) / lists + 2 * l2 * w
        return value, grad

    result = minimize(loss, np.zeros(len(cols)), jac=True, method="L-BFGS-B")
    return Blender(
        features=tuple(features),
        weights=np.asarray(result.x, dtype=np.float64),
        mean=mean,
        scale=scale,
        intercept=0.0,
        kind="trained",
        meta={
            "sklearn": sklearn.__version__,  # the format's field; the fit itself is scipy's L-BFGS
            "method": "listwise: softmax over each user's candidates (conditional logit), L-BFGS",
            "rows": len(ys),
            "lists": int(lists),
            "l2": l2,
            "converged": bool(result.success),
            **(meta or {}),
        },
    )


LLM_WEIGHT_GRID = tuple(round(0.1 * i, 1) for i in range(31))  # 0.0 .. 3.0


def residual_blender(
    pre: Blender,
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    grid: Sequence[float] = LLM_WEIGHT_GRID,
    k: int = 10,
    meta: dict[str, Any] | None = None,
) -> Blender:
    """The LLM blend as one number on top of the pre-blend: logit = pre logit + w * z(llm).

    x, y, groups: the shortlisted validation rows (features, 1 for a held-out positive, the user of
    each row). w is the grid value with the best mean NDCG@k of each user's first positive within
    that user's shortlist; ties go to the smaller w, so an LLM score that does not help gets w = 0.
    Refitting every weight on the shortlist instead (``fit_blender`` over FEATURES) has to learn
    seven weights from one positive per user (17 in a 50-user run) and undid what the pre-blend
    learned from every user; one weight keeps the pre-blend and asks only how much the LLM adds.
    """
    if set(pre.features) != set(NO_LLM_FEATURES):
        raise ValueError("the residual blend builds on a pre-blend over every feature but llm")
    llm = x[:, FEATURES.index("llm")]
    mean, scale = float(llm.mean()), float(llm.std()) or 1.0
    base, z = pre.logit(x), (llm - mean) / scale
    users = [np.flatnonzero(groups == g) for g in np.unique(groups[y == 1])]  # users whose item made the shortlist

    def ndcg(w: float) -> float:
        total = 0.0
        for rows in users:
            s = base[rows] + w * z[rows]
            hit = y[rows] == 1
            total += ndcg_at_k(int((s[~hit] > s[hit].max()).sum()), k)  # the first positive; ties count for it
        return total / max(len(users), 1)

    curve = {float(w): ndcg(float(w)) for w in grid}
    best = max(curve.values())
    weight = min(w for w, v in curve.items() if v >= best - 1e-12)
    order = [pre.features.index(f) for f in NO_LLM_FEATURES]
    return Blender(
        features=FEATURES,
        weights=np.asarray([weight, *(float(pre.weights[i]) for i in order)]),
        mean=np.asarray([mean, *(float(pre.mean[i]) for i in order)]),
        scale=np.asarray([scale, *(float(pre.scale[i]) for i in order)]),
        intercept=pre.intercept,
        kind="trained",
        meta={
            **pre.meta,
            "method": "residual: pre-blend logit + w * z(llm), w by validation NDCG@10 on the shortlists",
            "llm_weight": weight,
            "shortlist_rows": len(y),
            "shortlist_positives": int(y.sum()),
            "ndcg_at_weight": {str(w): round(v, 5) for w, v in curve.items()},
            **(meta or {}),
        },
    )


# ---- training rows from a store's logged events ------------------------------------------------

POSITIVE_TYPES = {"click", "cart", "purchase"}


@dataclass(frozen=True)
class RankerData:
    """How the training rows are built: as the server builds its candidates and features (the
    caller copies these from the recommend settings)."""

    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    half_life_s: float = 7 * 86400.0  # popularity decay
    covis_window: int = 10
    history_len: int = 50  # recent events per user, as Redis keeps them

    def __post_init__(self) -> None:
        if self.half_life_s <= 0 or self.covis_window < 1 or self.history_len < 1:
            raise ValueError("half_life_s, covis_window and history_len must be positive")


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
    events: list[Event], index: VectorIndex, data: RankerData, llm: LLMScorer | None, cut_quantile: float
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
    signals = MemorySignals.from_histories(before, data.half_life_s, data.covis_window, categories)
    pre = fallback_blender(with_llm=False)
    pipeline = Pipeline(index, signals, data.pipeline, fallback_blender(True), pre, llm)
    xs, ys, short, held, users = [], [], [], [], []
    for n, user in enumerate(sorted(after)):
        history = before.get(user, [])[::-1][: data.history_len]  # newest first, as Redis keeps it
        profile = build_profile(history, index)
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
