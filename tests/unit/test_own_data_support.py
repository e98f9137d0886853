"""A tenant's own support data (finetune.tasks.support: read_own, split_own, train_own, evaluate_own,
guard_rows): every bad file refused with its line, a split that depends on the rows alone, training
on the tiny model that writes an adapter and an intent head the engine serves, and the evaluation
through the Engine Protocol."""

from __future__ import annotations

import csv
import json
import random
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.config import Settings
from core.engine import LocalEngine
from core.heads import LinearHead
from domains import records
from domains.records import DataFileError
from domains.support import INTENT_FEATURES, INTENT_HEAD_FILE, FaqPair
from finetune.tasks import support
from finetune.tasks.support_own import intent_scores

pytestmark = pytest.mark.unit

QUESTIONS = {
    "track_order": ["where is my parcel", "track my order", "has my order shipped", "tracking link please",
                    "when will my parcel arrive", "order not here yet", "is my package on its way"],
    "refund": ["where is my refund", "money back please", "refund not received", "when do refunds arrive",
               "how long does a refund take", "refund to my card", "my refund is late"],
    "password": ["forgot my password", "reset my password", "cannot log in", "password link expired",
                 "locked out of my account", "change my password", "sign in fails"],
}  # fmt: skip
ANSWERS = {
    "track_order": "Use the tracking link in your dispatch email.",
    "refund": "Refunds reach your card 3-5 working days after we process them.",
    "password": "Select Forgot your password? and follow the emailed link.",
}


def rows_of(per_intent: int = 7) -> list[tuple[str, str, str]]:
    return [(q, ANSWERS[i], i) for i, qs in QUESTIONS.items() for q in qs[:per_intent]]


def write_csv(
    path: Path, rows: Sequence[tuple[str, ...]], header: tuple[str, ...] = ("question", "answer", "intent")
) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ---- reading ------------------------------------------------------------------------------------------


def test_read_own_takes_csv_and_jsonl_and_names_intents_alike(tmp_path: Path) -> None:
    first = write_csv(tmp_path / "faq.csv", [(q, a, i.replace("_", " ").title()) for q, a, i in rows_of()])
    second = tmp_path / "chats.jsonl"
    second.write_text(
        json.dumps({"question": "my parcel is lost", "answer": "We will chase the carrier.", "intent": "Track-Order"})
        + "\n"
        + json.dumps({"question": "hello there", "answer": "Hi! How can I help?"})
        + "\n"
    )
    rows = support.read_own([first, second])
    assert len(rows) == 23
    assert {r.intent for r in rows} == {"track_order", "refund", "password", None}
    assert rows[-1] == FaqPair("hello there", "Hi! How can I help?", None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("question,reply\nHi?,Hello.\n", r"faq\.csv: the header row lacks answer"),
        ("question,answer,intent\nHi?,Hello.,greet\nBye?,,greet\n", r"faq\.csv, line 3: empty or missing answer"),
        ("question,answer,intent\nHi?,Hello.,greet\nBye?,See you, soon.,greet\n",
         r"faq\.csv, line 3: more values than the header has columns"),
        ("question,answer,intent\nHi?,Hello.,!greet\n", r"faq\.csv, line 2: intent '!greet' is not a usable name"),
        ("question,answer,intent\n" + "x" * 2001 + ",Hello.,greet\n", r"faq\.csv, line 2: question longer than 2,000"),
        ("question,answer,intent\nHi?,Hello.,greet\nHi?,Hello.,farewell\n",
         r"faq\.csv, line 3: the question of .*faq\.csv, line 2 again, with intent 'farewell' here and 'greet' there"),
        ("question,answer\nHi?,Hello.\nBye?,See you.\n", r"faq\.csv: no row has an intent"),
        ("question,answer,intent\nHi?,Hello.,greet\nHey?,Hello.,greet\n", r"every intent given is 'greet'"),
    ],
)  # fmt: skip
def test_a_bad_csv_is_refused_naming_the_file_and_line(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "faq.csv"
    path.write_text(body)
    with pytest.raises(DataFileError, match=message):
        support.read_own([path])


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"question": "Hi?", "answer": "Hello."}', "not json"], r"faq\.jsonl, line 2: bad JSON"),
        (['["Hi?", "Hello."]'], r"faq\.jsonl, line 1: not a JSON object"),
        (['{"question": {"text": "Hi?"}, "answer": "Hello."}'], r"faq\.jsonl, line 1: question must be text"),
        (["", ""], r"faq\.jsonl: no rows"),
    ],
)
def test_a_bad_jsonl_is_refused_naming_the_file_and_line(tmp_path: Path, lines: list[str], message: str) -> None:
    path = tmp_path / "faq.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFileError, match=message):
        support.read_own([path])


