"""``domainllm eval support-retrieval``: how well the knowledge base finds the right document.

Two sets from the shared data folder (``Settings.shared_data_dir``/support), each searched with
BM25 alone, MiniLM alone and the hybrid, side by side, through the real ``KnowledgeBase``:

* **BankFAQs** (1,499 bank FAQ pairs): every distinct answer is a document (title: its class,
  e.g. "loans"); every distinct question is a query. Relevant: any document holding an answer
  that question has in the file (a few questions have more than one).
* **Bitext** (4,514 customer requests over 27 intents): one document per intent, built from one
  response of that intent (the first after a seeded shuffle), titled with the intent in words
  ("cancel order"); queries: a seeded sample of ``bitext_queries`` requests. Relevant: the doc of
  the request's intent.

Rows: ``bm25``, ``dense``, ``hybrid`` (the knowledge base's default fusion) and ``hybrid_rrf60``
(plain reciprocal rank fusion, k=60, equal weights) for comparison. Metrics are per query, averaged: Recall@k (1 if a relevant document is in the top k documents)
and MRR@10 (1/rank of the first relevant document, 0 past 10). Chunks are collapsed to their
documents, best chunk first, before ranks are counted.
"""

from __future__ import annotations

import csv
import json
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from apps.support.documents import Document
from apps.support.kb import FusionConfig, KnowledgeBase
from core.config import PROJECT_ROOT, Settings
from core.embeddings import Embedder
from core.errors import InvalidRequestError

RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
SEED = 13
MRR_CUTOFF = 10
BANKFAQS = Path("support/faq/bankfaqs/BankFAQs.csv")
BITEXT = Path("support/bitext")
RRF_BASELINE = FusionConfig(method="rrf", dense_weight=1.0, bm25_weight=1.0, rrf_k=60.0)


@dataclass
class EvalSet:
    name: str
    documents: list[Document]
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


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise InvalidRequestError(
            f"evaluation data not found: {path}; set DOMAINLLM_SHARED_DATA_DIR to the folder holding support/",
            path=str(path),
        )
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def load_bankfaqs(shared_data_dir: Path) -> EvalSet:
    rows = _read_csv(shared_data_dir / BANKFAQS)
    doc_of_answer: dict[str, str] = {}
    documents: list[Document] = []
    relevant: dict[str, set[str]] = {}
    for row in rows:
        question, answer = (row.get("Question") or "").strip(), (row.get("Answer") or "").strip()
        if not question or not answer:
            continue
        key = " ".join(answer.split())
        if key not in doc_of_answer:
            doc_id = f"bankfaq-{len(doc_of_answer):04d}"
            doc_of_answer[key] = doc_id
            documents.append(Document(doc_id=doc_id, title=(row.get("Class") or "").strip() or "faq", text=answer))
        relevant.setdefault(" ".join(question.split()), set()).add(doc_of_answer[key])
    queries = list(relevant)
    return EvalSet("bankfaqs", documents, queries, [relevant[q] for q in queries])


def load_bitext(shared_data_dir: Path, n_queries: int = 1000, seed: int = SEED) -> EvalSet:
    folder = shared_data_dir / BITEXT
    files = sorted(folder.glob("*.csv")) if folder.is_dir() else []
    if not files:
        raise InvalidRequestError(f"evaluation data not found: no CSV in {folder}", path=str(folder))
    rows = [r for path in files for r in _read_csv(path) if r.get("instruction") and r.get("intent")]
    by_intent: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_intent.setdefault(row["intent"], []).append(row)
    rng = random.Random(seed)
    documents = []
    for intent in sorted(by_intent):
        pick = rng.choice(by_intent[intent])
        documents.append(Document(doc_id=f"bitext-{intent}", title=intent.replace("_", " "), text=pick["response"]))
    sample = rng.sample(rows, min(n_queries, len(rows)))
    return EvalSet("bitext", documents, [r["instruction"] for r in sample], [{f"bitext-{r['intent']}"} for r in sample])


# ---- running -----------------------------------------------------------------------------------


def ranks_of(kb: KnowledgeBase, data: EvalSet, mode: str) -> list[int | None]:
    """Per query, the 1-based document rank of its first relevant document (None past the cutoff)."""
    ranks = []
    for query, relevant in zip(data.queries, data.relevant, strict=True):
        hits = kb.search(query, k=3 * MRR_CUTOFF, mode=mode)
        ranks.append(first_relevant_rank(dedupe_docs([h.doc_id for h in hits])[:MRR_CUTOFF], relevant))
    return ranks


def evaluate_set(kb: KnowledgeBase, data: EvalSet) -> dict[str, dict[str, float]]:
    """bm25, dense, hybrid (``kb``'s fusion) and, for comparison, plain RRF (k=60, equal weights).
    ``kb`` must hold exactly ``data.documents``."""
    out = {mode: metrics_of(ranks_of(kb, data, mode)) for mode in ("bm25", "dense", "hybrid")}
    chosen = kb.fusion
    kb.fusion = RRF_BASELINE
    try:
        out["hybrid_rrf60"] = metrics_of(ranks_of(kb, data, "hybrid"))
    finally:
        kb.fusion = chosen
    return out


def checks_of(modes: dict[str, dict[str, float]]) -> dict[str, bool]:
    """The targets: hybrid at least the better single retriever on every metric; Recall@5 >= 0.90."""
    singles = ("bm25", "dense")
    return {
        "hybrid_ge_best_single": all(
            modes["hybrid"][m] >= max(modes[s][m] for s in singles) - 1e-12 for m in modes["hybrid"]
        ),
        "hybrid_recall@5_ge_0.90": modes["hybrid"]["recall@5"] >= 0.90,
    }


def evaluate(
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    out_dir: Path = RESULTS_DIR,
    bitext_queries: int = 1000,
    fusion: FusionConfig | None = None,
) -> dict[str, Any]:
    """Both sets, all modes; writes ``out_dir/support_retrieval.json`` and returns the report."""
    if embedder is None:
        from core.embeddings import MiniLMEmbedder

        embedder = MiniLMEmbedder(settings.embedder_path)
    sets = [load_bankfaqs(settings.shared_data_dir), load_bitext(settings.shared_data_dir, bitext_queries)]
    fusion = fusion or FusionConfig()
    report: dict[str, Any] = {
        "fusion": asdict(fusion),
        "hybrid_rrf60": asdict(RRF_BASELINE),
        "mrr_cutoff": MRR_CUTOFF,
        "sets": {},
    }
    for data in sets:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"kb-eval-{data.name}-") as root:
            kb = KnowledgeBase(Path(root), embedder, fusion=fusion)
            kb.warm_up()
            kb.upsert_many(data.documents)
            results = evaluate_set(kb, data)
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
