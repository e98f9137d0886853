"""Support bot latency on this CPU: a whole answer (extract, then compose), and FAISS search at
100k chunks.

    .venv/bin/python bench/support_bench.py              # 60 dev questions
    .venv/bin/python bench/support_bench.py --quick      # 10

One process: the real engine (base model + the support adapter when data/adapters/support
exists), MiniLM, the sample help centre (data/samples/support) in a temporary knowledge base.

* Answer path: the customer's message through the whole plan (PII masking, rules, intent head,
  hybrid retrieval per part, sentence features and selection), one request at a time, after the
  KB's sentences were embedded once (as the server does at start).
* FAISS at 100k chunks: 100,000 synthetic unit vectors of MiniLM's width (384), scattered around
  2,000 topic centres, in the index types the knowledge base uses: flat inner product (exact) and
  HNSW (M=32, efSearch=128, above ``ann_threshold``), with HNSW's recall@10 against the exact
  search. One query at a time, as a chat message searches.

Writes bench/results/support_bench.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from apps.support.answer import SupportBot  # noqa: E402
from apps.support.documents import read_help_centre  # noqa: E402
from apps.support.intents import IntentClassifier  # noqa: E402
from apps.support.kb import KnowledgeBase  # noqa: E402
from apps.support.rules import load_rules  # noqa: E402
from apps.support.settings import SAMPLES_DIR, SupportSettings  # noqa: E402
from core.config import get_settings  # noqa: E402
from core.engine import LocalEngine  # noqa: E402
from finetune.evals.support_answers import read_set  # noqa: E402

OUT = ROOT / "bench" / "results" / "support_bench.json"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_ms": pct(values, 50) * 1e3, "p99_ms": pct(values, 99) * 1e3}


def bench_answers(bot: SupportBot, n: int) -> dict[str, Any]:
    """The whole plan (PII, rules, intent head, retrieval, sentence selection) per dev question."""
    times, answered = [], 0
    questions = [r["question"] for g in ("in_kb", "out_of_kb") for r in read_set(SAMPLES_DIR, "dev", g)]
    for q in questions[:n]:
        started = time.perf_counter()
        reply = bot.answer(q)
        times.append(time.perf_counter() - started)
        answered += not reply.handoff
    return {**summary(times), "answered": answered}


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int, spread: float) -> np.ndarray:
    """Unit vectors scattered around topic centres, as sentence embeddings of a help centre are
    (uniform random vectors are the worst case for any ANN index and unlike real text)."""
    x = centres[rng.integers(0, len(centres), n)] + spread * rng.standard_normal((n, centres.shape[1]))
    x = x.astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def bench_faiss(n: int = 100_000, dim: int = 384, queries: int = 200, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2000, dim)) / np.sqrt(dim)
    xb = clustered(rng, centres, n, 1.0 / np.sqrt(dim))
    xq = clustered(rng, centres, queries, 1.0 / np.sqrt(dim))
    out: dict[str, Any] = {"chunks": n, "dim": dim, "threads": faiss.omp_get_max_threads()}
    flat = faiss.IndexFlatIP(dim)
    started = time.perf_counter()
    flat.add(xb)
    out["flat_build_s"] = time.perf_counter() - started
    hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)  # as apps/support/kb.py builds it
    hnsw.hnsw.efConstruction = 80
    hnsw.hnsw.efSearch = 128
    started = time.perf_counter()
    hnsw.add(xb)
    out["hnsw_build_s"] = time.perf_counter() - started
    exact = []
    for name, index in (("flat", flat), ("hnsw", hnsw)):
        times, ids = [], []
        for q in xq:  # one query at a time, as a chat message searches
            started = time.perf_counter()
            _, found = index.search(q[None, :], 10)
            times.append(time.perf_counter() - started)
            ids.append(found[0])
        out[name] = summary(times)
        if name == "flat":
            exact = ids
        else:
            out["hnsw_recall_at_10"] = float(
                np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact, strict=True)])
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 questions rather than 60")
    args = parser.parse_args()
    n_questions = 10 if args.quick else 60

    engine = LocalEngine(get_settings())
    engine.warm_up()
    settings = SupportSettings()
    results: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}
    }
    with tempfile.TemporaryDirectory() as tmp:
        kb = KnowledgeBase(Path(tmp) / "kb", engine)
        kb.warm_up()
        results["kb_documents"] = len(kb.upsert_many(read_help_centre(SAMPLES_DIR)))
        results["kb_chunks"] = len(kb)
        bot = SupportBot(
            engine, kb, load_rules(settings.rules_path), settings, IntentClassifier(engine, settings.adapter)
        )
        results["model"] = bot.model
        results["kb_texts_embedded"] = bot.warm_up()  # as the server does once the engine is up
        bot.answer("How long does delivery take?")  # warm the paths once
        results["answer_path"] = bench_answers(bot, n_questions)
    engine.close()
    results["faiss_100k"] = bench_faiss()

    ans, fs = results["answer_path"], results["faiss_100k"]
    print(f"{'path':<34}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'answer (whole plan)':<34}{ans['p50_ms']:>10.1f}{ans['p99_ms']:>10.1f}")
    print(f"{'FAISS flat, 100k chunks, k=10':<34}{fs['flat']['p50_ms']:>10.2f}{fs['flat']['p99_ms']:>10.2f}")
    print(f"{'FAISS HNSW, 100k chunks, k=10':<34}{fs['hnsw']['p50_ms']:>10.2f}{fs['hnsw']['p99_ms']:>10.2f}")
    print(
        f"HNSW recall@10 vs exact: {fs['hnsw_recall_at_10']:.3f}; flat {fs['flat']['p50_ms'] / fs['hnsw']['p50_ms']:.1f}x slower"
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
