"""The support adapter's train/serve contract (domains/support.py): the model reads the same tokens when
training builds an example as when the bot answers the same question from the same passage; the card's
serving section round-trips; the intent head is found through the engine; the readers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from apps.support.answer import SupportBot
from apps.support.intents import IntentClassifier
from apps.support.kb import Hit
from apps.support.rules import load_rules
from apps.support.settings import SupportSettings
from core.engine import LocalEngine
from core.heads import LinearHead
from core.tiny import build_random_lora
from domains import support
from domains.records import DataFileError
from domains.support import INTENT_HEAD_FILE, FaqPair, SupportRow, SupportServing
from finetune.config import TrainConfig, config_for
from finetune.tasks.support import SupportOptions, feature_recipe, serving_of, to_examples
from tests.doubles.contract import assert_refused, record_tokenize, served_engine

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


class OneHitKB:
    """The knowledge base reduced to what ``SupportBot.plan`` asks of it: no FAQ, one strong passage."""

    def faq_match(self, question: str) -> None:
        return None

    def search(self, query: str, k: int = 5, mode: str = "hybrid") -> list[Hit]:
        return [Hit("order#0", "order", "", None, None, ANSWER, 0.9, 0.9, 1.0, 1)]


@pytest.fixture(scope="module")
def lora(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_lora(tiny_model_dir, tmp_path_factory.mktemp("lora") / "weights", rank=4, seed=6)


def bot_for(engine: LocalEngine, tmp_path: Path) -> SupportBot:
    settings = SupportSettings(kb_dir=tmp_path / "kb", max_new_tokens=16)  # passage_tokens: 120, the card says less
    return SupportBot(
        engine, OneHitKB(), load_rules(settings.rules_path), settings, IntentClassifier(engine, "support")
    )


@pytest.mark.parametrize("passage_tokens", [12, 96])
def test_the_training_prompt_is_the_served_prompt_token_for_token(
    passage_tokens: int,
    tokenizer: Any,
    tiny_model_dir: Path,
    lora: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = committed_config(passage_tokens)
    opts = SupportOptions.from_config(config)
    # training: the request with the retrieved row's response as its passage
    row, retrieved = SupportRow(QUESTION, "Sure, I can help.", "cancel_order"), SupportRow("x", ANSWER, "cancel_order")
    trained = to_examples(tokenizer, [(row, retrieved)], config, opts)[0]
    # serving: the card training writes; the bot answers the same question, the same passage retrieved
    serving = support.serving_section(serving_of(config, opts))
    with served_engine(tiny_model_dir, lora, tmp_path, "support", serving) as engine:
        bot = bot_for(engine, tmp_path)
        assert bot.model == "support"
        assert bot.serving() == SupportServing(str(config.instruction).strip(), passage_tokens)
        monkeypatch.setattr(engine, "embed", lambda texts, normalize=True: np.ones((len(texts), 4)) / 2.0)
        seen = record_tokenize(engine, monkeypatch)
        reply = bot.answer(QUESTION)
    assert reply.source in ("generated", "handoff") and reply.question == QUESTION
    assert seen == [trained.prompt_ids]
    cut = len(tokenizer.encode(ANSWER, add_special_tokens=False)) > passage_tokens
    assert ("…" in tokenizer.decode(trained.prompt_ids)) == cut  # 12 tokens cut the passage, 96 do not


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
