"""The ranking's features and the blender that combines them: what ranker training fits and serving applies.

Features (one row per candidate, all roughly in [0, 1] or [-1, 1] so hand-set weights make sense):

    llm        P("Yes") from the recommend adapter (TALLRec prompt, ``scoring.py``); 0.5 where not scored
    sim        cosine of the item to the user's recency-weighted profile vector
    recency    cosine of the item to the user's most recent item (the order of the history matters)
    covis      log co-visitation with the user's recent items, over the largest in this request
    covis_idf  the same with each recent item's weight divided by the square root of its popularity:
               being bought after a rarely bought item says more than after a best-seller
    pop        log decayed popularity, over the most popular item's
    price_gap  |log price - the user's mean log price|, scaled to [0, 1]
    context    cosine to the page's item, when the request names one

The blender is a logistic regression over standardised features (fitted in ``finetune/ranker.py``).
It is saved as JSON (feature names, means, scales, weights, the scikit-learn version that fit it):
no pickle, nothing executed on load, readable in a diff; applying it needs only numpy.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FEATURES = ("llm", "sim", "recency", "covis", "pop", "price_gap", "context", "covis_idf")
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
    weights = {
        "llm": 2.0,
        "sim": 2.0,
        "recency": 2.0,
        "covis": 3.0,
        "pop": 1.5,
        "price_gap": -0.5,
        "context": 2.5,
        "covis_idf": 0.0,  # added after the hand-set weights: a trained blend finds its weight
    }
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
