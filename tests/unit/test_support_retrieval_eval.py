"""The retrieval evaluation (apps/support/retrieval_eval.py): metrics, loaders, and a whole run on toy data."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from apps.support.retrieval_eval import (
    checks_of,
    dedupe_docs,
    evaluate,
    first_relevant_rank,
    load_bankfaqs,
    load_bitext,
    metrics_of,
    mrr,
    print_report,
    recall_at,
)
from core.config import Settings
from core.errors import InvalidRequestError

pytestmark = pytest.mark.unit


class HashEmbedder:
    """Unit vectors from hashed words; deterministic and instant."""

    dim = 128

    def embed(self, texts: list[str], *, normalize: bool = True) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)  # [n, dim]
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
            out[row] /= max(float(np.linalg.norm(out[row])), 1e-9)
        return out


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    root = tmp_path / "shared"
    write_csv(
        root / "support/faq/bankfaqs/BankFAQs.csv",
        ["Question", "Answer", "Class"],
        [
            ["How do I block my card", "Call PhoneBanking to block the card at once.", "cards"],
            ["How can I block a lost card", "Call PhoneBanking to block the card at once.", "cards"],
            ["What is the loan tenure", "Loan tenure is 1 to 5 years.", "loans"],
            ["What is the loan tenure", "Tenure depends on the loan type.", "loans"],
            ["How do I open an account", "Visit a branch with your ID proof.", "accounts"],
            ["", "An answer without a question", "accounts"],
        ],
    )
    intents = {
        "cancel_order": ("I want to cancel order {n}", "To cancel an order, open Orders and press Cancel."),
        "track_order": ("where is my order {n}", "To track an order, open Orders and follow the tracking link."),
        "get_refund": ("I need a refund for {n}", "Refunds are paid back to your card in 5 days."),
    }
    rows = []
    for intent, (request, response) in intents.items():
        for n in range(10):
            rows.append([request.format(n=n), intent, "ORDER", f"{response} (variant {n})"])
    write_csv(root / "support/bitext/sample.csv", ["instruction", "intent", "category", "response"], rows)
    return root


def test_ranks_recall_and_mrr() -> None:
    assert first_relevant_rank(["a", "b", "c"], {"c", "z"}) == 3
    assert first_relevant_rank(["a", "b"], {"z"}) is None
    ranks = [1, 2, None, 6]
    assert recall_at(ranks, 1) == 0.25
    assert recall_at(ranks, 5) == 0.5
    assert mrr(ranks) == pytest.approx((1 + 0.5 + 1 / 6) / 4)
    assert mrr(ranks, cutoff=5) == pytest.approx(1.5 / 4)
    assert metrics_of([]) == {"recall@1": 0.0, "recall@5": 0.0, "mrr@10": 0.0}
    assert dedupe_docs(["a", "b", "a", "c", "b"]) == ["a", "b", "c"]


def test_checks_compare_hybrid_with_the_best_single_retriever() -> None:
    good = {
        "bm25": {"recall@1": 0.5, "recall@5": 0.8, "mrr@10": 0.6},
        "dense": {"recall@1": 0.6, "recall@5": 0.9, "mrr@10": 0.7},
        "hybrid": {"recall@1": 0.6, "recall@5": 0.95, "mrr@10": 0.7},
    }
    assert checks_of(good) == {"hybrid_ge_best_single": True, "hybrid_recall@5_ge_0.90": True}
    worse = {**good, "hybrid": {"recall@1": 0.55, "recall@5": 0.85, "mrr@10": 0.72}}
    assert checks_of(worse) == {"hybrid_ge_best_single": False, "hybrid_recall@5_ge_0.90": False}


def test_bankfaqs_dedupes_answers_and_questions(shared: Path) -> None:
    data = load_bankfaqs(shared)
    assert len(data.documents) == 4  # the block-card answer appears twice in the file
    titles = {d.text: d.title for d in data.documents}
    assert titles["Call PhoneBanking to block the card at once."] == "cards"
    assert len(data.queries) == 4  # "What is the loan tenure" twice
    relevant = dict(zip(data.queries, data.relevant, strict=True))
    assert relevant["How do I block my card"] == relevant["How can I block a lost card"]
    assert len(relevant["What is the loan tenure"]) == 2  # either of its answers counts


def test_bitext_one_doc_per_intent_and_a_seeded_sample(shared: Path) -> None:
    data = load_bitext(shared, n_queries=12)
    assert [d.doc_id for d in data.documents] == ["bitext-cancel_order", "bitext-get_refund", "bitext-track_order"]
    assert data.documents[0].title == "cancel order"
    assert len(data.queries) == 12
    again = load_bitext(shared, n_queries=12)
    assert again.queries == data.queries and [d.text for d in again.documents] == [d.text for d in data.documents]
    for query, relevant in zip(data.queries, data.relevant, strict=True):
        intent = next(iter(relevant)).removeprefix("bitext-")
        assert {"cancel_order": "cancel", "track_order": "where", "get_refund": "refund"}[intent] in query


def test_missing_data_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match=r"evaluation data not found.*BankFAQs\.csv"):
        load_bankfaqs(tmp_path)
    with pytest.raises(InvalidRequestError, match="evaluation data not found: no CSV"):
        load_bitext(tmp_path)


def test_evaluate_end_to_end_on_toy_data(shared: Path, tmp_path: Path) -> None:
    settings = Settings(environment="dev", shared_data_dir=shared, data_dir=tmp_path / "data")
    out = tmp_path / "results"
    report = evaluate(settings, embedder=HashEmbedder(), out_dir=out, bitext_queries=15)
    written = json.loads((out / "support_retrieval.json").read_text())
    assert written == report
    assert set(report["sets"]) == {"bankfaqs", "bitext"}
    bitext = report["sets"]["bitext"]
    assert (bitext["documents"], bitext["queries"]) == (3, 15)
    assert set(bitext["modes"]) == {"bm25", "dense", "hybrid", "hybrid_rrf60"}
    assert bitext["modes"]["hybrid"]["recall@5"] == 1.0  # 3 documents: all are in the top 5
    assert report["fusion"]["method"] == "score"
    assert set(bitext["checks"]) == {"hybrid_ge_best_single", "hybrid_recall@5_ge_0.90"}
    console = Console(file=io.StringIO(), width=200)
    print_report(report, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "support retrieval: bankfaqs (4 docs, 4 queries)" in text and "hybrid_rrf60" in text
