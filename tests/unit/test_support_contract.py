"""The support adapter's train/serve contract (domains/support.py): the card's serving section
round-trips; the intent head (what serving uses of the adapter: the bot quotes the knowledge base and
generates nothing) is found through the engine and built from the features training names; the readers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from apps.support.intents import IntentClassifier
from core.engine import LocalEngine
from core.heads import LinearHead
from core.tiny import build_random_lora
from domains import support
from domains.records import DataFileError
from domains.support import INTENT_HEAD_FILE, FaqPair, SupportRow, SupportServing
from finetune.config import TrainConfig, config_for
from finetune.tasks.support import SupportOptions, feature_recipe
from tests.doubles.contract import assert_refused, served_engine

pytestmark = pytest.mark.unit

QUESTION = "How do I cancel my order before it ships?"
ANSWER = (
    "I understand you want to cancel your order. Open Orders in your account and choose the order. "
    "Press Cancel while its status says Processing, and the refund goes back to your card within five days."
)


def committed_config(passage_tokens: int) -> TrainConfig:
    """finetune/configs/support.yaml as training reads it, with a short passage so that cutting it counts."""
    config = TrainConfig(**yaml.safe_load(config_for("support").read_text()))
    return dataclasses.replace(config, options={**config.options, "passage_tokens": passage_tokens})


@pytest.fixture(scope="module")
def lora(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_lora(tiny_model_dir, tmp_path_factory.mktemp("lora") / "weights", rank=4, seed=6)


def test_the_configured_instruction_is_the_domains() -> None:
    assert committed_config(96).instruction == support.INSTRUCTION
    assert SupportOptions.from_config(committed_config(support.PASSAGE_TOKENS)).passage_tokens == 96


def test_the_serving_section_round_trips_and_defaults_for_a_model_without_a_card() -> None:
    head = support.intent_head_section(77, {"parts": [{"name": "minilm", "dim": 384}]})
    section = support.serving_section(SupportServing("Be brief.", 64), intent_head=head)
    assert section["method"] == "generate" and section["intent_head"]["file"] == INTENT_HEAD_FILE
    assert support.read_serving(json.loads(json.dumps(section))) == SupportServing("Be brief.", 64)
    assert support.read_serving(None, passage_tokens=120) == SupportServing(support.INSTRUCTION, 120)
    assert support.read_serving({"instruction": "Be kind."}).passage_tokens == support.PASSAGE_TOKENS
    with pytest.raises(ValueError, match="serving section is not usable: passage_tokens"):
        support.read_serving({"passage_tokens": -3})


def test_the_intent_head_is_found_in_the_adapter_folder_through_the_engine(
    tiny_model_dir: Path, lora: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dims = [4, 64]  # stand-in embedding width, the tiny model's hidden size
    recipe = feature_recipe(list(support.INTENT_FEATURES), dims, "tiny", "support")
    rng = np.random.default_rng(0)
    head = LinearHead(rng.normal(size=(2, sum(dims))), np.zeros(2), ["cancel_order", "track_order"],
                      np.zeros(sum(dims)), np.ones(sum(dims)), recipe)  # fmt: skip
    serving = support.serving_section(SupportServing())
    with served_engine(
        tiny_model_dir, lora, tmp_path, "support", serving, lambda adapter: head.save(adapter / INTENT_HEAD_FILE)
    ) as engine:
        monkeypatch.setattr(engine, "embed", lambda texts, normalize=True: np.ones((len(texts), 4)) / 2.0)
        classifier = IntentClassifier(engine, "support")
        assert classifier.available
        (intent,) = classifier.classify([QUESTION])
        assert intent is not None and intent.name in head.classes and 0.5 <= intent.confidence <= 1.0
        assert IntentClassifier(engine, "no-such-adapter").classify([QUESTION]) == [None]


def test_no_intent_without_a_head_file(tiny_engine: LocalEngine) -> None:
    assert IntentClassifier(tiny_engine, "alpha").classify(["where is my card"]) == [None]  # alpha has no head


# ---- readers ------------------------------------------------------------------------------------------


def test_the_public_set_readers(tmp_path: Path) -> None:
    bitext = tmp_path / "bitext.csv"
    bitext.write_text(
        'instruction,intent,category,response\n"cancel order 1 ",cancel_order,ORDER,"Sure.\r\nDone. "\n,x,y,z\n'
    )
    assert support.read_bitext(bitext) == [SupportRow("cancel order 1", "Sure.\nDone.", "cancel_order")]
    faqs = tmp_path / "BankFAQs.csv"
    faqs.write_text("Question,Answer,Class\nHow do I block a card?,Call us.,cards\n,No question,cards\n")
    assert support.read_bankfaqs(faqs) == [FaqPair("How do I block a card?", "Call us.", category="cards")]
    abcd = tmp_path / "guidelines.json"
    abcd.write_text(json.dumps({"Order Issue": {"description": "orders", "subflows": {"Status Delivery": {
        "actions": [{"text": "Pull up the account.", "subtext": ["Use the email"]}]}}}}))  # fmt: skip
    (article,) = support.read_abcd_guidelines(abcd)
    assert article.doc_id == "abcd-order-issue-status-delivery" and article.title == "Order Issue: Status Delivery"
    assert article.text == "orders\nPull up the account.\n- Use the email"
    with pytest.raises(DataFileError, match="banking77 not found"):
        support.read_banking77(tmp_path / "train.csv")


def test_faq_pairs_and_past_conversations_in_csv_and_jsonl(tmp_path: Path) -> None:
    csv_file = tmp_path / "faq.csv"
    csv_file.write_text("Question,ANSWER,intent,url\nWhere is my parcel?,Use the tracking link.,track_order,/x\n")
    assert support.read_faq_pairs(csv_file) == [FaqPair("Where is my parcel?", "Use the tracking link.", "track_order")]
    jsonl = tmp_path / "chats.jsonl"
    jsonl.write_text('{"question": "Can I pay later?", "answer": "Yes, with Klarna."}\n')
    assert support.read_faq_pairs(jsonl) == [FaqPair("Can I pay later?", "Yes, with Klarna.")]


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("bad.csv", "question,reply\nHi?,Hello.\n", r"bad\.csv: the header row lacks answer"),
        ("bad.csv", "question,answer\nHi?,Hello.\nBye?,\n", r"bad\.csv, line 3: empty or missing answer"),
        ("bad.jsonl", '{"question": "Hi?", "answer": "Hello."}\nnot json\n', r"bad\.jsonl, line 2: bad JSON"),
        ("bad.md", "# FAQ\n", r"bad\.md: unknown file type \.md"),
    ],
)
def test_a_bad_faq_file_names_the_file_and_line(tmp_path: Path, name: str, body: str, message: str) -> None:
    assert_refused(support.read_faq_pairs, tmp_path / name, body, message)
    with pytest.raises(DataFileError, match="data file not found"):
        support.read_faq_pairs(tmp_path / "absent.csv")
