"""Sentiment adapter sweep on a GPU: which recipe reaches the TFNS bar within a CPU-sized step budget?

    python bench/probes/gpu_sentiment_sweep.py --variant all30_e1 --out results.json

Each variant is the committed config (``finetune/configs/sentiment.yaml``) with a few fields
changed. It trains with the same trainer, data splits and seed as ``domainllm train sentiment``,
then scores the FPB test split and the TFNS held-out split with the trained LoRA (weighted F1),
next to TF-IDF + logistic regression trained on the same rows. The step counts are what the CPU
can run in its 40-minute budget, so a GPU result says which recipe is worth a CPU run; the adapter
that gets committed is still trained on the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from core.config import Settings  # noqa: E402
from finetune.config import config_for, load_config  # noqa: E402
from finetune.tasks.sentiment import (  # noqa: E402
    splits,
    tfidf_baseline,
    to_examples,
    training_rows,
    weighted_f1,
)
from finetune.trainer import LoraTrainer  # noqa: E402

# name -> (changed top-level fields, changed lora fields)
VARIANTS: dict[str, tuple[dict, dict]] = {
    "committed_e2": ({"epochs": 2}, {}),  # the committed recipe, its two epochs run to the end
    "committed_e1": ({"epochs": 1}, {}),  # one epoch: the schedule decays to zero at 715 steps
    "all30_e1": ({"epochs": 1}, {"top_layers": None}),  # LoRA on every layer, one epoch
    "all30_e2": ({"epochs": 2}, {"top_layers": None}),  # every layer, two epochs
    "r32_lr2e4_e2": ({"epochs": 2, "learning_rate": 2e-4}, {"r": 32, "alpha": 64}),
    "top14_e2_lr2e4": ({"epochs": 2, "learning_rate": 2e-4}, {}),
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shared", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="a few rows only: checks that the script runs")
    args = parser.parse_args()
    settings = Settings(**({"shared_data_dir": args.shared} if args.shared else {}))
    config = load_config(config_for("sentiment"), settings.shared_data_dir)
    top, lora = VARIANTS[args.variant]
    config = dataclasses.replace(config, **top, max_minutes=60.0, lora=dataclasses.replace(config.lora, **lora))
    if args.smoke:
        config = dataclasses.replace(config, epochs=1, max_train_rows=32, dev_rows=16, eval_every_steps=None)
    data = splits(config, settings.shared_data_dir)
    train_rows, dev_rows = training_rows(config, data)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.monotonic()
    trainer = LoraTrainer(config, settings.base_model_path, device, objective="labels")
    train_ex = to_examples(trainer.tokenizer, train_rows, config)
    dev_ex = to_examples(trainer.tokenizer, dev_rows, config)
    gold = [e.label for e in dev_ex]
    result = trainer.fit(
        train_ex, dev_metric=lambda: weighted_f1(trainer.predict_labels(dev_ex), gold, len(config.labels))
    )
    report = {
        "variant": args.variant,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "config": {"top": top, "lora": lora},
        "train_rows": len(train_ex),
        "training": dataclasses.asdict(result),
        "seconds": time.monotonic() - started,
        "adapter": {},
        "tfidf_logreg": {},
    }
    tests = {"fpb_test": data.fpb_test, "tfns_held_out": data.tfns_held_out}
    if args.smoke:
        tests = {split: rows[:24] for split, rows in tests.items()}
    baseline = tfidf_baseline(data.train, tests)
    labels = config.labels
    for split, rows in tests.items():
        gold_split = [labels.index(r.label) for r in rows]
        probs = trainer.predict_labels(to_examples(trainer.tokenizer, rows, config))
        report["adapter"][split] = weighted_f1(probs, gold_split, len(labels))
        base = torch.tensor([[p[label] for label in labels] for p in baseline[split]])
        report["tfidf_logreg"][split] = weighted_f1(base, gold_split, len(labels))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("variant", "adapter", "tfidf_logreg", "seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
