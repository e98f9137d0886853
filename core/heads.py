"""A linear classification head over precomputed features, saved as plain arrays (no pickle).

Fitted offline (the support adapter's intent head on the store's own intents is one), served by an
app that rebuilds the same features in the order its ``recipe`` names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class LinearHead:
    """Multinomial logistic regression over standardised features: ``(x - mean) / scale``."""

    coef: np.ndarray  # [classes, features]
    intercept: np.ndarray  # [classes]
    classes: list[str]
    mean: np.ndarray  # [features]
    scale: np.ndarray  # [features]
    recipe: dict[str, Any]  # how the features are built, for the app to rebuild them

    def decision(self, features: np.ndarray) -> np.ndarray:
        """[n, classes] logits."""
        return ((features - self.mean) / self.scale) @ self.coef.T + self.intercept

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        logits = self.decision(features)
        logits = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)  # [n, classes]

    def predict(self, features: np.ndarray) -> list[str]:
        return [self.classes[i] for i in self.decision(features).argmax(axis=1)]

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:  # a file handle: np.savez would append ".npz" to a bare name
            np.savez(
                fh,
                coef=self.coef.astype(np.float32),
                intercept=self.intercept.astype(np.float32),
                classes=np.array(self.classes, dtype=str),
                mean=self.mean.astype(np.float32),
                scale=self.scale.astype(np.float32),
                recipe=np.array(json.dumps(self.recipe)),
            )
        return path

    @classmethod
    def load(cls, path: Path) -> LinearHead:
        with np.load(path, allow_pickle=False) as z:
            return cls(
                coef=z["coef"],
                intercept=z["intercept"],
                classes=[str(c) for c in z["classes"]],
                mean=z["mean"],
                scale=z["scale"],
                recipe=json.loads(str(z["recipe"])),
            )
