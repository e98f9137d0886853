"""Support bot latency on this CPU: the FAQ-match path, time to the first token of a generated
answer, and FAISS search at 100k chunks.

    .venv/bin/python bench/support_bench.py              # 40 FAQ questions, 12 generated answers
    .venv/bin/python bench/support_bench.py --quick      # fewer of each

One process: the real engine (base model + the support adapter when data/adapters/support
exists), MiniLM, the sample help centre (data/samples/support) in a temporary knowledge base.

* FAQ path: the customer's message through the whole plan (PII masking, rules, intent, FAQ
  match): what a customer waits for when a curated answer matches.
* Generated path: plan + retrieval, then the support adapter streams the answer; time to the first
  token and to the last, one request at a time.
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


def faq_questions(n: int) -> list[str]:
    import csv

    with (SAMPLES_DIR / "faq.csv").open(encoding="utf-8", newline="") as fh:
        questions = [r["question"] for r in csv.DictReader(fh)]
    return [questions[i % len(questions)] for i in range(n)]


def bench_faq(bot: SupportBot, n: int) -> dict[str, Any]:
    times, matched = [], 0
    for q in faq_questions(n):
        started = time.perf_counter()
        plan = bot.plan(q)
        times.append(time.perf_counter() - started)
        matched += plan.reply is not None and plan.reply.source == "faq"
    return {**summary(times), "faq_matched": matched}


def bench_generated(engine: LocalEngine, bot: SupportBot, n: int) -> dict[str, Any]:
    first, total, tokens = [], [], []
    questions = [r["question"] for r in read_set(SAMPLES_DIR, "in_kb")]
    tried = 0
    for q in questions:
        if len(first) >= n:
            break
        tried += 1
        started = time.perf_counter()
        plan = bot.plan(q)
        if plan.prompt is None:  # answered from the FAQ or handed off: not this path
            continue
        seen: list[float] = []
        completion = engine.generate(
            plan.prompt,
            model=bot.model,
            params=bot.sampling(),
            on_delta=lambda _text, seen=seen: seen.append(time.perf_counter()) if not seen else None,
        )
        bot.finish(plan, completion.text)
        first.append((seen[0] if seen else time.perf_counter()) - started)
        total.append(time.perf_counter() - started)
        tokens.append(completion.completion_tokens)
    return {
        "time_to_first_token": summary(first),
        "full_answer": summary(total),
        "mean_tokens": float(np.mean(tokens)) if tokens else 0.0,
        "questions_tried": tried,
    }


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
    parser.add_argument("--quick", action="store_true", help="10 FAQ questions, 4 generated answers")
    args = parser.parse_args()
    n_faq, n_gen = (10, 4) if args.quick else (40, 12)

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
        bot.plan("How long does delivery take?")  # warm the paths once
        results["faq_path"] = bench_faq(bot, n_faq)
        results["generated_path"] = bench_generated(engine, bot, n_gen)
    engine.close()
    results["faiss_100k"] = bench_faiss()

    faq, gen, fs = results["faq_path"], results["generated_path"], results["faiss_100k"]
    print(f"{'path':<34}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'FAQ match (whole plan)':<34}{faq['p50_ms']:>10.1f}{faq['p99_ms']:>10.1f}")
    print(
        f"{'generated: first token':<34}{gen['time_to_first_token']['p50_ms']:>10.1f}{gen['time_to_first_token']['p99_ms']:>10.1f}"
    )
    print(f"{'generated: full answer':<34}{gen['full_answer']['p50_ms']:>10.1f}{gen['full_answer']['p99_ms']:>10.1f}")
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
