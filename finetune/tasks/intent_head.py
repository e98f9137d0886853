"""The support adapter's intent head: a logistic regression over the features the support app builds
(``domains.support.INTENT_FEATURES``: the MiniLM embedding, then the mean final hidden state with
the adapter on), saved as a ``core.heads.LinearHead`` next to the adapter with the recipe the app
checks.

Two ways to fit it, both choosing on rows that are not the evaluation's:

* ``fit_logreg``: C by accuracy on a seeded stratified dev part of the rows (the public-set head);
* ``fit_weighted``: C and the weight of the hidden-state block on a given dev part (a tenant's own
  intents). The features are standardised per column, so the 576 hidden columns would outvote the
  384 MiniLM ones under one L2 penalty; a weight below 1 shrinks the hidden block instead. The
  weight is folded into the head's ``scale``, so the app applies it without knowing of it.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from core.heads import LinearHead
from finetune.data.support import stratified_split


def feature_recipe(
    parts: list[str], dims: list[int], base_model: str, adapter: str | None, *, own_folder: bool = False
) -> dict[str, Any]:
    """How the support app rebuilds the features, in order, before ``LinearHead.predict``;
    ``own_folder``: the adapter is the one saved beside the head (a tenant's version, whose served
    name is given when it is stored)."""
    active = "the adapter in this folder" if own_folder else ("adapter " + repr(adapter) if adapter else "no adapter")
    described = {
        "minilm": "all-MiniLM-L6-v2 sentence embedding of the raw text, unit-normalised",
        "hidden": f"mean over the raw text's tokens (no template, no special tokens) of {base_model}'s final "
        f"normed hidden state, {active} active",
    }
    return {"parts": [{"name": p, "dim": d, "how": described[p]} for p, d in zip(parts, dims, strict=True)]}


def _logreg(c: float, x: np.ndarray, y: np.ndarray) -> Any:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    # max_iter bounds the CPU time of a fit; a weakly regularised C may stop there, and dev accuracy judges it.
    # One BLAS thread: these matrices are small, and on a busy 2-core machine the grid of fits took
    # 79 s with the default threads and 5 s with one.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=c, max_iter=300).fit(x, y)


def _head(model: Any, mean: np.ndarray, scale: np.ndarray, recipe: dict[str, Any]) -> LinearHead:
    return LinearHead(
        coef=model.coef_,
        intercept=model.intercept_,
        classes=[str(c) for c in model.classes_],
        mean=mean,
        scale=scale,
        recipe=recipe,
    )


def fit_logreg(
    features: np.ndarray, labels: list[str], grid: list[float], dev_share: float, seed: int, recipe: dict[str, Any]
) -> tuple[LinearHead, dict[str, float]]:
    """Standardise, pick C by accuracy on a stratified dev part of ``features``, refit on all of them.
    Only the training rows are seen here: the held-out rows never choose anything."""
    mean = features.mean(axis=0)
    scale = features.std(axis=0) + 1e-6
    x = (features - mean) / scale
    fit_idx, dev_idx = stratified_split(list(range(len(labels))), lambda i: labels[i], dev_share, seed)
    y = np.asarray(labels)
    dev_accuracy = {
        c: float((_logreg(c, x[fit_idx], y[fit_idx]).predict(x[dev_idx]) == y[dev_idx]).mean()) for c in grid
    }
    best_c = max(grid, key=lambda c: (dev_accuracy[c], -c))  # ties: the stronger regularisation
    model = _logreg(best_c, x, y)
    return _head(model, mean, scale, {**recipe, "C": best_c}), {"C": best_c, "dev_accuracy": dev_accuracy[best_c]}


def fit_weighted(
    fit: tuple[np.ndarray, list[str]],
    dev: tuple[np.ndarray, list[str]],
    *,
    split_at: int,
    c_grid: list[float],
    weight_grid: list[float],
    recipe: dict[str, Any],
) -> tuple[LinearHead, dict[str, Any]]:
    """Choose C and the weight of columns ``split_at:`` (the hidden block) by accuracy on ``dev``
    with a head fitted on ``fit``, then refit on both. Ties go to the stronger regularisation, then
    to the weight nearest 1. Returns the head and what was chosen with its dev accuracy."""
    x_fit, y_fit = fit[0], np.asarray(fit[1])
    x_dev, y_dev = dev[0], np.asarray(dev[1])

    def block(weight: float, width: int) -> np.ndarray:
        w = np.ones(width, dtype=np.float64)
        w[split_at:] = weight
        return w

    mean = x_fit.mean(axis=0)
    std = x_fit.std(axis=0) + 1e-6
    scores: dict[tuple[float, float], float] = {}
    for weight in weight_grid:
        scale = std / block(weight, x_fit.shape[1])
        xf, xd = (x_fit - mean) / scale, (x_dev - mean) / scale
        for c in c_grid:
            scores[(weight, c)] = float((_logreg(c, xf, y_fit).predict(xd) == y_dev).mean())
    weight, c = max(scores, key=lambda wc: (scores[wc], -wc[1], -abs(np.log(wc[0]))))
    x_all = np.concatenate([x_fit, x_dev], axis=0)
    y_all = np.concatenate([y_fit, y_dev])
    mean = x_all.mean(axis=0)
    scale = (x_all.std(axis=0) + 1e-6) / block(weight, x_all.shape[1])
    model = _logreg(c, (x_all - mean) / scale, y_all)
    chosen = {"C": c, "hidden_weight": weight, "dev_accuracy": scores[(weight, c)], "dev_rows": len(y_dev)}
    return _head(model, mean, scale, {**recipe, "C": c, "hidden_weight": weight}), chosen
