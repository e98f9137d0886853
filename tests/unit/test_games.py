"""Games-6k: the reader and its errors, the dev/report split, the baselines, the listwise blend, the
paired bootstrap, and one whole evaluation run on a synthetic catalogue (tiny random Llama,
bag-of-words embeddings)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.engine import LocalEngine
from domains.recommend.games import INTER_FILE, ITEM_FILE, is_dev_user, read_games, split_games
from domains.recommend.ranking import FEATURES, NO_LLM_FEATURES
from domains.records import DataFileError
from finetune.evals.games import GamesRun, Scores, evaluate, paired_bootstrap
from finetune.evals.games_baselines import ItemKNN, SASRec
from finetune.ranker import fit_listwise_blender
from tests.doubles.recommend import HashEmbedder

pytestmark = pytest.mark.unit

PLATFORMS = ["Nintendo DS", "PlayStation 2", "Xbox 360", "PC"]


def write_games(folder: Path, users: int = 300, items: int = 80, seed: int = 5) -> None:
    """Platform chains: each user buys the next games of one platform, in order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = ["item_id:token\ttitle:token_seq"]
    lines += [f"{i}\tAdventure {i // len(PLATFORMS)} - {PLATFORMS[i % len(PLATFORMS)]}" for i in range(items)]
    (folder / ITEM_FILE).write_text("\n".join(lines) + "\n")
    rows = ["user_id:token\titem_id_list:token_seq\titem_id:token"]
    per_platform = items // len(PLATFORMS)
    for u in range(users):
        p = rng.randrange(len(PLATFORMS))
        start = rng.randrange(per_platform - 8)
        seq = [(start + k) * len(PLATFORMS) + p for k in range(rng.randint(4, 7))]
        rows.append(f"{u}\t{' '.join(map(str, seq[:-1]))}\t{seq[-1]}")
    (folder / INTER_FILE).write_text("\n".join(rows) + "\n")


def test_the_reader_keeps_order_and_the_split_holds_out_each_last_item(tmp_path: Path) -> None:
    write_games(tmp_path)
    games = read_games(tmp_path)
    assert len(games.titles) == 80 and len(games.sequences) == 300
    assert games.titles["5"] == "Adventure 1 - PlayStation 2" and games.items()["5"].category == ""
    split = split_games(games)
    for user, sequence in games.sequences.items():
        assert split.history[user] == sequence[:-1] and split.target[user] == sequence[-1]
    assert not set(split.dev) & set(split.report) and len(split.dev) + len(split.report) == 300
    assert split.dev == split_games(read_games(tmp_path)).dev  # by hash: the same every time
    events = split.events()["0"]
    assert [e.item_id for e in events] == games.sequences["0"][:-1] and [e.ts for e in events][:2] == [0.0, 1.0]


def test_a_tenth_of_users_are_dev_users_whatever_their_ids() -> None:
    share = np.mean([is_dev_user(str(u)) for u in range(20_000)])
    assert 0.09 < share < 0.11
    assert is_dev_user("123") == is_dev_user("123")


@pytest.mark.parametrize(
    ("file", "line", "text", "message"),
    [
        (ITEM_FILE, 3, "7", "expected 2 tab-separated fields, found 1"),
        (INTER_FILE, 2, "0\t1 2 999\t3", "item '999' is not in Games-6k.item"),
        (INTER_FILE, 3, "0\t1 2\t3", "user '0' appears twice"),
    ],
)
def test_a_bad_line_names_the_file_and_the_line(tmp_path: Path, file: str, line: int, text: str, message: str) -> None:
    write_games(tmp_path, users=5)
    path = tmp_path / file
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFileError) as caught:
        read_games(tmp_path)
    assert f"{path}, line {line}" in caught.value.message and message in caught.value.message


def test_missing_data_says_where_it_is_read_from(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="recsys/amazon-games-llmrank"):
        read_games(tmp_path / "nowhere")


def test_item_knn_ranks_the_co_purchased_item_first() -> None:
    histories = {"a": ["x", "y"], "b": ["x", "y"], "c": ["x", "z"], "d": ["w", "v"], "u": ["x"]}
    knn = ItemKNN(histories, ["v", "w", "x", "y", "z"])
    assert knn.top("u", {"x"})[:2] == ["y", "z"]
    assert knn.scores("u", ["y", "v"])[0] > knn.scores("u", ["y", "v"])[1]


def test_sasrec_learns_a_fixed_order() -> None:
    """Every user buys 0, 1, 2, 3, ... in order from some point on: after ..., 6 comes 7."""
    rng = random.Random(0)
    ids = [str(i) for i in range(30)]
    histories = {}
    for u in range(200):
        start = rng.randrange(20)
        histories[str(u)] = [str(start + k) for k in range(rng.randint(3, 8)) if start + k < 30]
    histories["probe"] = ["4", "5", "6"]
    model = SASRec(histories, ids, [("probe", "7")], dim=16, max_len=8, epochs=15, minutes=0.5, batch_size=32, lr=5e-3)
    assert model.log and model.log[-1]["loss"] < model.log[0]["loss"]
    assert "7" in model.top("probe", {"4", "5", "6"})[:3]


