"""A tenant's own labelled headlines (finetune.tasks.sentiment: read_own, split_own, train_own,
evaluate_own, guard_rows): bad files refused with their line, a content-hash split, training on the
tiny model, macro-F1 through the Engine Protocol, and the fixed FPB guard slice."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from core.config import Settings
from core.engine import LocalEngine
from domains.records import DataFileError
from domains.sentiment import INSTRUCTION, LABELS, LabelledText
from finetune.tasks import sentiment
from finetune.tasks.sentiment_own import GUARD_FILE

pytestmark = pytest.mark.unit

HEADLINES = {
    "negative": ["Globex profit falls", "Initech cuts jobs", "Acme shares slump", "Umbrella recalls cars",
                 "Hooli misses estimates", "Vandelay warns on sales", "Stark loses contract"],
    "neutral": ["Globex to report on Monday", "Initech names new CFO", "Acme holds annual meeting",
                "Umbrella moves head office", "Hooli files annual report", "Vandelay opens office",
                "Stark sets results date"],
    "positive": ["Globex profit jumps", "Initech wins contract", "Acme shares soar", "Umbrella raises outlook",
                 "Hooli beats estimates", "Vandelay lifts dividend", "Stark posts record sales"],
}  # fmt: skip


def rows_of() -> list[tuple[str, str, str]]:
    return [(t, label, t.split()[0]) for label, texts in HEADLINES.items() for t in texts]


def write_csv(
    path: Path, rows: Sequence[tuple[str, ...]], header: tuple[str, ...] = ("text", "label", "entity")
) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_read_own_takes_csv_and_jsonl(tmp_path: Path) -> None:
    first = write_csv(tmp_path / "news.csv", [(t, label.upper(), e) for t, label, e in rows_of()])
    second = tmp_path / "more.jsonl"
    second.write_text(json.dumps({"text": "Oil slides", "label": "negative"}) + "\n")
    rows = sentiment.read_own([first, second])
    assert len(rows) == 22 and rows[0] == LabelledText("Globex profit falls", "negative", "news.csv", "Globex")
    assert rows[-1] == LabelledText("Oil slides", "negative", "more.jsonl", None)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([("Oil up", "bullish", "")], r"news\.csv, line 23: label 'bullish' is not one of negative, neutral, positive"),
        ([("", "neutral", "")], r"news\.csv, line 23: empty or missing text"),
        ([("x" * 2001, "neutral", "")], r"news\.csv, line 23: text longer than 2,000 characters"),
        ([("Oil up", "neutral", "e" * 201)], r"news\.csv, line 23: entity longer than 200 characters"),
        ([("GLOBEX  profit falls", "positive", "")],
         r"news\.csv, line 23: the text of .*news\.csv, line 2 again, labelled 'positive' here and 'negative' there"),
    ],
)  # fmt: skip
def test_a_bad_row_is_refused_naming_the_file_and_line(
    tmp_path: Path, extra: list[tuple[str, ...]], message: str
) -> None:
    path = write_csv(tmp_path / "news.csv", rows_of() + extra)
    with pytest.raises(DataFileError, match=message):
        sentiment.read_own([path])


def test_every_label_needs_enough_distinct_headlines(tmp_path: Path) -> None:
    no_positive = write_csv(tmp_path / "a.csv", [r for r in rows_of() if r[1] != "positive"])
    with pytest.raises(DataFileError, match=r"a\.csv: no row labelled positive"):
        sentiment.read_own([no_positive])
    few = [r for r in rows_of() if r[1] != "neutral"] + [r for r in rows_of() if r[1] == "neutral"][:4]
    path = write_csv(tmp_path / "b.csv", [*few, few[-1]])
    with pytest.raises(DataFileError, match=r"label 'neutral' has only 4 distinct texts \(.*b\.csv, line 16;"):
        sentiment.read_own([path])
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"text": "Oil up", "label": "positive"}\n{"text": "Oil"\n')
    with pytest.raises(DataFileError, match=r"c\.jsonl, line 2: bad JSON"):
        sentiment.read_own([bad])


def test_split_own_holds_out_a_fifth_of_every_label_by_content() -> None:
    rows = [LabelledText(f"{label} headline {n}", label, "f.csv") for label in LABELS for n in range(10)]
    train, held = sentiment.split_own(rows)
    assert {label: sum(r.label == label for r in held) for label in LABELS} == {label: 2 for label in LABELS}
    assert len(train) == 24 and not set(train) & set(held)
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    assert set(sentiment.split_own(shuffled)[1]) == set(held)


# ---- training and evaluating ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("own-sentiment")
    settings = Settings(
        environment="test", base_model=str(tiny_model_dir), adapters_dir=root / "adapters", data_dir=root / "data",
        admin_key="test-admin-key", batch_wait_ms=5,
    )  # fmt: skip
    rows = [LabelledText(t, label, "f.csv", e) for t, label, e in rows_of()]
    train, held = sentiment.split_own(rows)
    seen: list[tuple[int, int, float]] = []
    out = root / "adapters" / "own-sentiment"
    result = sentiment.train_own(train, out, settings, progress=lambda *step: seen.append(step))
    return {"settings": settings, "result": result, "seen": seen, "out": out, "held": held, "train": train}


def test_train_own_writes_an_adapter_served_with_the_labels_it_learned(trained: dict[str, Any]) -> None:
    out, result = trained["out"], trained["result"]
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    assert result["serving"] == {
        "method": "score_labels",
        "labels": list(LABELS),
        "instruction": INSTRUCTION,
        "prompt": "domains.sentiment.prompt(tokenizer, text, serving)",
    }
    training = result["training"]
    assert training["started_from"] == "a fresh LoRA" and training["rows"] == len(trained["train"])
    assert isinstance(training["training_kept"], bool) and "macro_f1_at_start" in result["metrics"]["dev"]
    assert [s for s, _, _ in trained["seen"]] == list(range(1, training["steps"] + 1))
    assert 0 <= result["metrics"]["dev"]["macro_f1"] <= 1


@pytest.fixture(scope="module")
def served(trained: dict[str, Any]) -> Iterator[LocalEngine]:
    engine = LocalEngine(trained["settings"])
    engine.warm_up()
    yield engine
    engine.close()


def test_evaluate_own_scores_a_served_model_through_the_engine(trained: dict[str, Any], served: LocalEngine) -> None:
    for model in ("own-sentiment", "base"):
        metrics = sentiment.evaluate_own(served, model, trained["held"])
        assert metrics["score"] == metrics["macro_f1"] and 0 <= metrics["score"] <= 1
        assert metrics["rows"] == len(trained["held"]) and {f"f1_{label}" for label in LABELS} <= set(metrics)


class ScriptedEngine:
    """The part of the Engine Protocol evaluate_own uses, answering from a script."""

    max_batch_texts = 3

    def __init__(self, answers: dict[str, str], serving: dict[str, Any]) -> None:
        self.answers, self.serving = answers, serving
        self.calls: list[tuple[int, list[str], dict[str, Any]]] = []

    def serving_config(self, name: str) -> dict[str, Any]:
        return self.serving

    def score_labels(self, texts: list[str], labels: list[str], **kwargs: Any) -> list[dict[str, float]]:
        self.calls.append((len(texts), labels, kwargs))
        return [{label: float(label == self.answers[t]) for label in labels} for t in texts]

    def submit_score_labels(self, *args: Any, **kwargs: Any) -> Future[list[dict[str, float]]]:
        raise NotImplementedError


def test_evaluate_own_computes_macro_f1_in_chunks_with_the_cards_prompt() -> None:
    rows = [LabelledText(t, label, "f") for t, label in
            [("a", "negative"), ("b", "negative"), ("c", "neutral"), ("d", "positive"), ("e", "positive")]]  # fmt: skip
    engine = ScriptedEngine(
        {"a": "negative", "b": "neutral", "c": "neutral", "d": "positive", "e": "negative"},
        {"labels": list(LABELS), "instruction": "Tone?"},
    )
    metrics = sentiment.evaluate_own(engine, "acme/sentiment@v2", rows)  # type: ignore[arg-type]
    assert [n for n, _, _ in engine.calls] == [3, 2]
    assert all(kw == {"model": "acme/sentiment@v2", "instruction": "Tone?"} for _, _, kw in engine.calls)
    assert metrics["accuracy"] == 0.6
    assert metrics["f1_negative"] == pytest.approx(0.5) and metrics["f1_neutral"] == pytest.approx(2 / 3)
    assert metrics["score"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)


def test_the_guard_is_a_fixed_slice_of_the_fpb_test_split(tmp_path: Path) -> None:
    settings = Settings(environment="test", shared_data_dir=tmp_path, data_dir=tmp_path / "data", admin_key="k")
    assert sentiment.guard_rows(settings) is None
    path = tmp_path / GUARD_FILE
    path.parent.mkdir(parents=True)
    targets = {"negative": "moderately negative", "neutral": "neutral", "positive": "mildly positive"}
    lines = [
        json.dumps({"context": f"Instruction: ...\nInput: {label} news {n}\nAnswer: ", "target": target})
        for label, target in targets.items()
        for n in range(70 if label == "neutral" else 30)
    ]
    path.write_text("\n".join(lines) + "\n")
    guard = sentiment.guard_rows(settings)
    assert guard is not None and len(guard) == 30 + 50 + 30
    assert {r.label for r in guard} == set(LABELS) and guard == sentiment.guard_rows(settings)
    path.write_text("\n".join(reversed(lines)) + "\n")
    assert sentiment.guard_rows(settings) == guard  # chosen by content, not by position
