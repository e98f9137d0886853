"""The sentiment adapter trained on a tenant's own labelled headlines
(``domains.sentiment.read_own_headlines``: text, label, optional entity). ``finetune.own`` calls
these through ``finetune.tasks.sentiment``.

Train: the ``labels`` objective (``finetune.trainer``: the served first-token label scores), on one
LoRA started from the shared sentiment adapter when it fits the base model, its top layers only; the
best epoch by macro-F1 on a dev part of the training rows is kept, and the adapter it started from
when no epoch beats it there (a few hundred headlines can teach a tenant's tone, or only unlearn). Evaluate: macro-F1 of a served model through
``Engine.score_labels``, with the labels and instruction of its card. Guard: a fixed slice of the
standard Financial PhraseBank test split, the same rows for every gate.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.config import Settings
from core.interface import Engine
from domains import sentiment
from domains.records import content_key, held_out_split
from domains.sentiment import LABELS, LabelledText, SentimentServing, read_fpb_test, read_own_headlines
from finetune.config import LoraSpec, TrainConfig
from finetune.tasks.own_lora import (
    OwnLoraTrainer,
    Progress,
    freeze_below,
    lora_of,
    restore,
    shared_adapter,
    snapshot,
    wilson,
)
from finetune.trainer import Example

SHARED = "sentiment"  # the shared adapter a tenant's version starts from, when it fits the base model
GUARD_FILE = "finance/finlora_test/fpb_test.jsonl"  # under the shared data folder
GUARD_PER_LABEL = 50  # 150 rows: each label's first 50 test headlines in content-hash order


@dataclass
class OwnSentimentOptions:
    """Small-file settings: a few hundred headlines, a minute or two on a 2-core CPU."""

    lora: LoraSpec = field(default_factory=lambda: LoraSpec(r=8, alpha=16, dropout=0.05))  # a fresh LoRA's shape
    start_from_shared: bool = True
    train_layers: int = 8  # only these top layers' LoRA trains; a warm start keeps the layers below as they are
    learning_rate: float = 1e-4
    epochs: int = 3
    batch_size: int = 16
    max_length: int = 128
    dev_share: float = 0.15  # of the training rows: chooses the epoch
    patience: int = 1
    max_minutes: float = 60.0  # a safety cap; the caller's time budget stops a run first
    seed: int = 42


def read_own(files: list[Path]) -> list[LabelledText]:
    """The tenant's rows, refused with the file and line of the first problem (``read_own_headlines``)."""
    return read_own_headlines(files)


def _text(row: LabelledText) -> str:
    return row.text


def _label(row: LabelledText) -> str:
    return row.label


def split_own(rows: list[LabelledText]) -> tuple[list[LabelledText], list[LabelledText]]:
    """(train, held out): a fifth of every label's distinct texts, by content hash."""
    return held_out_split(rows, text=_text, label=_label)


def _config(opts: OwnSentimentOptions) -> TrainConfig:
    return TrainConfig(
        task="sentiment",
        adapter_name="own",
        data={"own": "the tenant's files"},
        labels=list(LABELS),
        instruction=sentiment.INSTRUCTION,
        lora=dataclasses.replace(opts.lora, top_layers=opts.train_layers),
        learning_rate=opts.learning_rate,
        warmup_ratio=0.1,
        epochs=opts.epochs,
        batch_size=opts.batch_size,
        max_length=opts.max_length,
        seed=opts.seed,
        patience=opts.patience,
        max_minutes=opts.max_minutes,
    )