def test_the_listwise_blend_learns_the_order_within_each_list() -> None:
    rng = np.random.default_rng(0)
    users, size = 80, 25
    x = rng.random((users * size, len(FEATURES)))
    y = np.zeros(users * size, dtype=int)
    y[np.arange(users) * size + rng.integers(0, size, users)] = 1
    covis, pop = FEATURES.index("covis"), FEATURES.index("pop")
    x[:, covis] += 0.5 * y  # the positive has more co-visitation
    x[:, pop] -= 0.3 * y  # and is less popular than the rest of its list
    groups = np.repeat(np.arange(users), size)
    blend = fit_listwise_blender(x, y, groups, NO_LLM_FEATURES)
    weights = dict(zip(blend.features, blend.weights, strict=True))
    assert weights["covis"] > 0 > weights["pop"] and blend.kind == "trained" and blend.meta["converged"]
    assert weights["covis"] == max(weights.values())
    with pytest.raises(Exception, match="nothing to fit"):
        fit_listwise_blender(x, np.zeros_like(y), groups, NO_LLM_FEATURES)


def test_the_paired_bootstrap_interval_holds_the_mean_and_the_sign() -> None:
    rng = np.random.default_rng(1)
    b = rng.random(400)
    a = b + 0.05 + 0.01 * rng.standard_normal(400)
    ci = paired_bootstrap(a, b)
    assert ci["ci95_low"] < ci["mean_diff"] < ci["ci95_high"] and ci["ci95_low"] > 0 and ci["users"] == 400
    same = paired_bootstrap(b, b)
    assert same["mean_diff"] == same["ci95_low"] == same["ci95_high"] == 0.0


def test_scores_count_both_protocols() -> None:
    s = Scores()
    s.add(0, 0)  # first in both
    s.add(None, 19)  # missed, last of 20
    summary = s.summary()
    assert summary["full_ranking"] == {"ndcg@10": 0.5, "recall@10": 0.5}
    assert summary["candidates_20"]["hr@1"] == 0.5 and summary["candidates_20"]["hr@10"] == 0.5
    assert summary["candidates_20"]["ndcg@20"] == pytest.approx((1.0 + 1 / np.log2(21)) / 2)
    assert s.summary([0])["full_ranking"]["ndcg@10"] == 1.0


def test_a_whole_run_reports_every_system_and_the_llm_contribution(
    tiny_engine: LocalEngine, tmp_path: Path, monkeypatch: Any
) -> None:
    folder = tmp_path / "games"
    write_games(folder)
    monkeypatch.setattr(tiny_engine, "embed", HashEmbedder())
    run = GamesRun(
        report_users=40,
        llm_users=6,
        blend_users=15,
        dev_llm_users=6,
        tune_users=15,
        shortlist=6,
        candidates_per_source=20,
        sasrec_minutes=0.02,
    )
    report = evaluate(tiny_engine.settings, engine=tiny_engine, run=run, out_dir=tmp_path / "out", data_dir=folder)
    assert json.loads((tmp_path / "out" / "quality_games.json").read_text())["report_users"] == report["report_users"]
    baselines = {"popularity", "item_knn", "implicit_als", "implicit_bpr_64", "embedding_only", "sasrec"}
    assert set(report["report_users"]) == baselines | {"pipeline_no_llm"}
    assert set(report["llm_users"]) == baselines | {"pipeline_no_llm", "full_pipeline"}
    for systems, n in ((report["report_users"], 40), (report["llm_users"], 6)):
        for values in systems.values():
            assert values["users"] == n
            full, cand = values["full_ranking"], values["candidates_20"]
            assert 0.0 <= full["ndcg@10"] <= full["recall@10"] <= 1.0
            assert 0.0 <= cand["ndcg@1"] <= cand["ndcg@10"] <= cand["ndcg@20"] <= 1.0
    contribution = report["llm_contribution"]["full_ranking_ndcg@10"]
    assert (
        contribution["users"] == 6
        and contribution["ci95_low"] <= contribution["mean_diff"] <= contribution["ci95_high"]
    )
    assert report["llm"]["model"] == "base" and report["llm"]["wording"] == "product"
    assert "movie" not in report["llm"]["instruction"] + report["llm"]["prompt"]
    assert report["chosen_on_dev"]["item_knn_decay"]["chosen"] in (1.0, 0.7, 0.5)
    # the chains make the next game predictable: the pipeline finds it far more often than popularity
    pipeline = report["report_users"]["pipeline_no_llm"]["full_ranking"]
    assert (
        pipeline["recall@10"] >= 0.5
        and pipeline["ndcg@10"] > report["report_users"]["popularity"]["full_ranking"]["ndcg@10"]
    )
