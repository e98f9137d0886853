"""Retrieval on the sample help centre: does the knowledge base find the right article, and do its
top passages hold the facts an answer needs? A check on parsing and chunking, not on the model.

    .venv/bin/python bench/probes/support_help_centre_retrieval.py [--out bench/results/support_help_centre_retrieval.json]

The sample help centre (data/samples/support: articles and faq.csv) in a scratch knowledge base,
searched with MiniLM (the packaged all-MiniLM-L6-v2) and BM25 fused as served. Questions:
``eval/in_kb_facts.jsonl`` (each with the doc ids that answer it and the fact strings a right
answer contains). Metrics, per question, averaged:

* ``doc_recall@k``: a relevant document is among the top k documents (chunks collapsed to their
  document, best first); ``mrr@10`` likewise;
* ``fact_recall@k``: the top k *chunks* together contain every fact string of the question
  (case- and space-insensitive; a list of facts is alternatives, any one will do): what an
  extractive answer can quote from.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from apps.support.documents import read_help_centre  # noqa: E402
from apps.support.kb import scratch_kb  # noqa: E402
from apps.support.settings import SAMPLES_DIR  # noqa: E402
from core.embeddings import MiniLMEmbedder  # noqa: E402

KS = (1, 3, 5)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def evaluate(questions: list[dict], kb) -> dict[str, float]:  # type: ignore[no-untyped-def]
    doc_hits = {k: 0 for k in KS}
    fact_hits = {k: 0 for k in KS}
    rr = 0.0
    for q in questions:
        hits = kb.search(q["question"], k=30)
        docs = list(dict.fromkeys(h.doc_id for h in hits))
        relevant = set(q["doc_ids"])
        rank = next((i for i, d in enumerate(docs, start=1) if d in relevant), None)
        if rank is not None and rank <= 10:
            rr += 1 / rank
        facts = [[_norm(a) for a in (f if isinstance(f, list) else [f])] for f in q.get("facts", [])]
        for k in KS:
            doc_hits[k] += rank is not None and rank <= k
            seen = _norm(" ".join(h.text for h in hits[:k]))
            fact_hits[k] += bool(facts) and all(any(a in seen for a in alts) for alts in facts)
    n = len(questions)
    out = {f"doc_recall@{k}": round(doc_hits[k] / n, 4) for k in KS}
    out["mrr@10"] = round(rr / n, 4)
    out.update({f"fact_recall@{k}": round(fact_hits[k] / n, 4) for k in KS})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="Write the report here as JSON.")
    args = parser.parse_args()
    questions = [
        json.loads(line)
        for line in (SAMPLES_DIR / "eval" / "in_kb_facts.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    docs = read_help_centre(SAMPLES_DIR)
    embedder = MiniLMEmbedder()
    start = time.perf_counter()
    with scratch_kb(docs, embedder) as kb:
        build_s = time.perf_counter() - start
        report = {
            "questions": len(questions),
            "documents": len(kb.documents()),
            "chunks": len(kb),
            "chunking": json.loads((kb.root / "manifest.json").read_text())["chunking"],
            "build_s": round(build_s, 2),
            "hybrid": evaluate(questions, kb),
        }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