def test_too_few_questions_for_an_intent_are_refused_with_where_they_are(tmp_path: Path) -> None:
    rows = rows_of()
    rows = [r for r in rows if r[2] != "refund"] + [r for r in rows if r[2] == "refund"][:3]
    rows.append(rows[-1])  # a copy is not another question
    path = write_csv(tmp_path / "faq.csv", rows)
    with pytest.raises(DataFileError, match=r"intent 'refund' has only 3 distinct texts \(.*faq\.csv, line 16; .*"
                       r"line 17; .*line 18\); each intent needs at least 5"):  # fmt: skip
        support.read_own([path])


def test_the_row_past_the_limit_and_the_second_file_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = write_csv(tmp_path / "good.csv", rows_of())
    bad = write_csv(tmp_path / "bad.csv", [("Hi?", "Hello.", "greet"), ("Hey?", "", "greet")])
    with pytest.raises(DataFileError, match=r"bad\.csv, line 3: empty or missing answer"):
        support.read_own([good, bad])
    monkeypatch.setattr(records, "MAX_OWN_ROWS", 10)
    with pytest.raises(DataFileError, match=r"good\.csv, line 12: more than 10 rows in all"):
        support.read_own([good])
    with pytest.raises(DataFileError, match="no data file given"):
        support.read_own([])
    with pytest.raises(DataFileError, match="data file not found"):
        support.read_own([tmp_path / "absent.csv"])


# ---- splitting ----------------------------------------------------------------------------------------


def test_split_own_depends_on_the_rows_alone_and_holds_out_a_fifth_of_every_intent() -> None:
    rows = [FaqPair(f"{i} question {n}", ANSWERS[i], i) for i in QUESTIONS for n in range(10)]
    rows += [FaqPair("hello", "Hi!"), FaqPair("thanks", "You're welcome!")]  # no intent: always trained on
    rows.append(FaqPair("REFUND   question 3", ANSWERS["refund"], "refund"))  # a copy of another row, spaced and cased
    train, held = support.split_own(rows)
    assert len(train) + len(held) == len(rows) and not set(train) & set(held)
    assert {i: sum(r.intent == i for r in held) for i in QUESTIONS} == {i: 2 for i in QUESTIONS}
    assert FaqPair("hello", "Hi!") in train
    copies = [r for r in rows if r.question.lower().split() == ["refund", "question", "3"]]
    assert all(c in held for c in copies) or all(c in train for c in copies)
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    again = support.split_own(shuffled)
    assert set(again[1]) == set(held) and set(again[0]) == set(train)
    more = rows + [FaqPair(f"track_order extra {n}", ANSWERS["track_order"], "track_order") for n in range(10)]
    _, held_more = support.split_own(more)
    assert {r for r in held_more if r.intent != "track_order"} == {r for r in held if r.intent != "track_order"}


# ---- training and evaluating on the tiny model ---------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """train_own on the tiny model (no shared adapter: a fresh LoRA), once for the module."""
    root = tmp_path_factory.mktemp("own-support")
    settings = Settings(
        environment="test", base_model=str(tiny_model_dir), adapters_dir=root / "adapters", data_dir=root / "data",
        admin_key="test-admin-key",
    )  # fmt: skip
    rows = [FaqPair(q, a, i) for q, a, i in rows_of()] + [FaqPair("hello", "Hi! How can I help?")]
    train, held = support.split_own(rows)
    seen: list[tuple[int, int, float]] = []
    out = root / "adapters" / "own-support"
    result = support.train_own(train, out, settings, progress=lambda *step: seen.append(step))
    return {"settings": settings, "result": result, "seen": seen, "out": out, "train": train, "held": held}


