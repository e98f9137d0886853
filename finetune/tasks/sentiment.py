"""The sentiment adapter: negative / neutral / positive over financial news, scored by label logits.

Train: FPB 50Agree minus the standard test rows + TFNS train minus a fixed 15% held-out.
Evaluate (same run): the adapter and the zero-shot base, both through ``LocalEngine.score_labels`` (the
served path), and TF-IDF + logistic regression trained on the same rows, on the FPB test split and
the TFNS held-out split.

A tenant's own data (``finetune.own``): ``read_own``, ``split_own``, ``train_own``, ``evaluate_own`` and
``guard_rows`` live in ``finetune.tasks.sentiment_own`` and are named here.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from core.config import Settings
from domains import sentiment
from domains.sentiment import LabelledText, SentimentServing
from finetune.cards import write_card
from finetune.config import TrainConfig
from finetune.data.sentiment import SentimentSplits, build_splits, stratified_split
from finetune.metrics import RESULTS_DIR, classification_report, plot_confusion, plot_roc
from finetune.progress import track
from finetune.tasks.sentiment_own import evaluate_own, guard_rows, read_own, split_own, train_own

__all__ = ["evaluate_own", "guard_rows", "read_own", "split_own", "train_own"]
from finetune.trainer import Example, LoraTrainer


def splits(config: TrainConfig, shared: Path) -> SentimentSplits:
    return build_splits(
        config.path("fpb", shared), config.path("fpb_test", shared), config.path("tfns", shared), seed=config.seed
    )


def serving_of(config: TrainConfig) -> SentimentServing:
    """The labels and instruction the adapter is trained with, and so served with."""
    return SentimentServing(labels=tuple(config.labels), instruction=config.instruction or sentiment.INSTRUCTION)


def to_examples(tokenizer: Any, rows: list[LabelledText], config: TrainConfig) -> list[Example]:
    serving = serving_of(config)
    out = []
    for r in rows:
        ids = tokenizer.encode(sentiment.prompt(tokenizer, r.text, serving), add_special_tokens=False)
        if len(ids) > config.max_length:  # keep the answer position: cut the text, not the template
            ids = ids[: config.max_length // 2] + ids[-(config.max_length - config.max_length // 2) :]
        out.append(Example(prompt_ids=ids, label=config.labels.index(r.label)))
    return out


def argmax_label(probs: dict[str, float]) -> str:
    return max(probs.items(), key=lambda item: item[1])[0]


def weighted_f1(probs: torch.Tensor, gold: list[int], n_labels: int) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(gold, probs.argmax(-1).tolist(), labels=list(range(n_labels)), average="weighted"))


def training_rows(config: TrainConfig, data: SentimentSplits) -> tuple[list[LabelledText], list[LabelledText]]:
    """(train, dev): the dev rows come out of the training split, then the config's subsampling."""
    train_rows, dev_rows = stratified_split(data.train, config.dev_rows / len(data.train), config.seed + 1)
    tfns_rows = config.options.get("tfns_rows")  # subsample TFNS only: every FPB row is kept
    if tfns_rows is not None:
        fpb = [r for r in train_rows if r.source == "fpb"]
        tfns = [r for r in train_rows if r.source == "tfns"]
        train_rows = fpb + random.Random(config.seed).sample(tfns, min(int(tfns_rows), len(tfns)))
    if config.max_train_rows and len(train_rows) > config.max_train_rows:
        train_rows = random.Random(config.seed).sample(train_rows, config.max_train_rows)
    return train_rows, dev_rows


