"""The recommender's parts on their own: shared-prefix LLM scores against separate ones, the
blender's JSON, MMR, the catalogue's cross-process sync, and the Redis signals against the in-memory
ones the evaluation and ranker training use. (The prompt against training: test_recommend_contract.)"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from apps.recommend.catalogue import Catalogue
from apps.recommend.signals import RedisSignals
from core.engine import LocalEngine
from core.errors import InvalidRequestError
from domains.recommend.prompt import INSTRUCTION, PreferencePrompt
from domains.recommend.ranking import FEATURES, NO_LLM_FEATURES, Blender, Rankers, fallback_blender
from domains.recommend.records import Event, Item, parse_event, parse_item
from domains.recommend.rules import mmr
from domains.recommend.scoring import LLMScorer
from domains.recommend.signals import MemorySignals
from finetune.ranker import fit_blender, residual_blender
from tests.doubles.recommend import HashEmbedder
from tests.doubles.redis import RedisProcess

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    server = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield redis.Redis.from_url(server.url)
    server.stop()


# ---- the prompt and the LLM score -------------------------------------------------------------


def test_shared_prefix_scores_equal_scoring_each_candidate_alone(tiny_engine: LocalEngine) -> None:
    scorer = LLMScorer(tiny_engine, "alpha")
    liked, disliked = ["Trail Running Shoe", "Running Socks"], ["Garden Hose"]
    titles = ["Running Jacket", "Espresso Beans", "A Much Longer Product Title With Many Words", "Tea"]
    shared = scorer.score(liked, disliked, titles)
    alone = scorer.score_separately(liked, disliked, titles)
    assert scorer.model() == "alpha" and LLMScorer(tiny_engine, "recommend").model() == "base"
    assert np.allclose(shared, alone, atol=1e-4)
    assert all(0.0 < p < 1.0 for p in shared)
    # and both equal the classifier's P("Yes") on the full training-format prompt
    texts = [PreferencePrompt(tuple(liked), tuple(disliked), t, "Yes").text() for t in titles]
    full = tiny_engine.score_labels(texts, ["Yes", "No"], model="alpha", instruction=INSTRUCTION)
    assert np.allclose(shared, [p["Yes"] for p in full], atol=1e-4)


# ---- blender -------------------------------------------------------------------------------------


def test_a_fitted_blender_round_trips_through_json_without_pickle(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((400, len(FEATURES)))
    y = (x[:, FEATURES.index("covis")] + 0.2 * rng.random(400) > 0.6).astype(int)
    final = fit_blender(x, y, FEATURES, {"llm_model": "base"})
    pre = fit_blender(x, y, NO_LLM_FEATURES)
    assert final.kind == "trained" and final.meta["sklearn"] and final.uses_llm and not pre.uses_llm
    assert final.weights[FEATURES.index("covis")] == max(final.weights)  # it found the signal
    path = tmp_path / "ranker.json"
    Rankers(final, pre).save(path)
    assert path.read_text().lstrip().startswith("{")
    loaded = Rankers.load(path)
    assert loaded is not None
    assert np.allclose(loaded.final.score(x), final.score(x)) and np.allclose(loaded.pre.score(x), pre.score(x))
    path.write_text('{"final": {"format": 99}}')
    assert Rankers.load(path) is None  # unreadable: the service falls back to hand-set weights
    with pytest.raises(InvalidRequestError, match="one class"):
        fit_blender(x, np.zeros(400), FEATURES)


def shortlists(llm_signal: float, users: int = 60, size: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user shortlists with one positive each: covis finds it now and then, the llm column
    carries ``llm_signal`` of it on top of noise."""
    rng = np.random.default_rng(1)
    x = rng.random((users * size, len(FEATURES)))
    y = np.zeros(users * size, dtype=int)
    y[np.arange(users) * size + rng.integers(0, size, users)] = 1
    x[:, FEATURES.index("covis")] += 0.3 * y
    x[:, FEATURES.index("llm")] += llm_signal * y
    return x, y, np.repeat(np.arange(users), size)


