"""The product wording: a product catalogue is never asked about "movies". The served tokens equal
the trained ones in either wording, a card names its wording and item fields and the scorer follows
it, the base model (no card) is asked in the product wording, and the pipeline names items by the
fields the adapter was trained with."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest
from transformers import AutoTokenizer

from core.engine import LocalEngine
from core.sampling import ContinuationScore
from domains.recommend.index import VectorIndex
from domains.recommend.pipeline import Pipeline, PipelineConfig, build_profile
from domains.recommend.prompt import MAX_TITLE_CHARS, MOVIE, PRODUCT, PreferencePrompt, Wording, item_text
from domains.recommend.ranking import FEATURES, fallback_blender
from domains.recommend.records import Event, Item
from domains.recommend.scoring import LLMScorer
from domains.recommend.serving import RecommendServing, read_serving, serving_section
from domains.recommend.signals import MemorySignals
from finetune.config import TrainConfig
from finetune.tasks.recommend import to_examples, to_group_examples
from tests.doubles.recommend import HashEmbedder

pytestmark = pytest.mark.unit

ROW = PreferencePrompt(("Mario Kart 8 - Wii U", 'The "Deluxe" Controller'), (), "Splatoon - Wii U", "Yes")
OTHER = PreferencePrompt(ROW.liked, ROW.disliked, "Halo 3 - Xbox 360", "No")


def _config() -> TrainConfig:
    return TrainConfig(
        task="recommend",
        adapter_name="toy",
        data={"x": "x"},
        labels=["Yes", "No"],
        max_length=2048,
        options={"wording": "product"},
    )


class Spy:
    def __init__(self, engine: LocalEngine) -> None:
        self.real = engine.submit_score_continuations
        self.calls: list[dict[str, Any]] = []

    def __call__(self, prefix: str, continuations: list[str], **kwargs: Any) -> Future[list[ContinuationScore]]:
        self.calls.append({"prefix": prefix, "continuations": continuations, **kwargs})
        return self.real(prefix, continuations, **kwargs)


def test_the_product_prompt_names_products_and_never_movies() -> None:
    text = ROW.text(PRODUCT)
    assert text.startswith('Products the shopper chose: "Mario Kart 8 - Wii U"')
    assert text.endswith('Whether the shopper will choose the target product "Splatoon - Wii U" next?')
    assert "disliked" not in text  # no empty line for dislikes in the product wording
    disliked = PreferencePrompt(ROW.liked, ("Bad Game",), ROW.target, "No").text(PRODUCT)
    assert 'Products the shopper disliked: "Bad Game"\n' in disliked
    assert "movie" not in (text + PRODUCT.instruction).lower()
    assert "movie" in ROW.text(MOVIE)  # the MovieLens adapters keep the wording they were trained on
    with pytest.raises(ValueError, match="end on a word"):
        Wording("x", "i", "a:", "b:", "Whether the shopper ")


def test_items_are_named_by_the_trained_fields() -> None:
    assert item_text("Grinder", "coffee", 89.0) == "Grinder"
    assert item_text("Grinder", "coffee", 89.0, ("title", "category")) == "Grinder (coffee)"
    assert item_text("Grinder", "coffee", 89.0, ("title", "category", "price")) == "Grinder (coffee, 89.00)"
    assert item_text("Grinder", "", None, ("title", "category", "price")) == "Grinder"
    long = item_text("x" * 700)
    assert len(long) == MAX_TITLE_CHARS + 3 and long.endswith("...")


def test_trained_and_served_product_prompts_are_the_same_tokens(
    tiny_engine: LocalEngine, tiny_model_dir: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    [whole] = to_examples(tokenizer, [ROW], _config())
    [group], agreement = to_group_examples(tokenizer, [[ROW, OTHER]], _config())
    assert agreement == 1.0
    card = serving_section(RecommendServing(instruction=PRODUCT.instruction, wording=PRODUCT), objective="next_item")
    real = tiny_engine.serving_config
    monkeypatch.setattr(tiny_engine, "serving_config", lambda name: card if name == "alpha" else real(name))
    spy = Spy(tiny_engine)
    monkeypatch.setattr(tiny_engine, "submit_score_continuations", spy)
    LLMScorer(tiny_engine, "alpha").score(list(ROW.liked), [], [ROW.target, OTHER.target])
    [call] = spy.calls
    served = [tiny_engine.tokenize(call["prefix"]) + tiny_engine.tokenize(c) for c in call["continuations"]]
    assert served[0] == whole.prompt_ids == group.prompt_ids + group.continuations[0]
    assert served[1] == group.prompt_ids + group.continuations[1]
    assert "shopper" in call["prefix"] and "movie" not in call["prefix"]


def test_the_card_names_the_wording_and_the_base_model_gets_the_product_one(
    tiny_engine: LocalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    product = RecommendServing(instruction=PRODUCT.instruction, wording=PRODUCT, item_fields=("title", "category"))
    assert read_serving(serving_section(product)) == product
    old_card = {"labels": ["Yes", "No"], "instruction": MOVIE.instruction, "prompt": "..."}
    assert read_serving(old_card).wording == MOVIE  # cards from before the wording key: trained on TALLRec's
    assert read_serving(None, wording=PRODUCT).wording == PRODUCT
    with pytest.raises(ValueError, match="serving section"):
        read_serving({"wording": {"name": "x"}})
    with pytest.raises(ValueError, match="serving section"):
        read_serving({"item_fields": ["colour"]})
    spy = Spy(tiny_engine)
    monkeypatch.setattr(tiny_engine, "submit_score_continuations", spy)
    scorer = LLMScorer(tiny_engine, "not-loaded")  # the storefront's scorer without its adapter: the base model
    assert scorer.model() == "base" and scorer.serving().wording == PRODUCT
    probs = scorer.score(["Espresso Beans"], [], ["Burr Grinder", "Garden Hose"])
    assert len(probs) == 2 and "target product" in spy.calls[0]["prefix"] and "movie" not in spy.calls[0]["prefix"]
    assert LLMScorer(tiny_engine, "alpha").serving().wording == MOVIE  # an adapter with no card: TALLRec's


def test_the_pipeline_names_items_with_the_card_fields_and_weighs_rare_co_visits(
    tiny_engine: LocalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [
        Item("a", "Espresso Beans", category="coffee"),
        Item("b", "Burr Grinder", category="coffee"),
        Item("c", "Paper Filters", category="coffee"),
        Item("d", "Garden Hose", category="garden"),
    ]
    index = VectorIndex(384)
    index.put(items, HashEmbedder()([i.text() for i in items]))
    card = serving_section(RecommendServing(wording=PRODUCT, item_fields=("title", "category")))
    real = tiny_engine.serving_config
    monkeypatch.setattr(tiny_engine, "serving_config", lambda name: card if name == "alpha" else real(name))
    scorer = LLMScorer(tiny_engine, "alpha")
    histories = {
        # "d" is bought by everyone; "b" only after "a": "b" is the rarer, more telling co-visit
        **{f"u{n}": [Event(f"u{n}", "d", "purchase", 1.0)] for n in range(20)},
        "x": [Event("x", "a", "purchase", 1.0), Event("x", "b", "purchase", 2.0), Event("x", "d", "purchase", 3.0)],
        "y": [Event("y", "c", "purchase", 1.0), Event("y", "d", "purchase", 2.0)],
    }
    signals = MemorySignals.from_histories(histories, 86400.0, 10)
    pipeline = Pipeline(index, signals, PipelineConfig(), fallback_blender(), fallback_blender(False), scorer)
    profile = build_profile([Event("me", "a", "purchase", 5.0)], index)
    assert pipeline.llm_titles(scorer, profile, None) == (["Espresso Beans (coffee)"], [])
    x = pipeline.features(profile, ["b", "d"], 10.0)
    idf = x[:, FEATURES.index("covis_idf")]
    assert idf[0] == 1.0 and 0 < idf[1] < 1.0
    assert np.all(x[:, FEATURES.index("llm")] == 0.5)
