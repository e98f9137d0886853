"""Training configs fail fast; the LoRA trainer learns on the tiny model and its adapter serves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.config import Settings
from core.engine import Engine
from core.prompts import classification_prompt
from finetune.config import ConfigError, TrainConfig, load_config
from finetune.trainer import Example, LoraTrainer

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
    engine = Engine(settings)
    engine.warm_up()
    try:
        served = engine.score_labels(list(texts), cfg.labels, model="toy")
    finally:
        engine.close()
    for row, probs in zip(served, expected.tolist(), strict=True):
        assert [row[label] for label in cfg.labels] == pytest.approx(probs, abs=2e-3)  # fp16 adapter weights