def test_the_residual_blend_keeps_the_pre_blend_and_weighs_the_llm_by_validation() -> None:
    x, y, groups = shortlists(llm_signal=0.6)
    pre = fit_blender(x, y, NO_LLM_FEATURES)
    useful = residual_blender(pre, x, y, groups)
    assert useful.features == FEATURES and useful.uses_llm and useful.meta["llm_weight"] > 0
    cols = [FEATURES.index(f) for f in NO_LLM_FEATURES]
    assert np.allclose(useful.weights[1:], pre.weights) and np.allclose(useful.mean[1:], pre.mean)
    ndcg = useful.meta["ndcg_at_weight"]
    assert ndcg[str(useful.meta["llm_weight"])] > ndcg["0.0"]  # the LLM helps on these rows
    assert np.allclose(useful.logit(x) - useful.weights[0] * (x[:, 0] - useful.mean[0]) / useful.scale[0], pre.logit(x))
    assert cols == list(range(1, len(FEATURES)))

    x, y, groups = shortlists(llm_signal=-0.6)  # an LLM score that points the wrong way gets no weight
    noise = residual_blender(fit_blender(x, y, NO_LLM_FEATURES), x, y, groups)
    assert noise.meta["llm_weight"] == 0.0 and not noise.uses_llm
    with pytest.raises(ValueError, match="pre-blend"):
        residual_blender(useful, x, y, groups)


def test_the_fallback_blend_prefers_behaviour_and_the_llm() -> None:
    blend = fallback_blender()
    base = np.zeros((1, len(FEATURES)))
    for feature in ("llm", "sim", "recency", "covis", "pop", "context"):
        more = base.copy()
        more[0, FEATURES.index(feature)] = 1.0
        assert blend.score(more)[0] > blend.score(base)[0], feature
    pricey = base.copy()
    pricey[0, FEATURES.index("price_gap")] = 1.0
    assert blend.score(pricey)[0] < blend.score(base)[0]
    with pytest.raises(ValueError, match="unknown"):
        Blender(("nope",), np.ones(1), np.zeros(1), np.ones(1))


def test_mmr_lambda_trades_relevance_for_diversity() -> None:
    a = np.asarray([1.0, 0.0])
    b = np.asarray([0.0, 1.0])
    vectors = np.stack([a, a, a, b])  # three copies of one thing, one other
    relevance = np.asarray([1.0, 0.95, 0.9, 0.5])
    assert mmr(relevance, vectors, 2, lam=1.0) == [0, 1]
    assert mmr(relevance, vectors, 2, lam=0.5) == [0, 3]
    assert mmr(relevance, vectors, 10, lam=0.5)[:2] == [0, 3] and len(mmr(relevance, vectors, 10, 0.5)) == 4


# ---- records ---------------------------------------------------------------------------------------


def test_items_and_events_are_normalised_at_the_door() -> None:
    item = parse_item(
        {"id": 42, "title": " Mug ", "tags": "Kitchen|Mugs|kitchen", "price": "9.5", "in_stock": "no", "colour": "red"}
    )
    assert (item.id, item.title, item.tags, item.price, item.in_stock) == ("42", "Mug", ("kitchen", "mugs"), 9.5, False)
    assert item.extra == {"colour": "red"} and Item.from_json(item.to_json()) == item
    e = parse_event({"user_id": "u", "item_id": "i", "type": "rating", "value": "4", "ts": "2026-01-02T03:04:05Z"})
    assert e.value == 4.0 and e.ts == 1767323045.0
    for bad, needle in [
        ({"user_id": "u", "item_id": "i", "type": "view", "ts": -5}, "negative"),
        ({"user_id": "u", "item_id": "i", "type": "rating", "value": float("nan")}, "finite"),
        ({"user_id": "u", "item_id": "i", "type": "rating", "value": True}, "number"),
        ([1, 2], "object"),
    ]:
        with pytest.raises(InvalidRequestError, match=needle):
            parse_event(bad)


# ---- catalogue ---------------------------------------------------------------------------------


