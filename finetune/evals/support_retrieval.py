"""``domainllm eval support-retrieval``: how well the knowledge base finds the right document.

Two sets from the shared data folder (``Settings.shared_data_dir``/support), each searched with
BM25 alone, MiniLM alone and the hybrid, side by side, through the real knowledge base. The caller
builds it (``Systems``: a search index holding a set's documents, and its search modes by name), so
this module needs nothing of the serving code:

* **BankFAQs** (1,499 bank FAQ pairs): every distinct answer is a document (title: its class,
  e.g. "loans"); every distinct question is a query. Relevant: any document holding an answer
  that question has in the file (a few questions have more than one).
* **Bitext** (4,514 customer requests over 27 intents): one document per intent, built from one
  response of that intent (the first after a seeded shuffle), titled with the intent in words
  ("cancel order"); queries: a seeded sample of ``bitext_queries`` requests. Relevant: the doc of
  the request's intent.

Rows: one per search system the caller gives: ``bm25``, ``dense``, ``hybrid`` (the knowledge base's
default fusion) and, for comparison, ``hybrid_rrf60`` (plain reciprocal rank fusion, k=60, equal
weights). Metrics are per query, averaged: Recall@k (1 if a relevant document is in the top k documents)
and MRR@10 (1/rank of the first relevant document, 0 past 10). Chunks are collapsed to their
documents, best chunk first, before ranks are counted.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domains.records import DataFileError
from domains.support import Article, read_bankfaqs, read_bitext
from finetune.metrics import RESULTS_DIR

SEED = 13
MRR_CUTOFF = 10
BANKFAQS = Path("support/faq/bankfaqs/BankFAQs.csv")
BITEXT = Path("support/bitext")
SINGLE_SYSTEMS = ("bm25", "dense")

Search = Callable[[str, int], Sequence[str]]
"""(query, k) -> the document id of each of the best k hits, best first (one hit per chunk, so a
document may come more than once)."""

Systems = Callable[["EvalSet"], AbstractContextManager[Mapping[str, Search]]]
"""Opens a search index holding ``data.documents`` and yields its search systems by name: at least
``bm25``, ``dense`` and ``hybrid``, which the checks compare."""


@dataclass
class EvalSet:
    name: str
    documents: list[Article]
    queries: list[str]
    relevant: list[set[str]]  # per query, the doc ids that answer it

    def __post_init__(self) -> None:
        if len(self.queries) != len(self.relevant):
            raise ValueError("one relevant set per query")


# ---- metrics -----------------------------------------------------------------------------------


def first_relevant_rank(ranked: Sequence[str], relevant: set[str]) -> int | None:
    """1-based rank of the first relevant doc id in ``ranked``, None if absent."""
    for rank, doc_id in enumerate(ranked, start=1):
        if doc_id in relevant:
            return rank
    return None


def recall_at(ranks: Sequence[int | None], k: int) -> float:
    return sum(1 for r in ranks if r is not None and r <= k) / len(ranks) if ranks else 0.0


def mrr(ranks: Sequence[int | None], cutoff: int = MRR_CUTOFF) -> float:
    return sum(1.0 / r for r in ranks if r is not None and r <= cutoff) / len(ranks) if ranks else 0.0


def metrics_of(ranks: Sequence[int | None]) -> dict[str, float]:
    return {"recall@1": recall_at(ranks, 1), "recall@5": recall_at(ranks, 5), "mrr@10": mrr(ranks)}


def dedupe_docs(doc_ids: Sequence[str]) -> list[str]:
    """Chunk hits -> documents, each at the rank of its best chunk."""
    return list(dict.fromkeys(doc_ids))


# ---- data --------------------------------------------------------------------------------------


def _need(path: Path) -> Path:
    if not path.exists():
        raise DataFileError(
            f"evaluation data not found: {path}; set DOMAINLLM_SHARED_DATA_DIR to the folder holding support/",
            path=str(path),
        )
    return path


def load_bankfaqs(shared_data_dir: Path) -> EvalSet:
    pairs = read_bankfaqs(_need(shared_data_dir / BANKFAQS))
    doc_of_answer: dict[str, str] = {}
    documents: list[Article] = []
    relevant: dict[str, set[str]] = {}
    for pair in pairs:
        key = " ".join(pair.answer.split())
        if key not in doc_of_answer:
            doc_id = f"bankfaq-{len(doc_of_answer):04d}"
            doc_of_answer[key] = doc_id
            documents.append(Article(doc_id=doc_id, title=pair.category or "faq", text=pair.answer))
        relevant.setdefault(" ".join(pair.question.split()), set()).add(doc_of_answer[key])
    queries = list(relevant)
    return EvalSet("bankfaqs", documents, queries, [relevant[q] for q in queries])


def load_bitext(shared_data_dir: Path, n_queries: int = 1000, seed: int = SEED) -> EvalSet:
    folder = shared_data_dir / BITEXT
    files = sorted(folder.glob("*.csv")) if folder.is_dir() else []
    if not files:
        raise DataFileError(f"evaluation data not found: no CSV in {folder}", path=str(folder))
    rows = [row for path in files for row in read_bitext(path)]
    by_intent: dict[str, list[str]] = {}
    for row in rows:
        by_intent.setdefault(row.intent, []).append(row.response)
    rng = random.Random(seed)
    documents = [
        Article(doc_id=f"bitext-{intent}", title=intent.replace("_", " "), text=rng.choice(by_intent[intent]))
        for intent in sorted(by_intent)
    ]
    sample = rng.sample(rows, min(n_queries, len(rows)))
    return EvalSet("bitext", documents, [r.request for r in sample], [{f"bitext-{r.intent}"} for r in sample])


# ---- running -----------------------------------------------------------------------------------


def ranks_of(search: Search, data: EvalSet) -> list[int | None]:
    """Per query, the 1-based document rank of its first relevant document (None past the cutoff)."""
    return [
        first_relevant_rank(dedupe_docs(search(query, 3 * MRR_CUTOFF))[:MRR_CUTOFF], relevant)
        for query, relevant in zip(data.queries, data.relevant, strict=True)
    ]


def evaluate_set(systems: Mapping[str, Search], data: EvalSet) -> dict[str, dict[str, float]]:
    """Every system's metrics on ``data``; the systems must search exactly ``data.documents``."""
    missing = [name for name in (*SINGLE_SYSTEMS, "hybrid") if name not in systems]
    if missing:
        raise ValueError(f"the retrieval evaluation needs the search systems {', '.join(missing)}")
    return {name: metrics_of(ranks_of(search, data)) for name, search in systems.items()}


