"""Ranking: candidate features, the LLM interest score, and the blender that combines them.

Features (one row per candidate, all roughly in [0, 1] or [-1, 1] so hand-set weights make sense):

    llm        P("Yes") from the recommend adapter (TALLRec prompt); 0.5 where not scored
    sim        cosine of the item to the user's recency-weighted profile vector
    recency    cosine of the item to the user's most recent item (the order of the history matters)
    covis      log co-visitation with the user's recent items, over the largest in this request
    pop        log decayed popularity, over the most popular item's
    price_gap  |log price - the user's mean log price|, scaled to [0, 1]
    context    cosine to the page's item, when the request names one

The blender is a logistic regression (scikit-learn) over standardised features. It is saved as JSON
(feature names, means, scales, weights, the scikit-learn version that fit it): no pickle, nothing
executed on load, readable in a diff; serving needs only numpy.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from apps.recommend.prompt import INSTRUCTION, LABELS, split_prompt
from core.errors import InvalidRequestError

log = logging.getLogger(__name__)

FEATURES = ("llm", "sim", "recency", "covis", "pop", "price_gap", "context")
NO_LLM_FEATURES = tuple(f for f in FEATURES if f != "llm")
RANKER_FORMAT = 1


@dataclass
class Blender:
    """score = sigmoid(sum_f w_f * (x_f - mean_f) / scale_f + b), over ``features``."""

    features: tuple[str, ...]
    weights: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    intercept: float = 0.0
    kind: str = "fallback"  # "fallback" (hand-set) or "trained"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.features)
        if not (len(self.weights) == len(self.mean) == len(self.scale) == n):
            raise ValueError("a blender needs one weight, mean and scale per feature")
        unknown = set(self.features) - set(FEATURES)
        if unknown:
            raise ValueError(f"unknown blender features: {sorted(unknown)}")
        if np.any(np.asarray(self.scale) <= 0):
            raise ValueError("feature scales must be positive")

    @property
    def uses_llm(self) -> bool:
        return "llm" in self.features and float(self.weights[self.features.index("llm")]) != 0.0

    def logit(self, x: np.ndarray) -> np.ndarray:
        """x: [n, len(FEATURES)] in FEATURES order -> [n] scores before the sigmoid."""
        cols = [FEATURES.index(f) for f in self.features]
        return (x[:, cols] - self.mean) / self.scale @ self.weights + self.intercept  # [n]

    def score(self, x: np.ndarray) -> np.ndarray:
        """x: [n, len(FEATURES)] in FEATURES order -> [n] scores in (0, 1)."""
        return 1.0 / (1.0 + np.exp(-self.logit(x)))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RANKER_FORMAT,
            "kind": self.kind,
            "features": list(self.features),
            "weights": [float(v) for v in self.weights],
            "mean": [float(v) for v in self.mean],
            "scale": [float(v) for v in self.scale],
            "intercept": float(self.intercept),
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Blender:
        if data.get("format") != RANKER_FORMAT:
            raise ValueError(f"ranker format {data.get('format')!r}; this code reads format {RANKER_FORMAT}")
        return cls(
            features=tuple(data["features"]),
            weights=np.asarray(data["weights"], dtype=np.float64),
            mean=np.asarray(data["mean"], dtype=np.float64),
            scale=np.asarray(data["scale"], dtype=np.float64),
            intercept=float(data.get("intercept", 0.0)),
            kind=str(data.get("kind", "trained")),
            meta=dict(data.get("meta", {})),
        )


def fallback_blender(with_llm: bool = True) -> Blender:
    """Hand-set weights for when no ranker has been trained: behaviour first, then the LLM's view.

    The LLM weight is moderate: an untrained base model's P("Yes") is close to noise."""
    weights = {"llm": 2.0, "sim": 2.0, "recency": 2.0, "covis": 3.0, "pop": 1.5, "price_gap": -0.5, "context": 2.5}
    feats = FEATURES if with_llm else NO_LLM_FEATURES
    n = len(feats)
    return Blender(
        features=feats,
        weights=np.asarray([weights[f] for f in feats]),
        mean=np.zeros(n),
        scale=np.ones(n),
        intercept=-3.0,
        kind="fallback",
    )


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


