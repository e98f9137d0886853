"""The MovieLens ranking evaluation on synthetic data: metrics, the leave-one-out split, the sampled
protocol, and one whole run of every system (tiny random Llama, bag-of-words embeddings)."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.engine import LocalEngine
from core.errors import InvalidRequestError
from domains.recommend.records import Event
from finetune.evals.recommend import (
    Popularity,
    evaluate,
    leave_one_out,
    rank_in,
    recall_at_k,
    run_protocols,
    sample_negatives,
    sampled_rank,
    top_k_excluding,
)
from finetune.ranker import ndcg_at_k
from tests.doubles.recommend import HashEmbedder

pytestmark = pytest.mark.unit


def test_ndcg_and_recall_for_one_relevant_item() -> None:
    assert ndcg_at_k(0) == 1.0
    assert ndcg_at_k(1) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k(9) == pytest.approx(1 / math.log2(11))
    assert ndcg_at_k(10) == 0.0 and ndcg_at_k(None) == 0.0
    assert recall_at_k(9) == 1.0 and recall_at_k(10) == 0.0 and recall_at_k(None) == 0.0
    assert rank_in("b", ["a", "b"]) == 1 and rank_in("z", ["a"]) is None


def test_sampled_rank_counts_ties_against_the_system() -> None:
    assert sampled_rank(0.9, np.asarray([0.1, 0.2])) == 0
    assert sampled_rank(0.5, np.asarray([0.5, 0.1, 0.7])) == 2  # one tie, one better
    assert sampled_rank(1.0, np.ones(100)) == 100  # a constant scorer never gets credit


def test_negatives_are_distinct_unseen_and_reproducible() -> None:
    items = [str(i) for i in range(300)]
    seen = {str(i) for i in range(0, 300, 3)}
    a = sample_negatives(random.Random(1), items, seen)
    assert len(a) == 100 == len(set(a)) and not seen & set(a)
    assert a == sample_negatives(random.Random(1), items, seen)
    with pytest.raises(InvalidRequestError, match="only 80 items"):
        sample_negatives(random.Random(1), items[:120], seen)


def test_top_k_skips_seen_items() -> None:
    scores = np.asarray([5.0, 4.0, 3.0, 2.0])
    assert top_k_excluding(scores, ["a", "b", "c", "d"], {"a", "c"}, k=2) == ["b", "d"]


def test_leave_one_out_takes_the_last_two_by_time() -> None:
    events = [Event("u", str(i), "rating", float(t), 4.0) for i, t in enumerate([10, 20, 30, 40])]
    split = leave_one_out({"u": events, "short": events[:2]})
    assert list(split.history) == ["u"]  # fewer than 3 events: dropped
    assert [e.item_id for e in split.history["u"]] == ["0", "1"]
    assert split.target("val", "u") == "2" and split.target("test", "u") == "3"
    assert [e.item_id for e in split.stage("test")["u"]] == ["0", "1", "2"]


def test_popularity_on_both_protocols_by_hand() -> None:
    """Three users; item "p" is the most popular and is user c's test item: both protocols hit."""
    h = {
        "a": [Event("a", x, "rating", t, 4.0) for t, x in enumerate(["p", "q", "r", "p2"])],
        "b": [Event("b", x, "rating", t, 4.0) for t, x in enumerate(["p", "r", "s", "q"])],
        "c": [Event("c", x, "rating", t, 4.0) for t, x in enumerate(["q", "s", "r", "p"])],
    }
    split = leave_one_out(h)
    ids = ["p", "q", "r", "s", "p2", *(f"n{i}" for i in range(120))]
    stage = split.stage("test")
    system = Popularity(stage, ids)
    results = run_protocols([system], ["c"], split, ids, lambda u: {e.item_id for e in stage[u]})
    assert results["full_ranking"]["popularity"]["recall@10"] == 1.0
    assert results["full_ranking"]["popularity"]["ndcg@10"] == 1.0  # "p" is first once q, s, r are seen
    assert results["sampled_100"]["popularity"]["hr@10"] == 1.0


def _write_movielens(folder: Path, users: int = 40, movies: int = 150, seed: int = 3) -> None:
    """Genre chains: each user walks through movies of one or two genres in order, so sequence,
    co-visitation and content all carry signal."""
    rng = random.Random(seed)
    genres = ["Comedy", "Drama", "Horror", "Sci-Fi", "Romance"]
    folder.mkdir(parents=True)
    with (folder / "movies.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["movieId", "title", "genres"])
        for m in range(movies):
            g = genres[m % len(genres)]
            w.writerow([m + 1, f"{g} Story {m // len(genres)} ({1980 + m % 40})", f"{g}|{genres[(m + 1) % 5]}"])
    with (folder / "ratings.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["userId", "movieId", "rating", "timestamp"])
        for u in range(users):
            g = rng.randrange(len(genres))
            start = rng.randrange(0, 10)
            t = 1_000_000 + u * 50_000
            for step in range(rng.randint(8, 14)):
                movie = (start + step) * len(genres) + g + 1
                w.writerow([u + 1, movie, rng.choice([2.0, 3.5, 4.0, 5.0]), t + step * 600])


def test_a_whole_run_writes_both_protocols_for_every_system(
    tiny_engine: LocalEngine, tmp_path: Path, monkeypatch: Any
) -> None:
    folder = tmp_path / "ml"
    _write_movielens(folder)
    monkeypatch.setattr(tiny_engine, "embed", HashEmbedder())
    report = evaluate(
        tiny_engine.settings, out_dir=tmp_path / "out", users=20, llm_candidates=8, engine=tiny_engine, data_dir=folder
    )
    written = json.loads((tmp_path / "out" / "quality_recommend_ranking.json").read_text())
    assert written["splits"] == report["splits"]
    names = {"popularity", "implicit_als_64", "implicit_bpr_64", "embedding_only", "candidates_no_llm", "full_pipeline"}
    assert set(report["splits"]["full_ranking"]) == names == set(report["splits"]["sampled_100"])
    for protocol in report["splits"].values():
        for values in protocol.values():
            assert values["users"] == 20
            assert 0.0 <= values["ndcg@10"] <= values["recall@10"] <= 1.0
    assert "leave-one-out by timestamp" in report["protocols"]["full_ranking"]
    assert "100 uniformly sampled" in report["protocols"]["sampled_100"]
    assert report["llm"]["model"] == "base" and report["stages"]["validation"]["llm_rows"] > 0
    # the chains make the next movie predictable: the candidate pipeline must find it often
    assert report["splits"]["full_ranking"]["candidates_no_llm"]["recall@10"] >= 0.5
    assert (
        report["splits"]["full_ranking"]["candidates_no_llm"]["ndcg@10"]
        > report["splits"]["full_ranking"]["popularity"]["ndcg@10"]
    )
