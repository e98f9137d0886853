"""Sentiment monitor benchmark: enrichment throughput, batched vs one at a time, and push-to-alert
latency through the real pipeline (embedded Redis, a Celery worker, the monitor, a webhook).

    .venv/bin/python bench/sentiment_bench.py                  # 256 headlines, 3 latency runs
    .venv/bin/python bench/sentiment_bench.py --items 16 --latency-runs 1    # a smoke run

1. Throughput: ``Enricher.enrich`` (sentiment with the adapter through ``score_labels``, watchlist
   entities, embedding topics) on N headlines in batches of ``--batch`` against the same N one at a
   time, in the same process, same engine. Items/s for each; the median of ``--repeats`` runs.
2. Latency: a burst of negative headlines is pushed (stored + queued, as POST /v1/sentiment/news
   does); a real worker enriches it; the monitor runs every ``--monitor-every`` seconds (as beat
   would); the time from push to the alert stored, and to the signed webhook received, is measured.

Headlines: the gold commodity news from ../shared/data when present (never copied into the repo),
else the project's sample feed. Results: bench/results/sentiment_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from apps.sentiment.config import load_monitor_config  # noqa: E402
from apps.sentiment.dispatch import CeleryDispatcher, client_app  # noqa: E402
from apps.sentiment.enrich import Enricher  # noqa: E402
from apps.sentiment.items import normalize_item  # noqa: E402
from apps.sentiment.service import SentimentContext  # noqa: E402
from apps.sentiment.settings import DEFAULT_CONFIG, SentimentSettings  # noqa: E402
from core.config import get_settings  # noqa: E402
from core.engine import LocalEngine  # noqa: E402
from tests.doubles.redis import RedisProcess  # noqa: E402
from tests.doubles.sentiment import BURST, WebhookReceiver  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "sentiment_bench.json"
SECRET = "bench-webhook-secret"
RULES = f"""
bucket: 1m
watchlist: {{file: {ROOT / "apps/sentiment/rules/watchlist.yaml"}}}
topics: {{labels: {{litigation: [company sued in court lawsuit]}}}}
rules:
  - {{name: z, kind: zscore, scope: [entity], window: 5m, baseline: 1h, min_items: 5, min_negative_share: 0.5,
     prior_share: 0.25,
     severity: {{warning: 2.0, critical: 3.5}}, cooldown: 1h}}