LLM_WEIGHT_GRID = tuple(round(0.1 * i, 1) for i in range(31))  # 0.0 .. 3.0


def ndcg_at_k(rank: int | None, k: int = 10) -> float:
    """One relevant item at 0-based ``rank`` (None: not ranked)."""
    return 1.0 / math.log2(rank + 2) if rank is not None and rank < k else 0.0


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


# ---- feature helpers ---------------------------------------------------------------------------


def log_norm(values: np.ndarray) -> np.ndarray:
    """log1p(v) over the largest log1p(v): [0, 1], 0 where all are 0."""
    logs = np.log1p(np.maximum(values, 0.0))
    top = float(logs.max()) if len(logs) else 0.0
    return logs / top if top > 0 else np.zeros_like(logs)


def price_gap(prices: Sequence[float | None], history_prices: Sequence[float]) -> np.ndarray:
    """|log1p(price) - mean log1p(history price)| / 3, clipped to [0, 1]; 0 where unknown."""
    if not history_prices:
        return np.zeros(len(prices))
    ref = float(np.mean(np.log1p(history_prices)))
    return np.asarray([0.0 if p is None else min(1.0, abs(math.log1p(p) - ref) / 3.0) for p in prices])


# ---- the LLM interest score --------------------------------------------------------------------


class LLMScorer:
    """P("Yes") per candidate from one ``score_continuations`` call: the history prefix is run once,
    each candidate's target sentence is a continuation."""

    def __init__(self, engine: Any, adapter: str, instruction: str = INSTRUCTION) -> None:
        self.engine = engine
        self.adapter = adapter
        self.instruction = instruction

    def model(self) -> str:
        """The adapter when it is loaded, else the base model."""
        return self.adapter if self.engine.has_model(self.adapter) else "base"

    def submit(self, liked: Sequence[str], disliked: Sequence[str], titles: Sequence[str]) -> Future[list[float]]:
        split = split_prompt(self.engine.tokenizer, liked, disliked, self.instruction)
        inner = self.engine.submit_score_continuations(
            split.prefix, [split.continuation(t) for t in titles], model=self.model(), answer_labels=LABELS
        )
        outer: Future[list[float]] = Future()

        def done(f: Future[Any]) -> None:
            exc = f.exception()
            if exc is not None:
                outer.set_exception(exc)
            else:
                outer.set_result([float(s.next_label_probs["Yes"]) for s in f.result()])

        inner.add_done_callback(done)
        return outer

    def score(self, liked: Sequence[str], disliked: Sequence[str], titles: Sequence[str]) -> list[float]:
        return self.submit(liked, disliked, titles).result()

    def score_separately(self, liked: Sequence[str], disliked: Sequence[str], titles: Sequence[str]) -> list[float]:
        """Each candidate as its own full prompt (prefix recomputed every time): the latency baseline."""
        split = split_prompt(self.engine.tokenizer, liked, disliked, self.instruction)
        out = []
        for t in titles:
            [s] = self.engine.score_continuations(
                split.prefix, [split.continuation(t)], model=self.model(), answer_labels=LABELS
            )
            out.append(float(s.next_label_probs["Yes"]))
        return out


@dataclass
class Rankers:
    """The final blend and the pre-blend (no LLM) that picks the LLM's shortlist."""

    final: Blender
    pre: Blender

    @classmethod
    def fallback(cls) -> Rankers:
        return cls(fallback_blender(with_llm=True), fallback_blender(with_llm=False))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"final": self.final.to_json(), "pre": self.pre.to_json()}, indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Rankers | None:
        """The trained pair, or None (logged) when there is none or it cannot be read."""
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            return cls(Blender.from_json(data["final"]), Blender.from_json(data["pre"]))
        except (ValueError, KeyError, TypeError) as exc:
            log.error("ignoring the ranker at %s: %s", path, exc)
            return None
