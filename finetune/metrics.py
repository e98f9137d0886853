"""Classification, ranking and text-generation metrics, and the plots the evaluator draws."""

from __future__ import annotations

import math
import re
from collections import Counter
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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def word_tokens(text: str) -> list[str]:
    """Lowercased alphanumeric words, as rouge-score tokenises: punctuation and case do not count."""
    return re.findall(r"[a-z0-9]+", text.lower())


def _lcs_length(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(reference: str, hypothesis: str) -> float:
    """ROUGE-L F1: longest common subsequence of word tokens over the lengths of both texts."""
    ref, hyp = word_tokens(reference), word_tokens(hypothesis)
    lcs = _lcs_length(ref, hyp)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(hyp), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def _ngrams(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(references: list[str], hypotheses: list[str], max_n: int = 4) -> float:
    """Corpus BLEU-4 in [0, 1] on word tokens (one reference per hypothesis): clipped n-gram counts
    summed over the corpus, geometric mean of the precisions, brevity penalty on the total lengths.
    An order with no match counts as 1 / (2^k * total) for its k-th such order (sacrebleu's "exp"
    smoothing), so one empty order does not zero a whole corpus."""
    matches, totals = [0] * max_n, [0] * max_n
    ref_len = hyp_len = 0
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        ref, hyp = word_tokens(reference), word_tokens(hypothesis)
        ref_len, hyp_len = ref_len + len(ref), hyp_len + len(hyp)
        for n in range(1, max_n + 1):
            ref_counts, hyp_counts = _ngrams(ref, n), _ngrams(hyp, n)
            matches[n - 1] += sum(min(c, ref_counts[g]) for g, c in hyp_counts.items())
            totals[n - 1] += max(0, len(hyp) - n + 1)
    if hyp_len == 0:
        return 0.0
    log_precision, zeros = 0.0, 0
    for m, t in zip(matches, totals, strict=True):
        if t == 0:  # hypotheses shorter than n: nothing to score at this order
            return 0.0
        if m == 0:
            zeros += 1
            log_precision += math.log(1 / (2**zeros * t))
        else:
            log_precision += math.log(m / t)
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_precision / max_n)


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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
