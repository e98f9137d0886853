"""Recommendation endpoint latency: shared-prefix LLM scoring against scoring each candidate alone.

    .venv/bin/python bench/recommend_bench.py                 # 40 timed requests per mode
    .venv/bin/python bench/recommend_bench.py --requests 10   # quicker

One process: an embedded Redis on a free port, the real base model (and the recommend-next adapter,
the app's default, when data/adapters/recommend-next exists), MiniLM, the sample catalogue and event log from
data/samples/recommend. Each request is ``GET /v1/recommend/{user}?k=10`` through the FastAPI app
(in-process HTTP), with 50 candidates scored by the LLM. Two modes on the same users in the same
order:

* shared prefix: one ``score_continuations`` call: the user's history prefix runs once, the 50
  target sentences are continuations over its cache;
* separately: the same 50 prompts, each a full forward from the start (the prefix recomputed 50 times).

Prints p50 / p99 per mode and the speed-up, and writes bench/results/recommend_bench.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from apps.deps import get_recommend_service  # noqa: E402
from apps.recommend import service as service_module  # noqa: E402
from apps.recommend.service import RecommendService  # noqa: E402
from apps.recommend.settings import RecommendSettings  # noqa: E402
from apps.server import create_app  # noqa: E402
from core.config import get_settings  # noqa: E402
from core.engine import LocalEngine  # noqa: E402
from domains.recommend.records import format_of, read_text  # noqa: E402
from domains.recommend.scoring import LLMScorer  # noqa: E402
from tests.doubles.redis import RedisProcess  # noqa: E402

SAMPLES = ROOT / "data" / "samples" / "recommend"
OUT = ROOT / "bench" / "results" / "recommend_bench.json"


class SeparateScorer(LLMScorer):
    """The baseline: every candidate scored as its own prompt."""

    def score(self, liked: Any, disliked: Any, titles: Any) -> list[float]:
        return self.score_separately(liked, disliked, titles)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="timed requests per mode")
    parser.add_argument("--candidates", type=int, default=50, help="LLM-scored candidates per request")
    args = parser.parse_args()

    # a one-off admin key: the bench calls the routes as the storefront's backend would, with a key
    core = get_settings().model_copy(update={"admin_key": SecretStr(secrets.token_urlsafe(24))})
    engine = LocalEngine(core)
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisProcess(Path(tmp) / "redis").start()
        try:
            engine.warm_up()
            settings = RecommendSettings(
                namespace=f"bench{uuid.uuid4().hex[:6]}",
                ranker_path=Path(tmp) / "none.json",  # the hand-set blend: its LLM weight is non-zero
                llm_candidates=args.candidates,
                exclude_shown=False,  # the same user asked twice must get the same work
            )
            service = RecommendService(settings, redis.Redis.from_url(server.url), engine.embed, lambda: engine)
            cat, ev = SAMPLES / "catalogue.jsonl", SAMPLES / "events.jsonl"
            service.upsert_items_text(read_text(cat), format_of(cat))
            service.add_events_text(read_text(ev), format_of(ev))
            users = sorted({e.user_id for e in service.signals.logged_events()})[: args.requests]
            app = create_app(core, engine=engine)
            app.dependency_overrides[get_recommend_service] = lambda: service
            results: dict[str, Any] = {}
            with TestClient(app, headers={"X-Api-Key": core.admin_key.get_secret_value()}) as client:
                for mode, scorer in [("shared_prefix", LLMScorer), ("separately", SeparateScorer)]:
                    service_module.LLMScorer = scorer  # type: ignore[misc]
                    for u in users[:3]:  # warm-up
                        client.get(f"/v1/recommend/{u}", params={"k": 10})
                    times, models = [], set()
                    for u in users:
                        started = time.perf_counter()
                        r = client.get(f"/v1/recommend/{u}", params={"k": 10})
                        times.append(time.perf_counter() - started)
                        assert r.status_code == 200, r.text
                        models.add(r.json()["model"])
                    results[mode] = {
                        "p50_ms": round(1000 * statistics.median(times), 1),
                        "p99_ms": round(1000 * percentile(times, 0.99), 1),
                        "mean_ms": round(1000 * statistics.fmean(times), 1),
                        "requests": len(times),
                        "models": sorted(models),
                    }
            service_module.LLMScorer = LLMScorer  # type: ignore[misc]
        finally:
            engine.close()
            server.stop()
    speedup = results["separately"]["p50_ms"] / results["shared_prefix"]["p50_ms"]
    report = {
        "what": "GET /v1/recommend/{user}?k=10, in-process HTTP, sample catalogue and events",
        "llm_candidates": args.candidates,
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "base_model": core.base_model,
        "results": results,
        "speedup_p50": round(speedup, 2),
        "target": "shared prefix at least 3x faster than scoring each candidate separately",
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    print(f"{'mode':<15}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    for mode, r in results.items():
        print(f"{mode:<15}{r['p50_ms']:>10}{r['p99_ms']:>10}{r['mean_ms']:>10}")
    print(f"speed-up (p50): {speedup:.2f}x  -> {OUT}")


if __name__ == "__main__":
    main()