class CountingEmbedder(HashEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.texts += texts
        return super().__call__(texts)


def test_the_catalogue_syncs_across_processes_and_embeds_only_changed_text(client: redis.Redis) -> None:
    ns = f"c{uuid.uuid4().hex[:8]}"
    embed_a, embed_b = CountingEmbedder(), CountingEmbedder()
    writer, reader = Catalogue(client, ns, embed_a), Catalogue(client, ns, embed_b)
    items = [Item(f"i{n}", f"Product {n}", category="x", price=float(n)) for n in range(5)]
    assert writer.upsert(items) == (5, 0) and len(embed_a.texts) == 5
    assert len(reader.sync()) == 5 and embed_b.texts == []  # vectors come from Redis, not re-embedded
    writer.upsert([Item("i1", "Product 1", category="x", price=99.0, in_stock=False)])  # no text change
    assert len(embed_a.texts) == 5
    index = reader.sync()
    assert index.items["i1"].price == 99.0 and not index.items["i1"].in_stock
    writer.upsert([Item("i2", "Renamed Blue Kettle", category="x")])
    assert embed_a.texts[-1].startswith("Renamed Blue Kettle")
    [[(best, score)]] = reader.sync().search(HashEmbedder()(["Renamed Blue Kettle. x"]), 1)
    assert best == "i2" and score == pytest.approx(1.0, abs=1e-5)
    assert writer.delete(["i3", "ghost"]) == (["i3"], ["ghost"])
    assert "i3" not in reader.sync() and len(reader.sync()) == 4
    hits = reader.sync().search(reader.sync().vectors(["i0"]), 10)[0]
    assert "i3" not in {h for h, _ in hits} and len(hits) == 4


# ---- signals -----------------------------------------------------------------------------------


def _log() -> list[Event]:
    day = 86400.0
    t0 = 1_767_225_600.0
    rows = [
        ("u1", "old-hit", "purchase", t0), ("u2", "old-hit", "purchase", t0), ("u3", "old-hit", "purchase", t0),
        ("u1", "new", "view", t0 + 60 * day), ("u2", "new", "click", t0 + 60 * day),
        ("u1", "b", "view", t0 + 61 * day), ("u1", "c", "view", t0 + 62 * day),
        ("u2", "b", "view", t0 + 61 * day), ("u3", "c", "cart", t0 + 63 * day),
    ]  # fmt: skip
    return [Event(u, i, k, t) for u, i, k, t in rows]


def test_redis_and_memory_signals_agree(client: redis.Redis) -> None:
    events = _log()
    now = max(e.ts for e in events)
    live = RedisSignals(client, f"s{uuid.uuid4().hex[:8]}", half_life_s=7 * 86400.0, window=10, history_len=50)
    live.record(events[:4], {}, ["purchase"])
    live.record(events[4:], {}, ["purchase"])  # in two batches, as the API would
    by_user: dict[str, list[Event]] = {}
    for e in sorted(events, key=lambda e: e.ts):
        by_user.setdefault(e.user_id, []).append(e)
    offline = MemorySignals.from_histories(by_user, 7 * 86400.0, 10)
    ids = ["old-hit", "new", "b", "c"]
    assert np.allclose(live.popularity(ids, now), offline.popularity(ids, now), rtol=1e-6)
    assert [i for i, _ in live.popular(4, now)] == [i for i, _ in offline.popular(4, now)]
    seeds = [("new", 1.0), ("b", 0.8)]
    assert np.allclose(live.covis_with(seeds, ids), offline.covis_with(seeds, ids))
    got, want = live.covisited(seeds, 10), offline.covisited(seeds, 10)
    assert got.keys() == want.keys() and all(got[i] == pytest.approx(want[i]) for i in want)
    # decay: three purchases two months ago count less than two fresh views and clicks
    pop = dict(live.popular(4, now))
    assert pop["new"] > pop["old-hit"]
    assert live.excluded("u1") == {"old-hit"} and [e.item_id for e in live.history("u1")] == [
        "c",
        "b",
        "new",
        "old-hit",
    ]
    before = [i for i, _ in live.popular(4, now)]
    live.rebase(now)
    assert [i for i, _ in live.popular(4, now)] == before
    assert np.allclose(live.popularity(ids, now), offline.popularity(ids, now), rtol=1e-6)
