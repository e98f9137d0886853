"""The sentiment adapter's train/serve contract (domains/sentiment.py): the model reads the same tokens
when training builds an example as when the monitor scores a headline; the card's serving section
round-trips; the public-set and user-format readers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from apps.sentiment.config import load_monitor_config
from apps.sentiment.enrich import Enricher
from apps.sentiment.settings import DEFAULT_CONFIG
from core.tiny import build_random_lora
from domains import sentiment
from domains.records import DataFileError
from domains.sentiment import LabelledText, SentimentServing
from finetune.config import TrainConfig, config_for
from finetune.tasks.sentiment import serving_of, to_examples
from tests.doubles.contract import assert_refused, record_tokenize, served_engine

pytestmark = pytest.mark.unit

HEADLINE = "Globex shares plunge after the regulator opens an accounting probe"


def committed_config(**changes: Any) -> TrainConfig:
    """finetune/configs/sentiment.yaml as training reads it (without checking the shared data files)."""
    return dataclasses.replace(TrainConfig(**yaml.safe_load(config_for("sentiment").read_text())), **changes)


@pytest.fixture(scope="module")
def lora(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_lora(tiny_model_dir, tmp_path_factory.mktemp("lora") / "weights", rank=4, seed=5)


@pytest.mark.parametrize(
    "config",
    [
        committed_config(),
        committed_config(
            instruction="Is this headline good or bad news for the stock?", labels=["positive", "negative", "neutral"]
        ),
    ],
    ids=["committed", "other-instruction-and-label-order"],
)
def test_the_training_prompt_is_the_served_prompt_token_for_token(
    config: TrainConfig,
    tokenizer: Any,
    tiny_model_dir: Path,
    lora: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trained = to_examples(tokenizer, [LabelledText(HEADLINE, "negative", "fpb")], config)[0]
    serving = sentiment.serving_section(serving_of(config))
    with served_engine(tiny_model_dir, lora, tmp_path, "sentiment", serving) as engine:
        enricher = Enricher(engine, load_monitor_config(DEFAULT_CONFIG))
        assert enricher.model == "sentiment"
        assert enricher.serving() == SentimentServing(tuple(config.labels), str(config.instruction))
        seen = record_tokenize(engine, monkeypatch)
        scores = enricher.sentiment([HEADLINE])
        assert list(scores[0]) == config.labels
    assert seen == [trained.prompt_ids]
    assert trained.label == config.labels.index("negative")


def test_the_configured_instruction_and_labels_are_the_domains() -> None:
    config = committed_config()
    assert (tuple(config.labels), config.instruction) == (sentiment.LABELS, sentiment.INSTRUCTION)


def test_the_serving_section_round_trips_and_defaults_for_a_model_without_a_card() -> None:
    serving = SentimentServing(("positive", "negative"), "Good or bad?")
    section = sentiment.serving_section(serving)
    assert section["method"] == "score_labels"
    assert sentiment.read_serving(json.loads(json.dumps(section))) == serving
    assert sentiment.read_serving(None) == SentimentServing(sentiment.LABELS, sentiment.INSTRUCTION)
    assert sentiment.read_serving({"instruction": "Mood?"}).labels == sentiment.LABELS
    with pytest.raises(ValueError, match="serving section is not usable: labels must be two or more"):
        sentiment.read_serving({"labels": ["up"]})


# ---- readers ------------------------------------------------------------------------------------------


def test_the_public_set_readers(tmp_path: Path) -> None:
    fpb = tmp_path / "Sentences_50Agree.txt"
    fpb.write_bytes("Profit rose 5 % .@positive\nCaf\xe9 sales were flat .@neutral\nno label here\n".encode("latin-1"))
    assert [(r.text, r.label) for r in sentiment.read_fpb(fpb)] == [
        ("Profit rose 5 % .", "positive"),
        ("Café sales were flat .", "neutral"),
    ]
    finlora = tmp_path / "nwgi_test.jsonl"
    rows = [("Shares jump", "moderately positive"), ("Shares slip", "mildly negative"), ("Flat day", "neutral")]
    finlora.write_text(
        "".join(json.dumps({"context": f"Instruction: ...\nInput: {t}\nAnswer: ", "target": y}) + "\n" for t, y in rows)
    )
    assert [(r.text, r.label, r.source) for r in sentiment.read_finlora_test(finlora, "nwgi")] == [
        ("Shares jump", "positive", "nwgi"),
        ("Shares slip", "negative", "nwgi"),
        ("Flat day", "neutral", "nwgi"),
    ]
    sentfin = tmp_path / "SEntFiN.csv"
    sentfin.write_text(
        "S No.,Title,Decisions,Words\n1,Tata up; Infosys down,\"{'Tata': 'positive', 'Infosys': 'negative'}\",4\n"
    )
    assert [(r.entity, r.label) for r in sentiment.read_sentfin(sentfin)] == [
        ("Tata", "positive"),
        ("Infosys", "negative"),
    ]
    gold = tmp_path / "gold.tsv"
    gold.write_text(
        "Dates\tURL\tNews\tPrice Sentiment\n28-01-2016\thttp://x\tgold falls\tnegative\nnot a date\t\tskipped\tnone\n"
    )
    (headline,) = sentiment.read_gold_news(gold)
    assert (headline.line, headline.title, headline.label, headline.url) == (2, "gold falls", "negative", "http://x")
    assert headline.published_at == 1453982400.0  # 2016-01-28 12:00 UTC
    with pytest.raises(DataFileError, match="TFNS not found"):
        sentiment.read_tfns(tmp_path / "sent_train.csv")


def test_labelled_headlines_in_csv_and_jsonl(tmp_path: Path) -> None:
    csv_file = tmp_path / "mine.csv"
    csv_file.write_text("Text,Label,entity\nGlobex beats estimates,Positive,GLBX\nMarkets flat,neutral,\n")
    assert sentiment.read_labelled_headlines(csv_file) == [
        LabelledText("Globex beats estimates", "positive", "mine.csv", "GLBX"),
        LabelledText("Markets flat", "neutral", "mine.csv", None),
    ]
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text('{"text": "Oil slumps", "label": "negative"}\n\n{"text": "Gold up", "label": "positive"}\n')
    assert [r.label for r in sentiment.read_labelled_headlines(jsonl)] == ["negative", "positive"]


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("bad.csv", "text,label\nGlobex up,bullish\n", r"bad\.csv, line 2: label 'bullish' is not one of negative"),
        ("bad.csv", "headline,label\nGlobex up,positive\n", r"bad\.csv: the header row lacks text"),
        ("bad.csv", "text,label\nGlobex up,positive\n,negative\n", r"bad\.csv, line 3: empty or missing text"),
        ("bad.jsonl", '{"text": "a", "label": "neutral"}\n{"text": "b"\n', r"bad\.jsonl, line 2: bad JSON"),
        ("bad.jsonl", '["a", "neutral"]\n', r"bad\.jsonl, line 1: not a JSON object"),
        ("bad.jsonl", "\n\n", r"bad\.jsonl: no rows"),
        ("bad.txt", "Globex up@positive\n", r"bad\.txt: unknown file type \.txt"),
    ],
)
def test_a_bad_labelled_headlines_file_names_the_file_and_line(
    tmp_path: Path, name: str, body: str, message: str
) -> None:
    assert_refused(sentiment.read_labelled_headlines, tmp_path / name, body, message)
