"""Training configs fail fast; the LoRA trainer learns on the tiny model and its adapter serves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.config import Settings
from core.engine import LocalEngine
from core.prompts import classification_prompt
from finetune.config import ConfigError, TrainConfig, load_config
from finetune.trainer import Example, LoraTrainer, common_prefix_example

pytestmark = pytest.mark.unit

GOOD = """
task: sentiment
adapter_name: sentiment
data: {fpb: fpb.txt, fpb_test: test.jsonl, tfns: tfns.csv}
labels: [negative, neutral, positive]
"""


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    for name in ("fpb.txt", "test.jsonl", "tfns.csv"):
        (tmp_path / name).write_text("x")
    return tmp_path


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_a_good_config_loads(shared: Path, tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, GOOD), shared)
    assert cfg.labels == ["negative", "neutral", "positive"]
    assert cfg.lora.r == 16


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("tfns.csv", "missing.csv"), "not found: .*missing.csv"),
        (GOOD.replace("neutral, positive", "neutral, bullish"), "unknown label"),
        (GOOD.replace("task: sentiment", "task: poetry"), "task must be one of"),
        (GOOD + "learning_rate: 5\n", "learning_rate must be between"),
        (GOOD + "lora: {r: 0}\n", "lora.r must be"),
        (GOOD + "lora: {rank: 8}\n", "unknown lora keys: rank"),
        (GOOD + "epochz: 2\n", "unknown keys epochz"),
        (GOOD.replace("tfns: tfns.csv", ""), "no data file for 'tfns'"),
        ("[1, 2", "not valid YAML"),
        (GOOD + "options: {released_by: last year}\n", "released_by must be a year"),
    ],
)
def test_bad_configs_fail_before_training_naming_the_problem(
    shared: Path, tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, text), shared)


def test_a_missing_config_file_is_named(shared: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", shared)


def test_labels_objective_learns_and_the_saved_adapter_serves_the_same_scores(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    cfg = TrainConfig(
        task="sentiment",
        adapter_name="toy",
        data={"x": "x"},
        labels=["negative", "positive"],
        lora={
            "r": 8,
            "alpha": 16,
            "dropout": 0.0,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        },
        learning_rate=2e-2,
        warmup_ratio=0.0,
        epochs=10,
        batch_size=8,
        patience=20,
    )
    trainer = LoraTrainer(cfg, tiny_model_dir, torch.device("cpu"), objective="labels")
    texts = {"the market fell sharply": 0, "shares rose on merger news": 1, "refund the damaged item": 0, "Yes": 1}
    examples = [
        Example(trainer.tokenizer.encode(classification_prompt(trainer.tokenizer, t, cfg.labels)), label=y)
        for t, y in texts.items()
    ] * 4

    def accuracy():
        return float(
            (trainer.predict_labels(examples).argmax(-1) == torch.tensor([e.label for e in examples])).float().mean()
        )

    result = trainer.fit(examples, dev_metric=accuracy)
    assert result.best_metric == 1.0
    size = trainer.save(tmp_path / "adapters" / "toy")
    assert size > 0
    expected = trainer.predict_labels(examples[:4])

    settings = Settings(
        environment="test", admin_key="k", base_model=str(tiny_model_dir), adapters_dir=tmp_path / "adapters"
    )
    engine = LocalEngine(settings)
    engine.warm_up()
    try:
        served = engine.score_labels(list(texts), cfg.labels, model="toy")
    finally:
        engine.close()
    for row, probs in zip(served, expected.tolist(), strict=True):
        assert [row[label] for label in cfg.labels] == pytest.approx(probs, abs=2e-3)  # fp16 adapter weights


def test_shared_prefix_loss_equals_the_loss_of_each_whole_prompt(tiny_model_dir: Path) -> None:
    """One prefix pass + repeated KV cache gives the same label loss (and gradients) as running every
    prefix + continuation as its own prompt: the recommend adapter's cheap training path is exact."""
    cfg = TrainConfig(
        task="recommend",
        adapter_name="toy",
        data={"x": "x"},
        labels=["Yes", "No"],
        lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"]},
        precision="fp32",
    )
    trainer = LoraTrainer(cfg, tiny_model_dir, torch.device("cpu"), objective="labels")
    with torch.no_grad():  # non-zero LoRA B, so the adapter matters on both passes
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    tok = trainer.tokenizer
    prefix = tok.encode("User Preference: Heat, Alien\nUser Unpreference: Cats\n")
    conts = [tok.encode("Whether the user will like Up?"), tok.encode("Like Jaws (1975)? Answer:"), tok.encode("No")]
    labels = [0, 1, 0]
    shared = Example(prompt_ids=prefix, continuations=conts, labels=labels)
    whole = [Example(prompt_ids=prefix + c, label=y) for c, y in zip(conts, labels, strict=True)]
    trainer.model.eval()

    def loss_and_grads(batch: list[Example]) -> tuple[float, list[torch.Tensor]]:
        trainer.model.zero_grad()
        loss = trainer._loss(batch)
        loss.backward()
        grads = [p.grad.clone() for p in trainer.model.parameters() if p.requires_grad]
        return float(loss.detach()), grads

    shared_loss, shared_grads = loss_and_grads([shared])
    trainer.config.share_prompt_prefix = False  # each whole prompt left-padded, as the engine serves them
    whole_loss, whole_grads = loss_and_grads(whole)
    assert shared_loss == pytest.approx(whole_loss, abs=1e-5)
    for a, b in zip(shared_grads, whole_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    # the sentiment path: a plain batch of whole prompts finds its common prefix itself
    trainer.config.share_prompt_prefix = True
    batch_loss, batch_grads = loss_and_grads(whole)
    assert batch_loss == pytest.approx(whole_loss, abs=1e-5)
    for a, b in zip(batch_grads, whole_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_a_batch_shares_only_the_tokens_every_prompt_starts_with() -> None:
    head = list(range(100, 110))
    batch = [Example(prompt_ids=[*head, 1, 2, 3], label=0), Example(prompt_ids=[*head, 1, 5], label=2)]
    shared = common_prefix_example(batch)
    assert shared is not None
    assert shared.prompt_ids == [*head, 1]
    assert shared.continuations == [[2, 3], [5]]
    assert shared.labels == [0, 2]
    # a prompt that is all prefix still keeps its answer position in the continuation
    same = common_prefix_example([Example(prompt_ids=head, label=1), Example(prompt_ids=[*head, 7], label=0)])
    assert same is not None and same.continuations == [[109], [109, 7]]
    # too short a common prefix: the plain left-padded batch is used
    assert common_prefix_example([Example(prompt_ids=[1, 2, 3], label=0), Example(prompt_ids=[1, 4], label=0)]) is None


def test_recommend_groups_share_the_history_window_and_split_tokens_match_whole_prompts(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from finetune.data.recommend import movielens_groups
    from finetune.tasks.recommend import to_group_examples

    history = {
        1: [(t, f"Movie {t} (19{t:02d})", 5.0 if t % 3 else 1.0) for t in range(30)],
        2: [(t, f'The "Quoted" {t}', 4.0 if t % 2 else 2.0) for t in range(14)],
    }
    groups = movielens_groups(history, windows_per_user=3, targets_per_window=4, seed=0)
    assert len(groups) == 6  # 3 windows each; user 2's late windows have fewer than 4 targets left
    for group in groups:
        assert len({(r.liked, r.disliked) for r in group}) == 1 and 1 <= len(group) <= 4
    cfg = TrainConfig(task="recommend", adapter_name="toy", data={"x": "x"}, labels=["Yes", "No"], max_length=2048)
    examples, agreement = to_group_examples(AutoTokenizer.from_pretrained(tiny_model_dir), groups, cfg)
    assert agreement == 1.0
    assert [len(e.continuations) for e in examples] == [len(g) for g in groups]
    assert [e.labels for e in examples] == [[cfg.labels.index(r.label) for r in g] for g in groups]


def test_next_item_groups_hold_the_real_next_title_against_unrated_popular_ones_and_keep_the_last_two_out() -> None:
    from finetune.data.recommend import HISTORY, next_item_groups

    history = {u: [(t, f"U{u} movie {t}", 5.0 if t % 2 else 2.0) for t in range(HISTORY + 8)] for u in range(1, 6)}
    groups = next_item_groups(history, windows_per_user=20, negatives=3, seed=0)
    assert len(groups) == 5 * 6  # positions HISTORY .. len-3: the last two ratings are never targets
    for group in groups:
        assert len(group) == 4 and len({(r.liked, r.disliked) for r in group}) == 1
        [positive] = [r for r in group if r.label == "Yes"]
        user = int(positive.target.split()[0][1:])
        titles = [title for _, title, _ in history[user]]
        assert positive.target in titles[HISTORY:-2]
        assert set(group[0].liked + group[0].disliked) <= set(titles)  # the window is that user's own
        assert all(r.target not in titles for r in group if r.label == "No")  # negatives: never rated by the user


def test_released_by_keeps_each_users_titles_up_to_that_year_in_order() -> None:
    from finetune.data.recommend import released_by

    history = {
        1: [(1, "Heat (1995)", 5.0), (2, "Up (2009)", 2.0), (3, "Alien (1979)", 4.0), (4, "No Year", 3.0)],
        2: [(5, "Her (2013)", 4.0)],
    }
    assert released_by(history, 1998) == {1: [(1, "Heat (1995)", 5.0), (3, "Alien (1979)", 4.0)]}
    assert released_by(history, 2013)[2] == [(5, "Her (2013)", 4.0)]