"""


def headlines(n: int) -> tuple[list[str], str]:
    gold = get_settings().shared_data_dir / "finance" / "gold_commodity_news" / "gold-dataset-sinha-khandait.tsv"
    if gold.exists():
        lines = gold.read_text(encoding="utf-8", errors="replace").splitlines()[1:]
        titles = [line.split("\t")[2].strip('"') for line in lines if line.count("\t") >= 2][:n]
        return titles, "gold commodity news (shared data)"
    print(f"note: {gold} not found; using the project's sample feed")
    sample = [json.loads(x)["title"] for x in (ROOT / "data/samples/news/news.jsonl").read_text().splitlines()]
    return (sample * (n // len(sample) + 1))[:n], "project sample feed"


def throughput(n: int, batch: int, repeats: int) -> dict[str, Any]:
    titles, source = headlines(n)
    items = [normalize_item({"title": t, "published_at": 1_700_000_000 + i}, via="file") for i, t in enumerate(titles)]
    engine = LocalEngine(get_settings())
    engine.warm_up()
    try:
        enricher = Enricher(engine, load_monitor_config(DEFAULT_CONFIG))
        enricher.enrich(items[:2])  # warm: prototype embeddings, first forward

        def batched() -> None:
            for i in range(0, len(items), batch):
                enricher.enrich(items[i : i + batch])

        def one_by_one() -> None:
            for item in items:
                enricher.enrich([item])

        runs: dict[str, list[float]] = {"batched": [], "one_at_a_time": []}
        for _ in range(repeats):
            for name, fn in (("batched", batched), ("one_at_a_time", one_by_one)):
                started = time.perf_counter()
                fn()
                runs[name].append(len(items) / (time.perf_counter() - started))
        agree = sum(
            a["label"] == b["label"]
            for a, b in zip(enricher.enrich(items[:32]), [enricher.enrich([i])[0] for i in items[:32]], strict=True)
        )
        model = enricher.model
    finally:
        engine.close()
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "items": len(items),
        "source": source,
        "model": model,
        "batch": batch,
        "items_per_s": {k: round(v, 2) for k, v in med.items()},
        "runs_items_per_s": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "speedup": round(med["batched"] / med["one_at_a_time"], 2),
        "label_agreement_batched_vs_solo": f"{agree}/{min(32, len(items))}",
    }


def latency(runs: int, monitor_every: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="sentiment-bench-"))
    redis = RedisProcess(tmp / "redis").start()
    receiver = WebhookReceiver(SECRET).start()
    config = tmp / "rules.yaml"
    config.write_text(RULES)
    env = {**os.environ, "DOMAINLLM_REDIS_URL": redis.url, "DOMAINLLM_SENTIMENT_WEBHOOK_URL": receiver.url + "/hook",
           "DOMAINLLM_SENTIMENT_WEBHOOK_SECRET": SECRET}  # fmt: skip
    log = tmp / "worker.log"
    cmd = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "enrich,alerts", "-l", "INFO"]
    with log.open("wb") as out:
        worker = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    results = []
    try:
        deadline = time.monotonic() + 120
        while "worker engine ready" not in log.read_text():
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError(f"the worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        settings = SentimentSettings(config_path=config, webhook_url=receiver.url + "/hook", webhook_secret=SECRET)
        core = get_settings().model_copy(update={"redis_url": redis.url})
        for run in range(runs):
            ctx = SentimentContext.build(settings, core, namespace=f"bench{uuid.uuid4().hex[:6]}",
                                         config_path=config, dispatcher=CeleryDispatcher(client_app(redis.url)))  # fmt: skip
            received_before = len(receiver.received)
            pushed = time.perf_counter()
            now = time.time()
            records = [(f"r{i}", {"title": t, "published_at": now, "url": f"https://bench.example/{run}/{i}"})
                       for i, t in enumerate(BURST)]  # fmt: skip
            ctx.ingest_records(records, via="api", source="bench")
            enriched_at = alert_at = webhook_at = None
            next_tick = pushed
            while time.perf_counter() - pushed < 120:
                if enriched_at is None and ctx.store.pending_count() == 0:
                    enriched_at = time.perf_counter()
                if alert_at is None and time.perf_counter() >= next_tick:
                    next_tick += monitor_every
                    if ctx.monitor():
                        alert_at = time.perf_counter()
                if alert_at is not None and len(receiver.received) > received_before:
                    webhook_at = time.perf_counter()
                    break
                time.sleep(0.02)
            results.append({
                "enriched_s": None if enriched_at is None else round(enriched_at - pushed, 3),
                "alert_s": None if alert_at is None else round(alert_at - pushed, 3),
                "webhook_s": None if webhook_at is None else round(webhook_at - pushed, 3),
            })  # fmt: skip
            print(f"latency run {run + 1}: {results[-1]}")
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        receiver.stop()
        redis.stop()
    done = [r for r in results if r["webhook_s"] is not None]
    return {
        "burst_items": len(BURST),
        "monitor_every_s": monitor_every,
        "runs": results,
        "median_s": {k: statistics.median(r[k] for r in done) for k in ("enriched_s", "alert_s", "webhook_s")}
        if done
        else None,
        "note": "the monitor runs every monitor_every_s (beat's interval in production, default 30 s); "
        "alert latency is enrichment + up to one interval",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-runs", type=int, default=3)
    parser.add_argument("--monitor-every", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--latency-only", action="store_true", help="Rerun the latency part; keep the throughput in --out."
    )
    args = parser.parse_args()
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "args": {k: str(v) for k, v in vars(args).items()},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if args.latency_only:
        report["throughput"] = json.loads(args.out.read_text())["throughput"]
    else:
        report["throughput"] = throughput(args.items, args.batch, args.repeats)
    t = report["throughput"]
    print(f"enrichment ({t['model']}, {t['items']} items): batched {t['items_per_s']['batched']} items/s, "
          f"one at a time {t['items_per_s']['one_at_a_time']} items/s, x{t['speedup']}")  # fmt: skip
    if args.latency_runs:
        report["latency"] = latency(args.latency_runs, args.monitor_every)
        print(f"push to alert: {report['latency']['median_s']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