def test_train_own_writes_the_adapter_and_an_intent_head_on_the_tenants_intents(trained: dict[str, Any]) -> None:
    out, result = trained["out"], trained["result"]
    assert {"adapter_config.json", "adapter_model.safetensors", INTENT_HEAD_FILE} <= {p.name for p in out.iterdir()}
    head = LinearHead.load(out / INTENT_HEAD_FILE)
    assert head.classes == sorted(QUESTIONS)
    assert [p["name"] for p in head.recipe["parts"]] == list(INTENT_FEATURES)
    assert "the adapter in this folder" in head.recipe["parts"][1]["how"]
    assert {"C", "hidden_weight"} <= set(head.recipe)
    serving = result["serving"]
    assert serving["method"] == "generate" and serving["intent_head"]["classes"] == 3
    training = result["training"]
    assert training["started_from"] == "a fresh LoRA" and training["adapter_bytes"] > 0
    assert training["rows"] == len(trained["train"]) and training["answer_texts"] > 0
    assert (
        isinstance(training["intent_pass_kept"], bool) and "intent_head_without_intent_pass" in result["metrics"]["dev"]
    )
    steps = [s for s, _, _ in trained["seen"]]
    assert steps == list(range(1, training["steps"] + 1))  # at least once per optimiser step, in order
    assert len({total for _, total, _ in trained["seen"]}) == 1


def test_a_progress_callback_that_raises_stops_the_run(trained: dict[str, Any], tmp_path: Path) -> None:
    def stop(step: int, total: int, loss: float) -> None:
        if step == 2:
            raise TimeoutError("past the budget")

    with pytest.raises(TimeoutError, match="past the budget"):
        support.train_own(trained["train"], tmp_path / "out", trained["settings"], progress=stop)
    assert not (tmp_path / "out" / INTENT_HEAD_FILE).exists()


@pytest.fixture(scope="module")
def served(trained: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEngine]:
    """An engine serving the trained folder, and a copy whose head names other intents."""
    adapters = trained["out"].parent
    other = adapters / "other-support"
    shutil.copytree(trained["out"], other)
    head = LinearHead.load(other / INTENT_HEAD_FILE)
    LinearHead(head.coef[:2], head.intercept[:2], ["cancel_order", "greet"], head.mean, head.scale,
               head.recipe).save(other / INTENT_HEAD_FILE)  # fmt: skip
    settings = trained["settings"].model_copy(update={"batch_wait_ms": 5})
    engine = LocalEngine(settings)
    engine.warm_up()
    yield engine
    engine.close()


def test_the_engine_gives_the_features_the_head_was_fitted_on(trained: dict[str, Any], served: LocalEngine) -> None:
    from peft import PeftModel

    from core.scoring import mean_hidden_states
    from finetune.trainer import load_base

    texts = [r.question for r in trained["train"]][:6]
    tokenizer, base = load_base(Path(trained["settings"].base_model), served.device)
    model = PeftModel.from_pretrained(base, trained["out"])
    direct = mean_hidden_states(model, tokenizer, texts, served.device, 4)
    assert np.allclose(served.hidden_states(texts, model="own-support"), direct, atol=1e-4)


def test_evaluate_own_scores_the_served_head_through_the_engine(trained: dict[str, Any], served: LocalEngine) -> None:
    held = trained["held"]
    metrics = support.evaluate_own(served, "own-support", held)
    assert {"score", "accuracy", "macro_f1", "accuracy_ci95_low", "accuracy_ci95_high", "coverage"} <= set(metrics)
    assert metrics["score"] == metrics["accuracy"] and 0 <= metrics["score"] <= 1
    assert metrics["coverage"] == 1.0 and metrics["has_head"] == 1.0 and metrics["rows"] == len(held)
    assert metrics["accuracy_ci95_low"] <= metrics["accuracy"] <= metrics["accuracy_ci95_high"]
    assert all(isinstance(v, float) for v in metrics.values())
    base = support.evaluate_own(served, "base", held)
    assert base["score"] == 0.0 and base["has_head"] == 0.0
    other = support.evaluate_own(served, "other-support", held)
    assert other["score"] == 0.0 and other["coverage"] == 0.0 and other["has_head"] == 1.0
    with pytest.raises(ValueError, match="no row with an intent"):
        support.evaluate_own(served, "own-support", [FaqPair("hello", "Hi!")])


def test_intent_scores_count_right_answers_with_an_interval() -> None:
    scores = intent_scores(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    assert scores["accuracy"] == 0.75 and scores["score"] == 0.75
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert 0.2 < scores["accuracy_ci95_low"] < 0.75 < scores["accuracy_ci95_high"] < 1.0


def test_support_has_no_public_guard_set(trained: dict[str, Any]) -> None:
    assert support.guard_rows(trained["settings"]) is None
