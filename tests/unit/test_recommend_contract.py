"""The recommend train/serve contract, through domains/recommend: the tokens training puts under
the adapter are the tokens the ranking scores, the history window and the card's serving section
read the same on both sides, and the ratings the ranking evaluation holds out are never training
targets (one MovieLens reader, same-second ties broken by movie id)."""

from __future__ import annotations

import csv
import random
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import AutoTokenizer

from core.engine import LocalEngine
from core.sampling import ContinuationScore
from domains.recommend.index import VectorIndex
from domains.recommend.movielens import HELD_OUT, read_movielens
from domains.recommend.pipeline import Pipeline, PipelineConfig, build_profile
from domains.recommend.prompt import HISTORY, INSTRUCTION, LABELS, PreferencePrompt
from domains.recommend.ranking import fallback_blender
from domains.recommend.records import Event, Item, read_catalogue, read_events
from domains.recommend.scoring import LLMScorer
from domains.recommend.serving import RecommendServing, read_serving, serving_section
from domains.recommend.signals import MemorySignals
from finetune.config import TrainConfig
from finetune.data.recommend import assemble, window_prompts
from finetune.evals.recommend import leave_one_out
from finetune.tasks.recommend import to_examples, to_group_examples
from tests.doubles.recommend import HashEmbedder

pytestmark = pytest.mark.unit

ROW = PreferencePrompt(("Heat (1995)", 'The "Thing" (1982)'), ("Cats (2019)",), "Alien (1979)", "Yes")
OTHER = PreferencePrompt(ROW.liked, ROW.disliked, "Up (2009)", "No")


def _config(**options: Any) -> TrainConfig:
    return TrainConfig(
        task="recommend", adapter_name="toy", data={"x": "x"}, labels=list(LABELS), max_length=2048, options=options
    )


class Spy:
    """Records what the scorer sends the engine, then lets the engine score it."""

    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine
        self.calls: list[dict[str, Any]] = []
        self.real = engine.submit_score_continuations

    def __call__(self, prefix: str, continuations: list[str], **kwargs: Any) -> Future[list[ContinuationScore]]:
        self.calls.append({"prefix": prefix, "continuations": continuations, **kwargs})
        return self.real(prefix, continuations, **kwargs)


# ---- (a) the same tokens ---------------------------------------------------------------------------


def test_the_training_prompt_and_the_served_prompt_are_the_same_tokens(
    tiny_engine: LocalEngine, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)  # as the trainer loads it
    [whole] = to_examples(tokenizer, [ROW], _config())  # the single-prompt path
    [group], agreement = to_group_examples(tokenizer, [[ROW, OTHER]], _config())  # the shared-prefix path
    assert agreement == 1.0

    spy = Spy(tiny_engine)
    monkeypatch.setattr(tiny_engine, "submit_score_continuations", spy)
    LLMScorer(tiny_engine, "alpha").score(list(ROW.liked), list(ROW.disliked), [ROW.target, OTHER.target])
    [call] = spy.calls
    served = [tiny_engine.tokenize(call["prefix"]) + tiny_engine.tokenize(c) for c in call["continuations"]]

    assert served[0] == whole.prompt_ids
    assert served[0] == group.prompt_ids + group.continuations[0]
    assert served[1] == group.prompt_ids + group.continuations[1]
    assert call["answer_labels"] == LABELS and group.labels == [0, 1]
    assert whole.label == LABELS.index(ROW.label)


def _index(titles: list[str]) -> VectorIndex:
    index = VectorIndex(384)
    items = [Item(f"m{n}", t) for n, t in enumerate(titles)]
    index.put(items, HashEmbedder()(titles))
    return index