def to_examples(tokenizer: Any, rows: list[LabelledText], config: TrainConfig) -> list[Example]:
    serving = SentimentServing(labels=tuple(config.labels), instruction=config.instruction or sentiment.INSTRUCTION)
    out = []
    for r in rows:
        ids = tokenizer.encode(sentiment.prompt(tokenizer, r.text, serving), add_special_tokens=False)
        if len(ids) > config.max_length:  # keep the answer position: cut the text, not the template
            ids = ids[: config.max_length // 2] + ids[-(config.max_length - config.max_length // 2) :]
        out.append(Example(prompt_ids=ids, label=config.labels.index(r.label)))
    return out


def macro_f1(gold: list[str], predicted: list[str], labels: list[str]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(gold, predicted, labels=labels, average="macro", zero_division=0))


def train_own(
    rows: list[LabelledText], out_dir: Path, settings: Settings, *, progress: Progress | None = None
) -> dict[str, Any]:
    """Train on ``rows`` (the training part) and write the adapter to ``out_dir``."""
    opts = OwnSentimentOptions()
    config = _config(opts)
    started = time.monotonic()
    fit_rows, dev_rows = held_out_split(rows, text=_text, label=_label, share=opts.dev_share)
    start_from = shared_adapter(settings, SHARED) if opts.start_from_shared else None
    device = torch.device(settings.resolved_device())
    trainer = OwnLoraTrainer(config, settings.base_model_path, device, "labels", start_from)
    fit_ex = to_examples(trainer.tokenizer, fit_rows, config)
    dev_ex = to_examples(trainer.tokenizer, dev_rows, config)
    dev_gold = [r.label for r in dev_rows]

    def dev_macro_f1() -> float:
        probs = trainer.predict_labels(dev_ex)  # [dev, labels]
        return macro_f1(dev_gold, [config.labels[int(i)] for i in probs.argmax(-1)], config.labels)

    layers = int(trainer.model.config.num_hidden_layers)
    freeze_below(trainer.model, layers - min(opts.train_layers, layers))
    start, start_f1 = snapshot(trainer.model), dev_macro_f1()
    result = trainer.fit(fit_ex, dev_metric=dev_macro_f1, on_progress=progress)
    kept = result.best_metric > start_f1  # else the adapter it started from: training did not help on dev
    if not kept:
        restore(trainer.model, start)
    size = trainer.save(out_dir)
    serving = SentimentServing(labels=tuple(config.labels), instruction=config.instruction or sentiment.INSTRUCTION)
    return {
        "training": {
            "steps": result.steps,
            "seconds": round(time.monotonic() - started, 1),
            "rows": len(rows),
            "fit_rows": len(fit_rows),
            "dev_rows": len(dev_rows),
            "adapter_bytes": size,
            "trainable_parameters": trainer.trainable_parameters(),
            "started_from": SHARED if start_from is not None else "a fresh LoRA",
            "training_kept": kept,
            **{k: v for k, v in asdict(result).items() if k not in ("history", "seconds", "steps")},
        },
        "config": {"options": asdict(opts), "lora": lora_of(out_dir)},
        "metrics": {"dev": {"macro_f1": max(result.best_metric, start_f1), "macro_f1_at_start": start_f1}},
        "serving": sentiment.serving_section(serving),
    }


def evaluate_own(engine: Engine, model: str, rows: list[LabelledText], chunk: int = 32) -> dict[str, float]:
    """Macro-F1 (``score``) and accuracy of ``model`` on ``rows`` through ``Engine.score_labels``,
    prompted with the labels and instruction of its card (the defaults for the base model)."""
    if not rows:
        raise ValueError("no rows to evaluate on")
    serving = sentiment.read_serving(engine.serving_config(model))
    labels = list(serving.labels)
    texts = [r.text for r in rows]
    step = max(1, min(chunk, engine.max_batch_texts))
    predicted: list[str] = []
    for start in range(0, len(texts), step):
        scores = engine.score_labels(texts[start : start + step], labels, model=model, instruction=serving.instruction)
        predicted += [max(s.items(), key=lambda item: item[1])[0] for s in scores]
    gold = [r.label for r in rows]
    right = sum(g == p for g, p in zip(gold, predicted, strict=True))
    low, high = wilson(right, len(gold))
    per_label = {f"f1_{label}": macro_f1(gold, predicted, [label]) for label in LABELS}
    score = macro_f1(gold, predicted, list(LABELS))
    return {
        "score": score,
        "macro_f1": score,
        "accuracy": right / len(gold),
        "accuracy_ci95_low": low,
        "accuracy_ci95_high": high,
        "rows": float(len(gold)),
        **per_label,
    }


def guard_rows(settings: Settings) -> list[LabelledText] | None:
    """A fixed slice of the standard FPB test split (``GUARD_PER_LABEL`` per label, chosen by content
    hash, so the same rows every time), or None when the shared data folder lacks it."""
    path = settings.shared_data_dir / GUARD_FILE
    if not path.is_file():
        return None
    rows = read_fpb_test(path)
    out: list[LabelledText] = []
    for label in LABELS:
        mine = sorted((r for r in rows if r.label == label), key=lambda r: content_key(r.text))
        out += mine[:GUARD_PER_LABEL]
    return out
