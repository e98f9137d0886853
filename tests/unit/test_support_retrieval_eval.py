"""The retrieval evaluation (finetune/evals/support_retrieval.py): metrics, loaders, and whole runs on toy
data, with stand-in systems and with the support app's knowledge base as the CLI builds it."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from apps.support.kb import FusionConfig
from core.errors import InvalidRequestError
from domainllm.evals import RRF_BASELINE, kb_systems
from finetune.evals.support_retrieval import (
    EvalSet,
    checks_of,
    dedupe_docs,
    evaluate,
    evaluate_set,
    first_relevant_rank,
    load_bankfaqs,
    load_bitext,
    metrics_of,
    mrr,
    print_report,
    recall_at,
)

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


@contextmanager
def word_overlap_systems(data: EvalSet) -> Iterator[dict[str, Any]]:
    """Stand-in systems: documents ranked by the words they share with the query (ties by id)."""

    def words(text: str) -> set[str]:
        return set(re.findall(r"[a-z0-9]+", text.lower()))

    def search(query: str, k: int) -> list[str]:
        ranked = sorted(data.documents, key=lambda d: (-len(words(query) & words(d.text)), d.doc_id))
        return [d.doc_id for d in ranked[:k]]

    def nothing(query: str, k: int) -> list[str]:
        return []

    yield {"bm25": search, "dense": nothing, "hybrid": search}


def test_evaluate_set_counts_ranks_per_system_and_needs_the_compared_ones(shared: Path) -> None:
    data = load_bankfaqs(shared)
    modes = evaluate_set({"bm25": lambda q, k: [], "dense": lambda q, k: [], "hybrid": lambda q, k: []}, data)
    assert modes["hybrid"] == {"recall@1": 0.0, "recall@5": 0.0, "mrr@10": 0.0}
    with word_overlap_systems(data) as systems:
        modes = evaluate_set(systems, data)
    # three questions share words with an answer; "How do I open an account" with none (ties: by doc id)
    assert modes["hybrid"] == {"recall@1": 0.75, "recall@5": 1.0, "mrr@10": pytest.approx((3 + 1 / 4) / 4)}
    assert checks_of(modes) == {"hybrid_ge_best_single": True, "hybrid_recall@5_ge_0.90": True}
    with pytest.raises(ValueError, match="needs the search systems dense, hybrid"):
        evaluate_set({"bm25": lambda q, k: []}, data)


def test_evaluate_end_to_end_on_toy_data(shared: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    fusion = FusionConfig()
    setup = {"fusion": asdict(fusion), "hybrid_rrf60": asdict(RRF_BASELINE)}
    report = evaluate(shared, kb_systems(HashEmbedder(), fusion), out_dir=out, bitext_queries=15, setup=setup)
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