def train(config: TrainConfig, settings: Settings, progress: Any = None) -> dict[str, Any]:
    shared = settings.shared_data_dir
    data = splits(config, shared)
    train_rows, dev_rows = training_rows(config, data)
    device = torch.device(settings.resolved_device())
    trainer = LoraTrainer(config, settings.base_model_path, device, objective="labels")
    train_ex = to_examples(trainer.tokenizer, train_rows, config)
    dev_ex = to_examples(trainer.tokenizer, dev_rows, config)
    dev_gold = [e.label for e in dev_ex]
    result = trainer.fit(
        train_ex,
        dev_metric=lambda: weighted_f1(trainer.predict_labels(dev_ex), dev_gold, len(config.labels)),
        on_progress=progress,
    )
    out_dir = settings.adapters_path / config.adapter_name
    size = trainer.save(out_dir)
    files = [config.path(role, shared) for role in ("fpb", "fpb_test", "tfns")]
    return write_card(
        out_dir,
        config,
        data_files=files,
        train_rows=len(train_ex),
        training={**result.__dict__, "adapter_bytes": size, "trainable_parameters": trainer.trainable_parameters()},
        metrics={"dev": {"adapter": {"f1_weighted": result.best_metric}}},
        serving=sentiment.serving_section(serving_of(config)),
    )


def tfidf_baseline(train_rows: list[LabelledText], tests: dict[str, list[LabelledText]]) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
        LogisticRegression(max_iter=2000, C=10.0),
    )
    model.fit([r.text for r in train_rows], [r.label for r in train_rows])
    out = {}
    for split, rows in tests.items():
        probs = model.predict_proba([r.text for r in rows])
        classes = list(model.classes_)
        out[split] = [{c: float(p[classes.index(c)]) for c in classes} for p in probs]
    return out


def evaluate(settings: Settings, adapter: str = "sentiment", out_dir: Path = RESULTS_DIR) -> dict[str, Any]:
    from core.engine import LocalEngine
    from finetune.config import config_for, load_config

    config = load_config(config_for("sentiment"), settings.shared_data_dir)
    data = splits(config, settings.shared_data_dir)
    tests = {"fpb_test": data.fpb_test, "tfns_held_out": data.tfns_held_out}
    labels = config.labels
    instruction = serving_of(config).instruction
    started = time.monotonic()
    systems: dict[str, dict[str, list[dict[str, float]]]] = {"tfidf_logreg": tfidf_baseline(data.train, tests)}
    engine = LocalEngine(settings)
    engine.warm_up()
    try:
        models = ["base"] + ([adapter] if engine.has_model(adapter) else [])
        for model in models:
            name = "zero_shot_base" if model == "base" else f"adapter:{adapter}"
            systems[name] = {}
            for split, rows in tests.items():
                texts = [r.text for r in rows]
                probs: list[dict[str, float]] = []
                for start in track(range(0, len(texts), 64), f"{name} on {split} (batches of 64)"):
                    probs += engine.score_labels(
                        texts[start : start + 64], labels, model=model, instruction=instruction
                    )
                systems[name][split] = probs
    finally:
        engine.close()
    report: dict[str, Any] = {"task": "sentiment", "labels": labels, "splits": {}, "seconds": 0.0}
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in tests.items():
        gold = [r.label for r in rows]
        report["splits"][split] = {}
        curves = {}
        for system, per_split in systems.items():
            preds = [argmax_label(p) for p in per_split[split]]
            report["splits"][split][system] = classification_report(gold, preds, labels)
            curves[system] = ([int(g == "negative") for g in gold], [p["negative"] for p in per_split[split]])
        scored = report["splits"][split]
        best = max(scored, key=lambda name: float(scored[name]["f1_weighted"]))
        plot_confusion(
            scored[best]["confusion"],
            labels,
            f"{split}: {best}",
            out_dir / f"sentiment_{split}_confusion.png",
        )
        plot_roc(curves, f"{split}: negative vs rest", out_dir / f"sentiment_{split}_roc.png")
    report["seconds"] = time.monotonic() - started
    report["anchors"] = {"FinBERT (FPB, reported)": 0.88, "FinGPT v3.3 Llama2-13B LoRA (FPB, reported)": 0.882}
    (out_dir / "quality_sentiment.json").write_text(json.dumps(report, indent=2))
    return report
