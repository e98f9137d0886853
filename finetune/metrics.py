"""Classification, ranking and text-generation metrics, and the plots the evaluator draws."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parents[1] / "bench" / "results"  # where eval reports land


def classification_report(y_true: list[str], y_pred: list[str], labels: list[str]) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_weighted": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "f1_macro": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def auc(y_true: list[int], scores: list[float]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y_true, scores))


def _save(fig: Any, path: Path) -> Path:
    """Lay out ``fig``, write it to ``path`` (folders made as needed) and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(confusion: list[list[int]], labels: list[str], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_roc(curves: dict[str, tuple[list[int], list[float]]], title: str, path: Path) -> Path:
    """One ROC curve per system: {name: (binary truth, scores)}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for name, (truth, scores) in curves.items():
        fpr, tpr, _ = roc_curve(truth, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(truth, scores):.3f})")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def word_tokens(text: str) -> list[str]:
    """Lowercased alphanumeric words (how rouge-score tokenises): for counting the words of an answer."""
    return re.findall(r"[a-z0-9]+", text.lower())


@functools.cache
def _rouge_l_scorer() -> Any:
    from rouge_score import rouge_scorer

    # rouge-score's defaults, as Hugging Face ``evaluate``'s "rouge" uses them: no stemming
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(reference: str, hypothesis: str) -> float:
    """ROUGE-L F1 of one answer (rouge-score: longest common subsequence of lowercased words)."""
    return float(_rouge_l_scorer().score(reference, hypothesis)["rougeL"].fmeasure)


BLEU_SIGNATURE = "sacreBLEU corpus BLEU-4 in [0, 100]: 13a tokenisation, case-sensitive, exp smoothing, one reference"


def corpus_bleu(references: list[str], hypotheses: list[str]) -> float:
    """Corpus BLEU-4 in [0, 100] by sacreBLEU with its defaults (``BLEU_SIGNATURE``), as published
    BLEU scores are computed; one reference per hypothesis."""
    import sacrebleu

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references for {len(hypotheses)} hypotheses")
    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


def plot_bars(panels: dict[str, dict[str, float]], title: str, path: Path) -> Path:
    """One horizontal bar panel per metric: {metric: {system: value}}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.4), squeeze=False)
    for ax, (metric, values) in zip(axes[0], panels.items(), strict=True):
        names = list(values)
        ax.barh(range(len(names)), [values[n] for n in names], color="tab:blue")
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()
        for i, n in enumerate(names):
            ax.text(values[n], i, f" {values[n]:.3f}", va="center", fontsize=7)
        ax.set_xlim(0, max([*values.values(), 1e-9]) * 1.25)
        ax.set_title(metric, fontsize=9)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)