def checks_of(modes: dict[str, dict[str, float]]) -> dict[str, bool]:
    """The targets: hybrid at least the better single retriever on every metric; Recall@5 >= 0.90."""
    return {
        "hybrid_ge_best_single": all(
            modes["hybrid"][m] >= max(modes[s][m] for s in SINGLE_SYSTEMS) - 1e-12 for m in modes["hybrid"]
        ),
        "hybrid_recall@5_ge_0.90": modes["hybrid"]["recall@5"] >= 0.90,
    }


def evaluate(
    shared_data_dir: Path,
    systems: Systems,
    *,
    out_dir: Path = RESULTS_DIR,
    bitext_queries: int = 1000,
    setup: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Both sets, every system ``systems`` opens on each; writes ``out_dir/support_retrieval.json`` and
    returns the report (``setup``, the systems' settings, goes into it as it is)."""
    sets = [load_bankfaqs(shared_data_dir), load_bitext(shared_data_dir, bitext_queries)]
    report: dict[str, Any] = {**(setup or {}), "mrr_cutoff": MRR_CUTOFF, "sets": {}}
    for data in sets:
        started = time.perf_counter()
        with systems(data) as opened:
            results = evaluate_set(opened, data)
        report["sets"][data.name] = {
            "documents": len(data.documents),
            "queries": len(data.queries),
            "seconds": round(time.perf_counter() - started, 1),
            "modes": results,
            "checks": checks_of(results),
        }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "support_retrieval.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def print_report(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    for name, result in report["sets"].items():
        table = Table(title=f"support retrieval: {name} ({result['documents']} docs, {result['queries']} queries)")
        table.add_column("mode")
        metrics = list(next(iter(result["modes"].values())))
        for m in metrics:
            table.add_column(m, justify="right")
        for mode, values in result["modes"].items():
            table.add_row(mode, *(f"{values[m]:.4f}" for m in metrics))
        console.print(table)
        for check, ok in result["checks"].items():
            console.print(f"  {check}: {'[green]yes[/]' if ok else '[red]no[/]'}")