def test_the_served_history_window_is_the_trained_one(tiny_engine: LocalEngine) -> None:
    """The same user's ratings: training's window before the target, and the titles the pipeline
    puts in the prompt from that user's events (newest first, as Redis keeps them)."""
    ratings = [(1000 + 60 * n, f"Film {n} ({1980 + n})", [4.5, 2.0, 3.0, 5.0, 3.5][n % 5]) for n in range(13)]
    [trained] = window_prompts(ratings, len(ratings) - 1, 1)
    index = _index([t for _, t, _ in ratings])
    ids = {item.title: item.id for item in index.items.values()}
    events = [Event("u", ids[t], "rating", float(ts), r) for ts, t, r in ratings[:-1]][::-1]
    scorer = LLMScorer(tiny_engine, "alpha")
    pipeline = Pipeline(
        index, MemorySignals(86400.0, 10), PipelineConfig(), fallback_blender(), fallback_blender(False), scorer
    )
    served = pipeline.llm_titles(scorer, build_profile(events, index), None)
    assert served == (list(trained.liked), list(trained.disliked))
    assert len(trained.liked) + len(trained.disliked) == HISTORY


def test_the_scorer_prompts_each_adapter_as_its_card_says(
    tiny_engine: LocalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = serving_section(
        RecommendServing(instruction="Answer Yes if the shopper buys it next.", history=2, liked_above=4.0)
    )
    real = tiny_engine.serving_config
    monkeypatch.setattr(tiny_engine, "serving_config", lambda name: card if name == "alpha" else real(name))
    scorer = LLMScorer(tiny_engine, "alpha")
    assert (
        scorer.serving().instruction == card["instruction"] and LLMScorer(tiny_engine, "nope").serving().history == 10
    )
    titles = ["Tea Pot", "Garden Hose"]
    got = scorer.score(["Green Tea", "Black Tea"], [], titles)
    texts = [PreferencePrompt(("Green Tea", "Black Tea"), (), t, "Yes").text() for t in titles]
    want = tiny_engine.score_labels(texts, LABELS, model="alpha", instruction=card["instruction"])
    assert np.allclose(got, [p["Yes"] for p in want], atol=1e-4)
    # the history window follows the card too: two titles, a 4 is not a like for this adapter
    index = _index(["A", "B", "C"])
    events = [Event("u", f"m{n}", "rating", float(n), 4.0) for n in range(3)][::-1]
    pipeline = Pipeline(
        index, MemorySignals(86400.0, 10), PipelineConfig(), fallback_blender(), fallback_blender(False), scorer
    )
    assert pipeline.llm_titles(scorer, build_profile(events, index), None) == ([], ["B", "C"])


def test_the_serving_section_round_trips_and_older_cards_read_as_trained() -> None:
    serving = RecommendServing(instruction="Will they buy it?", labels=("Yes", "No"), history=5, liked_above=3.5)
    section = serving_section(serving, objective="next_item")
    assert read_serving(section) == serving and section["objective"] == "next_item"
    first_cards = {"labels": ["Yes", "No"], "instruction": INSTRUCTION, "method": "score_labels", "prompt": "..."}
    assert read_serving(first_cards) == RecommendServing()
    assert read_serving(None, history=7) == RecommendServing(history=7)
    assert read_serving({"labels": ["Oui", "Non"]}).positive == "Oui"
    for bad in ({"labels": ["Yes", "No"], "positive": "Maybe"}, {"history": 0}, {"labels": ["Yes"]}):
        with pytest.raises(ValueError, match="serving section"):
            read_serving(bad)


# ---- (b) held-out ratings are never training targets ----------------------------------------------

USERS = 20  # two dev users: the dev negatives are drawn from the dev users' titles
PER_USER = 16
TIED = 4  # each user's last four ratings share one second


def _write_movielens(folder: Path, seed: int) -> None:
    """Per user, 16 ratings of its own films; the last four in the same second, written in a shuffled
    order, with titles that sort the other way round from their ids: a tie-break by file order or by
    title would hold out other ratings than one by movie id."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    movies, ratings = [], []
    for u in range(1, USERS + 1):
        base = 1_000_000 + u * 100_000
        for k in range(PER_USER):
            movie = u * 100 + k
            movies.append([movie, f"U{u:02d} {chr(ord('z') - k)} ({1980 + k})", "Drama|Comedy"])
            ts = base + 60 * min(k, PER_USER - TIED)
            ratings.append([u, movie, [4.0, 2.5, 5.0, 3.0][k % 4], ts])
    rng.shuffle(ratings)
    with (folder / "movies.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["movieId", "title", "genres"], *movies])
    with (folder / "ratings.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["userId", "movieId", "rating", "timestamp"], *ratings])


def test_the_reader_breaks_same_second_ties_by_movie_id_whatever_the_file_order(tmp_path: Path) -> None:
    _write_movielens(tmp_path / "a", seed=1)
    _write_movielens(tmp_path / "b", seed=2)
    a = read_movielens(tmp_path / "a" / "ratings.csv", tmp_path / "a" / "movies.csv")
    b = read_movielens(tmp_path / "b" / "ratings.csv", tmp_path / "b" / "movies.csv")
    assert a.ratings == b.ratings
    assert [r.movie for r in a.ratings["3"]] == [str(300 + k) for k in range(PER_USER)]
    assert a.users() == [str(u) for u in range(1, USERS + 1)]
    assert a.items()["301"].category == "Drama" and a.events()["3"][0] == Event("3", "300", "rating", 1300000.0, 4.0)


@pytest.mark.parametrize(
    "options",
    [
        {"targets_per_window": 4, "holdout_last": HELD_OUT},  # the recommend adapter (like, groups)
        {},  # like, one prompt a target; holds out HELD_OUT by default
        {"objective": "next_item", "negatives": 3},  # the recommend-next adapter
    ],
    ids=["like-groups", "like-rows", "next-item"],
)
def test_the_ratings_the_ranking_evaluation_holds_out_are_never_training_targets(
    tmp_path: Path, options: dict[str, Any]
) -> None:
    _write_movielens(tmp_path, seed=3)
    movielens = read_movielens(tmp_path / "ratings.csv", tmp_path / "movies.csv")
    split = leave_one_out(movielens.events())  # what the evaluation validates and tests on
    title = {m.id: m.title for m in movielens.movies.values()}
    held = {(int(u), title[split.val[u].item_id]) for u in split.val} | {
        (int(u), title[split.test[u].item_id]) for u in split.test
    }
    assert {t for u, t in held if u == 3} == {title["314"], title["315"]}  # the movie-id tie-break

    data = assemble(movielens.title_ratings(), _config(windows_per_user=50, per_user=50, **options))
    rows = data.targets()  # training groups or rows, and the dev rows
    assert rows

    def user_of(row: PreferencePrompt) -> int:
        window = row.liked + row.disliked
        assert len({t[:3] for t in window}) == 1  # every title in a window is that user's own
        return int(window[0][1:3])

    for row in rows:
        user = user_of(row)
        assert not {(user, t) for t in row.liked + row.disliked} & held, "a held-out rating is in a history window"
        assert (user, row.target) not in held, f"user {user}'s held-out {row.target!r} is a training target"
    # and training used everything else it could: each training user's positives are exactly its
    # titles after the first window, but for the held-out ones
    ordered = movielens.title_ratings()
    positives: dict[int, set[str]] = {}
    for row in [r for g in data.groups for r in g] + data.rows:
        if options.get("objective") == "next_item" and row.label == "No":
            continue  # a negative: a title of another user
        positives.setdefault(user_of(row), set()).add(row.target)
    assert len(positives) == USERS - 2  # two dev users
    for user, targets in positives.items():
        assert targets == {t for _, t, _ in ordered[user][HISTORY:-HELD_OUT]}


def test_the_store_file_readers_keep_good_rows_and_report_bad_ones(tmp_path: Path) -> None:
    catalogue = tmp_path / "catalogue.csv"
    catalogue.write_text("id,title,category,price,colour\nmug-1,Blue Mug,kitchen,9.5,blue\nbad id!,X,,,\n")
    items, errors = read_catalogue(catalogue)
    assert [(i.id, i.price, i.extra) for i in items] == [("mug-1", 9.5, {"colour": "blue"})]
    assert [e.where for e in errors] == ["line 3"]
    events = tmp_path / "events.jsonl"
    events.write_text(
        '{"user_id": "u1", "item_id": "mug-1", "type": "view", "ts": 1767225600}\n'
        '{"user_id": "u1", "item_id": "mug-1", "type": "rating", "value": 9}\n'
        "not json\n"
    )
    good, bad = read_events(events, now=1767225600.0)
    assert [(e.user_id, e.type, e.ts) for e in good] == [("u1", "view", 1767225600.0)]
    assert [b.where for b in bad] == ["line 2", "line 3"] and "between 0 and 5" in bad[0].reason
