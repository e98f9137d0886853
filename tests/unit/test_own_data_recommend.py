"""A store's own recommend data: the catalogue and events readers and their errors, the held-out
split, training on the tiny random model, and the held-out check through the Engine protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import Settings
from core.engine import LocalEngine
from core.errors import AdapterNotFoundError
from domains.recommend.prompt import PRODUCT
from domains.records import DataFileError
from finetune.tasks.recommend import (
    RecommendHeldOut,
    evaluate_own,
    guard_rows,
    read_own,
    split_own,
    train_own,
)
from finetune.tasks.recommend_own import GUARD_CASES, NEGATIVES

pytestmark = pytest.mark.unit

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples" / "recommend"
CATEGORIES = ["coffee", "tea", "garden"]


def write_store(folder: Path, users: int = 24, per_user: int = 4, fmt: str = "jsonl") -> tuple[Path, Path]:
    """A small shop: 30 products in 3 categories; each user buys along one category in order."""
    folder.mkdir(parents=True, exist_ok=True)
    items = [
        {
            "id": f"p{n:02d}",
            "title": f"{CATEGORIES[n % 3].title()} thing {n}",
            "category": CATEGORIES[n % 3],
            "price": 5 + n,
        }
        for n in range(30)
    ]
    events = []
    for u in range(users):
        for k in range(per_user):
            item = items[(u % 3) + 3 * ((u + k) % 10)]
            events.append(
                {"user_id": f"u{u}", "item_id": item["id"], "type": "purchase", "ts": 1_700_000_000 + 100 * u + k}
            )
    catalogue, log = folder / f"catalogue.{fmt}", folder / f"events.{fmt}"
    if fmt == "jsonl":
        catalogue.write_text("".join(json.dumps(i) + "\n" for i in items))
        log.write_text("".join(json.dumps(e) + "\n" for e in events))
    else:
        catalogue.write_text(
            "id,title,category,price\n"
            + "".join(f"{i['id']},{i['title']},{i['category']},{i['price']}\n" for i in items)
        )
        log.write_text(
            "user,item,type,timestamp\n"
            + "".join(f"{e['user_id']},{e['item_id']},{e['type']},{e['ts']}\n" for e in events)
        )
    return catalogue, log


def test_the_shipped_sample_store_reads_and_splits(tmp_path: Path) -> None:
    data = read_own([SAMPLES / "events.jsonl", SAMPLES / "catalogue.jsonl"])  # any order
    assert len(data.items) == 287 and len(data.sequences) == 240
    assert data.item_fields() == ("title", "category")
    train, held = split_own(data)
    assert len(held.cases) == sum(len(s) >= 3 for s in data.sequences.values())
    for case in held.cases:
        full = data.sequences[case.user]
        assert case.target.id == full[-1] and [i.id for i in case.history] == full[:-1] == train.sequences[case.user]
        assert len(case.negatives) == NEGATIVES and not {n.id for n in case.negatives} & set(full)


def test_csv_and_jsonl_read_the_same_and_the_split_is_the_same_every_time(tmp_path: Path) -> None:
    a = read_own(list(write_store(tmp_path / "j", fmt="jsonl")))
    b = read_own(list(reversed(write_store(tmp_path / "c", fmt="csv"))))
    assert a.sequences == b.sequences and a.items == b.items
    first, second = split_own(a)[1], split_own(b)[1]
    assert [(c.user, c.target.id, [n.id for n in c.negatives]) for c in first.cases] == [
        (c.user, c.target.id, [n.id for n in c.negatives]) for c in second.cases
    ]


@pytest.mark.parametrize(
    ("which", "line", "edit", "message"),
    [
        ("events", 3, lambda e: {**e, "item_id": "nope"}, "item 'nope' is not in the catalogue"),
        ("events", 2, lambda e: {**e, "type": "like"}, "type must be one of view, click, cart, purchase, rating"),
        ("events", 4, lambda e: {**e, "ts": "yesterday"}, "ts must be epoch seconds or ISO 8601"),
        ("events", 1, lambda e: {**e, "type": "rating"}, "a rating event needs a value"),
        ("events", 5, lambda e: {**e, "user_id": "a b"}, "user must be 1-128 characters"),
        ("catalogue", 2, lambda i: {**i, "price": -3}, "price must be a number of 0 or more"),
        ("catalogue", 3, lambda i: {**i, "id": "p00"}, "id 'p00' appears twice"),
        ("catalogue", 1, lambda i: {**i, "title": " "}, "empty or missing title"),
    ],
)
def test_a_bad_row_names_the_file_the_line_and_the_problem(
    tmp_path: Path, which: str, line: int, edit: object, message: str
) -> None:
    catalogue, events = write_store(tmp_path)
    path = catalogue if which == "catalogue" else events
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[line - 1] = edit(rows[line - 1])  # type: ignore[operator]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataFileError) as caught:
        read_own([catalogue, events])
    assert f"{path}, line {line}" in caught.value.message and message in caught.value.message
    assert caught.value.context["line"] == line


def test_files_that_cannot_train_are_refused_before_any_training(tmp_path: Path) -> None:
    catalogue, events = write_store(tmp_path, users=10)
    with pytest.raises(DataFileError, match=r"10 users touched 3 or more products; .* at least 20"):
        read_own([catalogue, events])
    catalogue, events = write_store(tmp_path / "ok")
    with pytest.raises(DataFileError, match="two files"):
        read_own([catalogue])
    with pytest.raises(DataFileError, match=r"one catalogue file .* and one events file"):
        read_own([catalogue, catalogue])
    odd = tmp_path / "odd.csv"
    odd.write_text("a,b\n1,2\n")
    with pytest.raises(DataFileError, match=r"neither a catalogue .* nor events"):
        read_own([catalogue, odd])
    no_type = tmp_path / "events.csv"
    no_type.write_text("user,item,timestamp\nu1,p00,1700000000\n")
    with pytest.raises(DataFileError, match="no column type"):
        read_own([catalogue, no_type])


def test_train_own_writes_an_adapter_the_engine_serves_in_the_product_wording(
    tiny_settings: Settings, tiny_engine: LocalEngine, tmp_path: Path
) -> None:
    train, held = split_own(read_own(list(write_store(tmp_path / "store"))))
    settings = tiny_settings
    calls: list[tuple[int, int, float]] = []
    out = tmp_path / "adapters" / "shop-recommend"
    result = train_own(train, out, settings, progress=lambda s, t, loss: calls.append((s, t, loss)))
    training = result["training"]
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_card.json").is_file()
    assert training["steps"] == len(calls) > 0 and calls[-1][0] == training["steps"]
    assert training["adapter_bytes"] > 0 and training["rows"] > training["groups"] > 0
    serving = result["serving"]
    assert serving["wording"]["name"] == PRODUCT.name and serving["objective"] == "next_item"
    assert serving["item_fields"] == ["title", "category"] and "movie" not in json.dumps(serving)

    tiny_engine.load_adapter("shop-recommend", out)
    scores = evaluate_own(tiny_engine, "shop-recommend", held)
    base = evaluate_own(tiny_engine, "base", held)
    for metrics in (scores, base):
        assert set(metrics) >= {"score", "auc", "ndcg@10", "hr@1", "hr@5", "mrr"}
        assert 0.0 <= metrics["score"] <= 1.0 and metrics["cases"] == len(held.cases)
    with pytest.raises(AdapterNotFoundError):
        evaluate_own(tiny_engine, "acme/recommend@v9", held)


def test_the_time_budget_callback_can_stop_training(tiny_settings: Settings, tmp_path: Path) -> None:
    train, _ = split_own(read_own(list(write_store(tmp_path / "store"))))
    settings = tiny_settings

    def stop(step: int, total: int, loss: float) -> None:
        if step >= 2:
            raise TimeoutError("over budget")

    with pytest.raises(TimeoutError, match="over budget"):
        train_own(train, tmp_path / "out", settings, progress=stop)


def test_the_guard_set_is_none_without_the_shared_data(tmp_path: Path) -> None:
    assert guard_rows(Settings(environment="test", admin_key="test-admin-key", shared_data_dir=tmp_path)) is None


def test_the_guard_set_is_fixed_games_dev_users() -> None:
    settings = Settings(environment="test", admin_key="test-admin-key")
    guard = guard_rows(settings)
    if guard is None:
        pytest.skip("the shared Games-6k data is not here")
    assert isinstance(guard, RecommendHeldOut) and len(guard.cases) == GUARD_CASES
    again = guard_rows(settings)
    assert again is not None and [c.target.id for c in again.cases] == [c.target.id for c in guard.cases]
    from domains.recommend.games import is_dev_user

    assert all(is_dev_user(c.user) and len(c.negatives) == NEGATIVES for c in guard.cases)
