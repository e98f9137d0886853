"""The support task: retrieval-augmented prompts, held-out splits, text metrics, the saved intent head,
and a tiny train + evaluate on synthetic Bitext and banking77 files."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.config import Settings
from core.heads import LinearHead
from domains.support import INSTRUCTION, INTENT_HEAD_FILE, SupportRow, SupportServing, prompt, tokenizer_truncate
from finetune.config import ConfigError, config_for, load_config
from finetune.data.support import nearest_allowed, stratified_split
from finetune.metrics import corpus_bleu, rouge_l
from finetune.tasks import support

pytestmark = pytest.mark.unit

INTENTS = ["cancel_order", "track_refund", "recover_password"]
BITEXT_COLUMNS = [  # the 4,514-row Bitext file's header
    "context",
    "role",
    "instruction",
    "intent",
    "entity_type",
    "entity_value",
    "start_offset",
    "end_offset",
    "category",
    "tags",
    "response",
]


class WordHashEmbedder:
    """Bag-of-words vectors: similar requests are near, and nothing is loaded."""

    dim = 64

    def warm_up(self) -> None:
        pass

    def embed(self, texts: list[str], *, normalize: bool = True) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"[a-z]+", text.lower()):
                out[i, sum(map(ord, word)) % self.dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def _rows(per_intent: int = 20) -> list[SupportRow]:
    return [
        SupportRow(
            f"how do I {intent.replace('_', ' ')} number {i}?",
            f"I understand you need to {intent.replace('_', ' ')} {i}. Open your account and follow the steps.",
            intent,
        )
        for intent in INTENTS
        for i in range(per_intent)
    ]


# ---- prompt and retrieval -------------------------------------------------------------------------


def test_support_prompt_numbers_the_passages_and_cuts_long_ones(tokenizer: Any) -> None:
    long = "refund " * 200
    serving = SupportServing(passage_tokens=12)
    messages = prompt("Where is my refund?", ["Short answer.", long], tokenizer_truncate(tokenizer), serving)
    assert messages[0] == {"role": "system", "content": INSTRUCTION}
    user = messages[1]["content"]
    assert user.startswith("Passages:\n[1] Short answer.\n[2] ")
    assert user.endswith("\n\nCustomer: Where is my refund?")
    second = user.split("[2] ", 1)[1].split("\n\n", 1)[0]
    assert second.endswith(" …")
    assert len(tokenizer.encode(second.removesuffix(" …"), add_special_tokens=False)) <= 12


def test_the_configured_instruction_is_the_one_the_app_defaults_to() -> None:
    import yaml

    assert yaml.safe_load(config_for("support").read_text())["instruction"] == INSTRUCTION


def test_retrieval_never_returns_the_row_itself_nor_a_copy_of_its_answer() -> None:
    kb = [
        SupportRow("a", "answer a", "x"),
        SupportRow("b", "answer a", "x"),  # same answer as row 0: retrieving it would leak the target
        SupportRow("c", "answer c", "x"),
        SupportRow("d", "answer d", "y"),
    ]
    vecs = np.eye(4, dtype=np.float32)
    vecs[1] = vecs[0]  # rows 0 and 1 are the most similar to row 0 (itself and its copy)
    vecs[2] = np.array([0.8, 0.0, 0.6, 0.0])
    picked = nearest_allowed(kb, vecs, kb, vecs)
    assert picked[0] == 2
    assert all(i != j for i, j in enumerate(picked))
    assert all(kb[j].response != kb[i].response for i, j in enumerate(picked))


def test_held_out_rows_stay_out_of_the_knowledge_base_and_retrieve_only_from_it() -> None:
    rows = _rows()
    kb, held = stratified_split(rows, lambda r: r.intent, 0.1, seed=7)
    assert not set(kb) & set(held)
    assert sorted(kb + held, key=repr) == sorted(rows, key=repr)
    assert {r.intent for r in held} == set(INTENTS)
    assert all(sum(r.intent == i for r in held) == 2 for i in INTENTS)
    assert (kb, held) == stratified_split(rows, lambda r: r.intent, 0.1, seed=7)
    for row, passage in support.with_passages(held, kb, WordHashEmbedder()):
        assert passage in kb
        assert passage.intent == row.intent  # the nearest request shares its words


# ---- text metrics ---------------------------------------------------------------------------------


def test_rouge_l_is_rouge_scores_lcs_f_measure_on_lowercased_words() -> None:
    # LCS of "the cat sat on the mat" / "The cat is on the mat." is "the cat on the mat": P = R = 5/6
    assert rouge_l("the cat sat on the mat", "The cat is on the mat.") == pytest.approx(5 / 6)
    # LCS "a c" (2): P = 2/2, R = 2/4, F = 2PR / (P + R) = 2/3
    assert rouge_l("a b c d", "a c") == pytest.approx(2 / 3)
    assert rouge_l("a b", "c d") == 0.0
    assert rouge_l("same words", "SAME, words!") == 1.0


def test_corpus_bleu_is_sacrebleu_and_matches_a_hand_computation() -> None:
    # matches/totals per order: 1-grams 5/6, 2-grams 3/5, 3-grams 1/4, 4-grams 0/3 -> exp smoothing 1 / (2 * 3)
    expected = 100 * (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25
    assert corpus_bleu(["the cat sat on the mat"], ["the cat is on the mat"]) == pytest.approx(expected)
    assert corpus_bleu(["a b c d e f"], ["a b c d e f"]) == pytest.approx(100.0)
    # brevity penalty: 4 of 8 reference words, all n-grams match -> exp(1 - 8/4)
    assert corpus_bleu(["a b c d e f g h"], ["a b c d"]) == pytest.approx(100 * np.exp(-1.0))
    # counts pool over the corpus: the second pair's perfect match lifts the first's missing orders
    pooled = corpus_bleu(["a b c d", "w x y z"], ["a b q r", "w x y z"])
    assert pooled == pytest.approx(100 * (6 / 8 * 4 / 6 * 2 / 4 * 1 / 2) ** 0.25)
    assert corpus_bleu(["a b"], [""]) == 0.0
    # published BLEU is case-sensitive and splits punctuation off (13a): "The" is not "the", "mat." is "mat ."
    assert corpus_bleu(["The cat sat on the mat."], ["the cat sat on the mat."]) < 100.0
    assert corpus_bleu(["the cat sat on the mat."], ["the cat sat on the mat ."]) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="2 references for 1 hypotheses"):
        corpus_bleu(["a", "b"], ["a"])


# ---- intent head ----------------------------------------------------------------------------------


def _blobs(seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(3, 6))
    x = np.concatenate([c + rng.normal(0, 1, size=(30, 6)) for c in centres]) * np.array([1, 10, 100, 1, 1, 1])
    return x.astype(np.float32), [INTENTS[i // 30] for i in range(90)]


def test_the_saved_intent_head_predicts_what_sklearn_predicts(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = _blobs()
    mean, scale = x.mean(axis=0), x.std(axis=0)
    model = LogisticRegression(C=0.5, max_iter=1000).fit((x - mean) / scale, y)
    head = LinearHead(model.coef_, model.intercept_, list(model.classes_), mean, scale, {"parts": ["toy"]})
    loaded = LinearHead.load(head.save(tmp_path / "head.npz"))
    assert (tmp_path / "head.npz").is_file()
    assert loaded.classes == list(model.classes_)
    assert loaded.recipe == {"parts": ["toy"]}
    assert loaded.predict(x) == list(model.predict((x - mean) / scale))
    np.testing.assert_allclose(loaded.predict_proba(x), model.predict_proba((x - mean) / scale), atol=1e-4)


def test_fit_logreg_chooses_c_on_its_own_rows_and_separates_the_blobs() -> None:
    x, y = _blobs()
    head, chosen = support.fit_logreg(x, y, [0.01, 1.0], dev_share=0.2, seed=1, recipe={})
    assert chosen["C"] in (0.01, 1.0)
    assert head.recipe["C"] == chosen["C"]
    x_new, y_new = _blobs(seed=0)
    assert np.mean(np.array(head.predict(x_new)) == np.array(y_new)) > 0.9


def test_hidden_state_features_do_not_depend_on_the_batch(tiny_model_dir: Path) -> None:
    import torch

    from finetune.trainer import load_base

    tokenizer, model = load_base(tiny_model_dir, torch.device("cpu"))
    texts = ["lost card", "my card has still not arrived after two weeks, where is it?", "top up"]
    together = support.mean_hidden_states(model, tokenizer, texts, torch.device("cpu"), batch_size=8)
    alone = [support.mean_hidden_states(model, tokenizer, [t], torch.device("cpu"), batch_size=8)[0] for t in texts]
    np.testing.assert_allclose(together, np.stack(alone), atol=1e-5)


# ---- config ---------------------------------------------------------------------------------------


def _config_paths() -> dict[str, str]:
    import yaml

    return dict(yaml.safe_load(config_for("support").read_text())["data"])


def _shared(root: Path, per_intent: int = 20) -> Path:
    """Synthetic Bitext and banking77 files at the paths support.yaml names."""
    raw = _config_paths()
    bitext = root / raw["bitext"]
    bitext.parent.mkdir(parents=True, exist_ok=True)
    with bitext.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=BITEXT_COLUMNS, restval="")
        writer.writeheader()
        for r in _rows(per_intent):
            writer.writerow({"instruction": r.request, "intent": r.intent, "category": "ORDER", "response": r.response})
    banking = root / raw["banking77"]
    banking.parent.mkdir(parents=True, exist_ok=True)
    with banking.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "category"])
        writer.writeheader()
        for label, words in [("card_arrival", "card arrive"), ("lost_card", "lost stolen"), ("top_up", "top up")]:
            for i in range(20):
                writer.writerow({"text": f"my {words} question {i}", "category": label})
    return root


def test_support_config_loads_and_a_missing_file_fails_at_once(tmp_path: Path) -> None:
    shared = _shared(tmp_path / "shared")
    config = load_config(config_for("support"), shared)
    assert support.SupportOptions.from_config(config).passage_tokens == 96
    (shared / _config_paths()["banking77"]).unlink()
    with pytest.raises(ConfigError, match="'banking77' not found"):
        load_config(config_for("support"), shared)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"passage_tokenz": 5}, "unknown support options: passage_tokenz"), ({"held_out_share": 1.5}, "held_out_share")],
)
def test_bad_support_options_fail_before_anything_loads(tmp_path: Path, options: dict, message: str) -> None:
    config = load_config(config_for("support"), _shared(tmp_path / "shared"))
    with pytest.raises(ConfigError, match=message):
        support.train(dataclasses.replace(config, options=options), Settings(environment="test", admin_key="k"))


# ---- end to end -----------------------------------------------------------------------------------


def test_tiny_train_saves_adapter_and_intent_head_and_evaluate_reports(tiny_model_dir: Path, tmp_path: Path) -> None:
    shared = _shared(tmp_path / "shared")
    settings = Settings(
        environment="test",
        admin_key="k",
        data_dir=tmp_path / "data",
        base_model=str(tiny_model_dir),
        adapters_dir=tmp_path / "adapters",
        shared_data_dir=shared,
    )
    config = dataclasses.replace(
        load_config(config_for("support"), shared),
        batch_size=4,
        dev_rows=4,
        max_train_rows=16,
        eval_every_steps=None,
        max_length=96,
        options={"passage_tokens": 16, "head_c_grid": [0.1, 1.0], "eval_rows": 4, "eval_max_tokens": 8},
    )
    steps: list[int] = []
    card = support.train(config, settings, progress=lambda step, total, loss: steps.append(step))
    out = tmp_path / "adapters" / "support"
    assert steps == [1, 2, 3, 4]
    assert card["training"]["steps"] == 4
    assert card["data"]["train_rows"] == 16
    assert (out / "adapter_model.safetensors").is_file()
    assert card["metrics"]["dev"]["adapter"]["perplexity"] > 1
    assert card["serving"]["intent_head"]["file"] == INTENT_HEAD_FILE
    # banking77's head is kept for the public benchmark; the head served is the demo store's own intents
    head = LinearHead.load(out / support.BANKING77_HEAD_FILE)
    assert head.classes == ["card_arrival", "lost_card", "top_up"]
    assert [p["dim"] for p in head.recipe["parts"]] == [384, 64]  # MiniLM, then the tiny model's hidden size
    assert head.recipe["C"] in (0.1, 1.0)
    store = LinearHead.load(out / INTENT_HEAD_FILE)
    assert "order_status" in store.classes and "card_arrival" not in store.classes
    card = json.loads((out / "adapter_card.json").read_text())
    served = card["serving"]
    assert served["intent_head"]["classes"] == len(store.classes)
    assert card["metrics"]["store_intents"]["intents"] == len(store.classes)
    assert (served["instruction"], served["passage_tokens"]) == (INSTRUCTION, 16)

    results = tmp_path / "results"
    report = support.evaluate(settings, out_dir=results)
    intents = report["splits"]["banking77_held_out"]
    assert set(intents) == {
        "zero_shot_minilm",
        "minilm_logreg",
        "base_hidden_logreg",
        "minilm+base_hidden_logreg",
        "adapter:support",
    }
    assert all(v["n"] == 9 for v in intents.values())  # 15% of 20 rows = 3 per intent
    assert intents["minilm_logreg"]["accuracy"] == 1.0  # the intents' words never overlap
    generation = report["splits"]["bitext_generation"]
    assert set(generation) == {"base", "adapter:support", "retrieved_answer"}
    assert all(0 <= v["rouge_l"] <= 1 and 0 <= v["sacrebleu"] <= 100 for v in generation.values())
    # the retrieved answer shares the references' template words: both metrics see it
    assert generation["retrieved_answer"]["rouge_l"] > 0.3 and generation["retrieved_answer"]["sacrebleu"] > 5
    assert set(report["splits"]["bitext_reference_perplexity"]) == {"base", "adapter:support"}
    assert json.loads((results / "quality_support.json").read_text())["task"] == "support"
    assert (results / "support_quality.png").stat().st_size > 0
