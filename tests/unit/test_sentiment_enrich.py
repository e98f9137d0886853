"""Enrichment on the tiny random Llama: adapter-or-base sentiment, watchlist entities (the project's
and SEntFiN's real list), topics by embedding (accuracy on the hand-labelled set), occlusion, and
counting each item once however often its batch runs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from apps.sentiment.config import load_monitor_config
from apps.sentiment.enrich import Enricher, enrich_ids
from apps.sentiment.ingest import store_items
from apps.sentiment.items import normalize_item
from apps.sentiment.settings import DEFAULT_CONFIG
from apps.sentiment.store import NewsStore
from apps.sentiment.topics import evaluate_topics
from apps.sentiment.watchlist import Watchlist
from core.config import PROJECT_ROOT, Settings
from core.engine import LocalEngine
from core.redis_client import connect
from core.tiny import build_random_lora

pytestmark = pytest.mark.unit

LABELLED = PROJECT_ROOT / "data" / "samples" / "news" / "topics_labelled.jsonl"
TOPIC_ACCURACY_FLOOR = 0.85  # measured 0.909 top-1 (40/44) with all-MiniLM-L6-v2; see README


@pytest.fixture(scope="module")
def config():  # type: ignore[no-untyped-def]
    return load_monitor_config(DEFAULT_CONFIG)


@pytest.fixture(scope="module")
def engine_with_sentiment(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEngine]:
    adapters = tmp_path_factory.mktemp("sentiment-adapters")
    build_random_lora(tiny_model_dir, adapters / "sentiment", rank=4, seed=3)
    engine = LocalEngine(Settings(environment="test", base_model=str(tiny_model_dir), adapters_dir=adapters,
                             admin_key="k-test", data_dir=adapters / "data", batch_wait_ms=5))  # fmt: skip
    engine.warm_up()
    yield engine
    engine.close()


# ---- watchlist -----------------------------------------------------------------------------------


def test_watchlist_matches_variants_on_word_boundaries() -> None:
    wl = Watchlist({"GLBX": ["Globex", "Globex Corp"], "ACE": ["ACE", "Ace Industries"], "TM": ["Tata Motors"]})
    assert wl.tickers_in("Globex Corp shares fall; GLOBEX denies") == ["GLBX"]
    assert wl.tickers_in("an ace of a quarter for the Globexian unit") == []  # acronyms are case-sensitive
    assert wl.tickers_in("ACE and Tata Motors rally") == ["ACE", "TM"]
    assert [m.name for m in wl.match("Globex Corp")] == ["Globex Corp"]  # the longest variant wins


def test_sentfin_entity_list_finds_the_labelled_entities() -> None:
    """SEntFiN's own list against SEntFiN's entity-labelled headlines, read at run time (never copied
    into the project): of the labelled entities whose name is a variant in the list, the share found
    in the headline. Measured 0.858 over all 10,753 headlines (8,204 such entities), 0.4 ms a headline."""
    import csv
    import re

    root = Settings().shared_data_dir / "finance" / "sentfin"
    if not (root / "entity_list_comprehensive.csv").exists():
        pytest.skip(f"SEntFiN not found under {root}")
    wl = Watchlist.from_csv(root / "entity_list_comprehensive.csv")
    assert len(wl) > 900
    assert wl.tickers_in("Tata Motors Q2 profit rises; BPCL slips") == ["TATAMOTORS", "BPCL"]
    known = {n.casefold() for n in wl.variants()}
    listed = found = 0
    with (root / "SEntFiN.csv").open(encoding="utf-8") as f:
        for row in list(csv.DictReader(f))[:2000]:
            spans = [m.name.casefold() for m in wl.match(row["Title"])]
            for name in re.findall(r"'([^:]+?)': '(?:positive|negative|neutral)'", row["Decisions"]):
                if name.casefold() in known:
                    listed += 1
                    found += any(name.casefold() in s or s in name.casefold() for s in spans)
    assert listed > 1000 and found / listed > 0.8


# ---- sentiment, topics, explanation --------------------------------------------------------------


def test_enricher_falls_back_to_base_and_says_so(tiny_engine: LocalEngine, config) -> None:  # type: ignore[no-untyped-def]
    enricher = Enricher(tiny_engine, config)
    assert enricher.model == "base"
    item = normalize_item({"title": "Globex shares plunge after the regulator opens a probe"}, via="api")
    (e,) = enricher.enrich([item])
    assert e["model"] == "base" and set(e["scores"]) == {"negative", "neutral", "positive"}
    assert abs(sum(e["scores"].values()) - 1) < 1e-3 and e["label"] == max(e["scores"], key=e["scores"].get)
    assert e["entities_keys"] == ["GLBX"] and e["topic_method"].startswith("embedding")


def test_enricher_uses_the_sentiment_adapter_and_batches(engine_with_sentiment: LocalEngine, config) -> None:  # type: ignore[no-untyped-def]
    enricher = Enricher(engine_with_sentiment, config)
    assert enricher.model == "sentiment"
    items = [normalize_item({"title": f"Headline number {i} about Apple"}, via="api") for i in range(6)]
    batched = enricher.enrich(items)
    solo = [enricher.enrich([i])[0] for i in items[:2]]
    assert all(e["model"] == "sentiment" for e in batched)
    for b, s in zip(batched, solo, strict=False):
        assert b["scores"] == pytest.approx(s["scores"], abs=1e-3)


def test_occlusion_gives_one_weight_per_word(tiny_engine: LocalEngine, config) -> None:  # type: ignore[no-untyped-def]
    words = Enricher(tiny_engine, config).explain("Oil prices fall sharply today")
    assert [w["word"] for w in words] == ["Oil", "prices", "fall", "sharply", "today"]
    assert all(isinstance(w["weight"], float) for w in words)


def test_topic_accuracy_on_the_hand_labelled_headlines(tiny_engine: LocalEngine, config) -> None:  # type: ignore[no-untyped-def]
    report = evaluate_topics(Enricher(tiny_engine, config).topics, LABELLED)
    print("topic accuracy:", report)
    assert report["n"] == 44
    assert report["top1_accuracy"] >= TOPIC_ACCURACY_FLOOR


# ---- counted once --------------------------------------------------------------------------------


def test_a_batch_run_twice_counts_each_item_once(tiny_engine: LocalEngine, config, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    store = NewsStore(connect(redis_url, decode=True), f"t{uuid.uuid4().hex[:8]}")
    items = [normalize_item({"title": f"Globex update {i}", "published_at": 1790000000 + i}, via="api")
             for i in range(5)]  # fmt: skip
    store_items(store, items, [], "test")
    enricher = Enricher(tiny_engine, config)
    ids = [i.id for i in items]
    first = enrich_ids(store, enricher, ids)
    second = enrich_ids(store, enricher, [*ids, "unknown-id"])
    assert (first.counted, second.counted, second.already, second.missing) == (5, 0, 5, 1)
    assert store.pending() == []
    for scope in ("all", "entity:GLBX"):
        buckets = store.buckets(scope, 1790000000 - 600, 1790000000 + 600, config.bucket_s)
        assert sum(b.n for b in buckets) == 5
    assert store.stats()["enriched"] == 5
