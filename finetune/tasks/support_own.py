"""The support adapter and its intent head, trained on a tenant's own FAQ pairs or past conversations
(``domains.support.read_own_faq``: question, answer, optional intent). ``finetune.own`` calls these
through ``finetune.tasks.support``.

Train, on one LoRA (started from the shared support adapter when it fits the base model):

1. answers, one brief pass (``lm`` objective): the served prompt with the row's own answer as its
   passage, the answer (cut to ``answer_tokens``) as the target: the support voice, quoting a passage;
2. intents: cross-entropy of a linear probe over the mean final hidden state of the raw question,
   the very feature the served head reads, so that the adapter's hidden states tell the tenant's
   intents apart. The probe is thrown away; the best epoch by the probe's dev accuracy is kept.

Then the head: logistic regression over [MiniLM, hidden with the trained adapter]
(``finetune.tasks.intent_head.fit_weighted``). C and the hidden block's weight are chosen on a dev
part of the training rows that the adapter never trained on, and the head is refitted on every
training row. The same head is fitted over the adapter as it was before step 2, and step 2 is kept
only if its head is at least as accurate on the dev part. Rows without an intent train step 1 only;
each answer that one intent gives is one more example of it (``intent_texts``).

Guard (``guard_rows``): none. What the served support adapter gives is its head's intent over the
tenant's own intent names; a public set has other intents, which neither the new version's head nor
the serving one can name, so both would score 0 and the comparison would prove nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.config import PROJECT_ROOT, Settings
from core.embeddings import Embedder, MiniLMEmbedder
from core.heads import LinearHead
from core.interface import Engine
from core.prompts import render_chat
from domains import support
from domains.records import content_key, held_out_split
from domains.support import INTENT_FEATURES, INTENT_HEAD_FILE, FaqPair, SupportServing, read_own_faq
from finetune.config import LoraSpec, TrainConfig
from finetune.tasks.intent_head import feature_recipe, fit_weighted
from finetune.tasks.own_lora import (
    OwnLoraTrainer,
    Progress,
    TopLayers,
    lora_of,
    phased,
    restore,
    right_padded,
    shared_adapter,
    snapshot,
    wilson,
)
from finetune.trainer import Example, TrainResult

log = logging.getLogger(__name__)

SHARED = "support"  # the shared adapter a tenant's version starts from, when it fits the base model


@dataclass
class OwnSupportOptions:
    """Small-file settings: a few hundred rows, a few minutes on a 2-core CPU."""

    lora: LoraSpec = field(default_factory=lambda: LoraSpec(r=8, alpha=16, dropout=0.05))  # a fresh LoRA's shape
    start_from_shared: bool = True
    train_layers: int = 6  # only these top layers' LoRA trains: the layers below run once per text
    answer_learning_rate: float = 2e-4
    intent_learning_rate: float = 1e-3
    answer_epochs: int = 1
    intent_epochs: int = 4
    batch_size: int = 8
    answer_tokens: int = 48  # the target is cut here: a brief pass over the answers
    max_answer_rows: int = 24  # answer-pass rows at most: the pass is the slow part, and the bot quotes, not writes
    learn_from_answers: bool = True  # answers are intent examples too (``intent_texts``)
    max_answer_texts: int = 400
    answer_feature_tokens: int = 64
    dev_share: float = 0.15  # of the training rows with an intent: chooses the epoch, C and the block weight
    c_grid: list[float] = field(default_factory=lambda: [0.003, 0.01, 0.03, 0.1, 0.3, 1.0])
    weight_grid: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0])
    patience: int = 1
    max_minutes: float = 60.0  # a safety cap; the caller's time budget stops a run first
    seed: int = 42

    def __post_init__(self) -> None:
        if not 0 < self.dev_share < 1:
            raise ValueError(f"dev_share must be in (0, 1), got {self.dev_share}")
        if min(self.answer_epochs, self.intent_epochs, self.batch_size, self.answer_tokens) < 0 or self.batch_size < 1:
            raise ValueError("epochs, batch_size and answer_tokens must be positive")


# ---- read and split -----------------------------------------------------------------------------------


def read_own(files: list[Path]) -> list[FaqPair]:
    """The tenant's rows, refused with the file and line of the first problem (``read_own_faq``)."""
    return read_own_faq(files)


def _question(row: FaqPair) -> str:
    return row.question


def _intent(row: FaqPair) -> str | None:
    return row.intent


def split_own(rows: list[FaqPair]) -> tuple[list[FaqPair], list[FaqPair]]:
    """(train, held out): a fifth of every intent's distinct questions, by content hash; rows
    without an intent are always trained on."""
    return held_out_split(rows, text=_question, label=_intent)


def dev_split(train: list[FaqPair], share: float) -> tuple[list[FaqPair], list[FaqPair]]:
    """(fit, dev) of the training rows with an intent, by content hash as ``split_own``."""
    return held_out_split([r for r in train if r.intent], text=_question, label=_intent, share=share)


# ---- training ----------------------------------------------------------------------------------------


@dataclass
class IntentExample(Example):
    question_ids: list[int] = field(default_factory=list)  # the raw question, no template
    index: int = -1  # into the trainer's cached inputs of the trained layers


class IntentProbe(torch.nn.Module):
    """A linear classifier over standardised pooled hidden states (fixed mean and scale, from the
    starting adapter), so one learning rate suits it and the LoRA alike."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor, classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("scale", scale)
        self.linear = torch.nn.Linear(mean.shape[0], classes)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear((pooled.float() - self.mean) / self.scale)  # [b, classes]


class SupportOwnTrainer(OwnLoraTrainer):
    """Only the top ``train_layers`` layers' LoRA trains (those below are the base model's, or the
    shared adapter's, frozen). ``lm`` loss for examples with a target (answers), else the intent
    probe's cross-entropy over the mean final hidden state of the raw question, run from the cached
    input of the trained layers (``TopLayers``) when that gives what the whole model gives."""

    def __init__(self, config: TrainConfig, settings: Settings, train_layers: int, start_from: Path | None) -> None:
        super().__init__(config, settings.base_model_path, torch.device(settings.resolved_device()), "lm", start_from)
        self.layers = TopLayers(self.model, train_layers)
        self.frozen = self.layers.freeze_below(self.model)
        self.cache: list[torch.Tensor] = []
        self.cached = False
        self.probe: IntentProbe | None = None

    def prepare_intents(self, examples: list[IntentExample], classes: int) -> None:
        """Cache the trained layers' input of every question, check the short path against the whole
        model, and attach a probe standardised on the starting features of ``examples``."""
        ids = [e.question_ids for e in examples]
        self.cache = self.layers.inputs(ids, self.pad_id, self.device)
        for i, e in enumerate(examples):
            e.index = i
        sample = [e.question_ids for e in examples[:8]]
        self.model.eval()
        with torch.no_grad():
            short = self.layers.pooled(self.cache[: len(sample)]).float().cpu()
            whole = self._whole_pooled(sample).float().cpu()
        self.cached = bool(torch.allclose(short, whole, rtol=1e-3, atol=1e-3))
        if not self.cached:
            log.warning("the top-layers path differs from the whole model here; training on the whole model")
        with torch.no_grad():
            start = torch.cat([self.pooled(examples[i : i + 64]).float() for i in range(0, len(examples), 64)])
        self.probe = IntentProbe(start.mean(0), start.std(0) + 1e-6, classes).to(self.device)
        self.model.add_module("intent_probe", self.probe)  # trained with the LoRA: fit() takes the model's parameters

    def _whole_pooled(self, ids: list[list[int]]) -> torch.Tensor:
        batch, mask = right_padded(ids, self.pad_id, self.device)
        hidden = self.model.get_decoder()(input_ids=batch, attention_mask=mask, use_cache=False).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # [b, width, 1]
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)  # [b, hidden], as mean_hidden_states

    def pooled(self, batch: list[IntentExample]) -> torch.Tensor:
        """[b, hidden]: the served feature of each question, with the adapter as it is now."""
        if self.cached:
            return self.layers.pooled([self.cache[e.index] for e in batch])
        return self._whole_pooled([e.question_ids for e in batch])

    def _loss_fp(self, batch: list[Example]) -> torch.Tensor:
        if batch[0].target_ids:
            return super()._loss_fp(batch)
        assert self.probe is not None, "prepare_intents first"
        questions = [e for e in batch if isinstance(e, IntentExample)]
        target = torch.tensor([e.label for e in questions], device=self.device)
        return torch.nn.functional.cross_entropy(self.probe(self.pooled(questions)), target)

    @torch.no_grad()
    def probe_accuracy(self, examples: list[IntentExample]) -> float:
        """Accuracy of the probe on ``examples``, less a thousandth of its mean cross-entropy (ties)."""
        assert self.probe is not None, "prepare_intents first"
        self.model.eval()
        right, loss = 0, 0.0
        for start in range(0, len(examples), 64):
            batch = examples[start : start + 64]
            with self.autocast():
                logits = self.probe(self.pooled(batch)).float()
            target = torch.tensor([e.label for e in batch], device=self.device)
            right += int((logits.argmax(-1) == target).sum())
            loss += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
        return right / len(examples) - 1e-3 * loss / len(examples)

    @torch.no_grad()
    def features(self, examples: list[IntentExample]) -> np.ndarray:
        """[n, hidden]: the served hidden-state features of ``examples`` with the trained adapter."""
        self.model.eval()
        parts = [self.pooled(examples[i : i + 64]).float().cpu().numpy() for i in range(0, len(examples), 64)]
        return np.concatenate(parts, axis=0)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A copy of the trainable weights (the LoRA's top layers; the probe once attached)."""
        return snapshot(self.model)

    def restore(self, weights: dict[str, torch.Tensor]) -> None:
        restore(self.model, weights)

    def drop_probe(self) -> None:
        del self.model.intent_probe
        self.probe = None

    def round_to_saved(self) -> None:
        """Round the trained LoRA weights to the 16 bits they are saved in, so the head is fitted on
        the features the served adapter will give."""
        with torch.no_grad():
            for p in self.model.parameters():
                if p.requires_grad:
                    p.copy_(p.to(torch.float16).to(p.dtype))


def _config(opts: OwnSupportOptions, learning_rate: float, epochs: int) -> TrainConfig:
    return TrainConfig(
        task="support",
        adapter_name="own",
        data={"own": "the tenant's files"},
        instruction=support.INSTRUCTION,
        lora=dataclasses.replace(opts.lora, top_layers=opts.train_layers),
        learning_rate=learning_rate,
        warmup_ratio=0.1,
        epochs=max(1, epochs),
        batch_size=opts.batch_size,
        max_length=512,
        seed=opts.seed,
        patience=opts.patience,
        max_minutes=opts.max_minutes,
    )


def answer_examples(tokenizer: Any, rows: list[FaqPair], serving: SupportServing, answer_tokens: int) -> list[Example]:
    """The served prompt with the row's answer as passage [1]; the answer, cut, as the target."""
    truncate = support.tokenizer_truncate(tokenizer)
    out = []
    for row in rows:
        messages = support.prompt(row.question, [support.passage_text(row.answer)], truncate, serving)
        prompt_ids = tokenizer.encode(render_chat(tokenizer, messages), add_special_tokens=False)
        target_ids = tokenizer.encode(row.answer + tokenizer.eos_token, add_special_tokens=False)[:answer_tokens]
        out.append(Example(prompt_ids=prompt_ids, target_ids=target_ids))
    return out


def intent_texts(
    tokenizer: Any, rows: list[FaqPair], opts: OwnSupportOptions, *, answers: bool
) -> list[tuple[str, str]]:
    """(text, intent) to learn intents from: every question, then (``answers``) each distinct answer
    that only one intent gives, cut to ``opts.answer_feature_tokens`` tokens, at most
    ``opts.max_answer_texts`` of them in content order. An answer says what its intent is about
    in the tenant's own words: it teaches the head the words a question of that intent may use."""
    out = [(r.question, str(r.intent)) for r in rows]
    if not answers:
        return out
    given: dict[str, set[str]] = {}
    for r in rows:
        given.setdefault(r.answer, set()).add(str(r.intent))
    unambiguous = sorted((a for a, i in given.items() if len(i) == 1), key=content_key)[: opts.max_answer_texts]
    for answer in unambiguous:
        ids = tokenizer.encode(answer, add_special_tokens=False)
        text = (
            tokenizer.decode(ids[: opts.answer_feature_tokens]).strip()
            if len(ids) > opts.answer_feature_tokens
            else answer
        )
        out.append((text, next(iter(given[answer]))))
    return out


def intent_examples(tokenizer: Any, texts: list[tuple[str, str]], intents: list[str]) -> list[IntentExample]:
    return [
        IntentExample(
            prompt_ids=[],
            label=intents.index(intent),
            question_ids=tokenizer.encode(text, add_special_tokens=False) or [tokenizer.eos_token_id],
        )
        for text, intent in texts
    ]


def train_own(
    rows: list[FaqPair], out_dir: Path, settings: Settings, *, progress: Progress | None = None
) -> dict[str, Any]:
    """Train on ``rows`` (the training part) and write the adapter and its intent head to ``out_dir``.
    The intent pass is kept only if the head it gives is at least as accurate on the dev part as the
    head over the adapter without it (``training.intent_pass_kept``)."""
    opts = OwnSupportOptions()
    started = time.monotonic()
    fit_rows, dev_rows = dev_split(rows, opts.dev_share)
    intents = sorted({str(r.intent) for r in rows if r.intent})
    dev_set = set(dev_rows)
    answer_rows = sorted([r for r in rows if r not in dev_set], key=lambda r: content_key(r.question + " " + r.answer))[
        : opts.max_answer_rows
    ]  # a fixed subset in content order: the same for the same file
    start_from = shared_adapter(settings, SHARED) if opts.start_from_shared else None
    trainer = SupportOwnTrainer(
        _config(opts, opts.answer_learning_rate, opts.answer_epochs), settings, opts.train_layers, start_from
    )
    tokenizer = trainer.tokenizer
    serving = SupportServing()
    answers = answer_examples(tokenizer, answer_rows, serving, opts.answer_tokens) if opts.answer_epochs else []
    fit_texts = intent_texts(tokenizer, fit_rows, opts, answers=opts.learn_from_answers)
    dev_texts = intent_texts(tokenizer, dev_rows, opts, answers=False)  # questions only: dev judges questions
    fit_ex, dev_ex = intent_examples(tokenizer, fit_texts, intents), intent_examples(tokenizer, dev_texts, intents)
    steps = [
        math.ceil(len(answers) / opts.batch_size) * opts.answer_epochs,
        math.ceil(len(fit_ex) / opts.batch_size) * opts.intent_epochs,
    ]
    results: dict[str, TrainResult] = {}
    if answers:
        results["answers"] = trainer.fit(answers, dev_metric=lambda: 0.0, on_progress=phased(progress, 0, sum(steps)))
    before = trainer.snapshot()  # the adapter without the intent pass, kept if the pass does not help on dev
    trainer.prepare_intents(fit_ex + dev_ex, len(intents))
    trainer.config = _config(opts, opts.intent_learning_rate, opts.intent_epochs)
    results["intents"] = trainer.fit(
        list(fit_ex),
        dev_metric=lambda: trainer.probe_accuracy(dev_ex),
        on_progress=phased(progress, results["answers"].steps if answers else 0, sum(steps)),
    )
    trainer.drop_probe()
    trainer.round_to_saved()

    texts = [t for t, _ in fit_texts + dev_texts]
    minilm = MiniLMEmbedder(settings.embedder_path).embed(texts)  # [n, 384]
    recipe = feature_recipe(
        list(INTENT_FEATURES), [minilm.shape[1], trainer.hidden_size], settings.base_model_path.name, None,
        own_folder=True,
    )  # fmt: skip

    def fit_head() -> tuple[LinearHead, dict[str, Any]]:
        features = np.concatenate([minilm, trainer.features(fit_ex + dev_ex)], axis=1)  # the same texts in order
        return fit_weighted(
            (features[: len(fit_texts)], [i for _, i in fit_texts]),
            (features[len(fit_texts) :], [i for _, i in dev_texts]),
            split_at=minilm.shape[1],
            c_grid=opts.c_grid,
            weight_grid=opts.weight_grid,
            recipe=recipe,
        )

    head, chosen = fit_head()
    after = trainer.snapshot()
    trainer.restore(before)
    trainer.round_to_saved()
    head_before, chosen_before = fit_head()
    kept = chosen["dev_accuracy"] >= chosen_before["dev_accuracy"]  # ties: the intent pass
    if kept:
        trainer.restore(after)
    else:
        head, chosen = head_before, chosen_before
    size = trainer.save(out_dir)
    head.save(out_dir / INTENT_HEAD_FILE)
    return {
        "training": {
            "steps": sum(r.steps for r in results.values()),
            "seconds": round(time.monotonic() - started, 1),
            "rows": len(rows),
            "rows_with_intent": len(fit_rows) + len(dev_rows),
            "answer_texts": len(fit_texts) - len(fit_rows),
            "dev_rows": len(dev_rows),
            "answer_rows": len(answers),
            "intents": len(intents),
            "adapter_bytes": size,
            "trainable_parameters": trainer.trainable_parameters(),
            "started_from": SHARED if start_from is not None else "a fresh LoRA",
            "trained_layers": opts.train_layers,
            "cached_lower_layers": trainer.cached,
            "intent_pass_kept": kept,
            "phases": {name: {k: v for k, v in asdict(r).items() if k != "history"} for name, r in results.items()},
        },
        "config": {"options": asdict(opts), "lora": lora_of(out_dir)},
        "metrics": {
            "dev": {
                "intent_head": chosen,
                "intent_head_without_intent_pass": chosen_before,
                "probe": {"score": results["intents"].best_metric},
            }
        },
        "serving": support.serving_section(serving, intent_head=support.intent_head_section(len(head.classes), recipe)),
    }


# ---- evaluation through the engine -------------------------------------------------------------------


def served_head(engine: Engine, model: str) -> LinearHead | None:
    """The intent head the support app would use for ``model``, or None when it has none it can use."""
    if not engine.has_model(model):
        return None
    path = engine.adapter_file(model, INTENT_HEAD_FILE)
    if path is None:
        return None
    head = LinearHead.load(path)
    if [p.get("name") for p in head.recipe.get("parts", [])] != list(INTENT_FEATURES):
        return None
    return head


def intent_scores(gold: list[str], predicted: list[str]) -> dict[str, float]:
    from sklearn.metrics import f1_score

    right = sum(g == p for g, p in zip(gold, predicted, strict=True))
    low, high = wilson(right, len(gold))
    return {
        "score": right / len(gold),
        "accuracy": right / len(gold),
        "accuracy_ci95_low": low,
        "accuracy_ci95_high": high,
        "macro_f1": float(f1_score(gold, predicted, labels=sorted(set(gold)), average="macro", zero_division=0)),
    }


def evaluate_own(engine: Engine, model: str, rows: list[FaqPair]) -> dict[str, float]:
    """Intent accuracy of ``model``'s served head on ``rows`` with an intent (``score``), through the
    Engine Protocol only, with the features the support app builds. 0.0 for a model without a head,
    and for a head that knows none of the rows' intents; ``coverage``: the share of rows whose
    intent the head can name at all."""
    labelled = [r for r in rows if r.intent]
    if not labelled:
        raise ValueError("no row with an intent to evaluate on")
    gold = [str(r.intent) for r in labelled]
    none = {"score": 0.0, "accuracy": 0.0, "macro_f1": 0.0, "coverage": 0.0, "rows": float(len(gold))}
    head = served_head(engine, model)
    if head is None:
        return {**none, "has_head": 0.0}
    coverage = sum(g in set(head.classes) for g in gold) / len(gold)
    if coverage == 0:
        return {**none, "has_head": 1.0}
    features = support.intent_features(engine, [r.question for r in labelled], model)
    if features.shape[1] != head.coef.shape[1]:
        log.warning(
            "intent head of %s wants %d features, the engine gives %d", model, head.coef.shape[1], features.shape[1]
        )
        return {**none, "has_head": 0.0}
    return {
        **intent_scores(gold, head.predict(features)),
        "coverage": coverage,
        "rows": float(len(gold)),
        "has_head": 1.0,
    }


def guard_rows(settings: Settings) -> list[FaqPair] | None:
    """None: no public set can guard a head over the tenant's own intent names (module docstring)."""
    return None


# ---- the baseline, and the shared adapter's head on the sample store's intents ------------------------


def minilm_logreg(
    embedder: Embedder, train: list[FaqPair], heldout: list[FaqPair], opts: OwnSupportOptions | None = None
) -> dict[str, float]:
    """The baseline a head must beat: MiniLM embeddings of the questions + logistic regression, C
    chosen on the same dev part of ``train`` as ``train_own`` chooses on, refitted on all of
    ``train``; its ``intent_scores`` on ``heldout`` (and the C it chose)."""
    opts = opts or OwnSupportOptions()
    fit_rows, dev_rows = dev_split(train, opts.dev_share)
    x_fit = embedder.embed([r.question for r in fit_rows])
    x_dev = embedder.embed([r.question for r in dev_rows])
    head, chosen = fit_weighted(
        (x_fit, [str(r.intent) for r in fit_rows]),
        (x_dev, [str(r.intent) for r in dev_rows]),
        split_at=x_fit.shape[1],
        c_grid=opts.c_grid,
        weight_grid=[1.0],
        recipe={},
    )
    labelled = [r for r in heldout if r.intent]
    predicted = head.predict(embedder.embed([r.question for r in labelled]))
    return {**intent_scores([str(r.intent) for r in labelled], predicted), "C": float(chosen["C"])}


SAMPLE_FILE = PROJECT_ROOT / "data" / "samples" / "train" / "support_faq.csv"  # the demo store's own intents


def fit_shared_head(
    settings: Settings, files: list[Path] | None = None, adapter: str = SHARED, out: Path | None = None
) -> dict[str, Any]:
    """Refit the intent head of the shared adapter ``adapter`` on the training part of ``files``
    (the demo store's ``SAMPLE_FILE``), its LoRA unchanged: the intents the demo store's bot names
    are then the store's own, with no tenant training. The held-out part (``split_own``) is
    never seen, so a tenant version trained on the same file is gated fairly against this head.
    Writes ``INTENT_HEAD_FILE`` into the adapter's folder (or ``out``); returns the held-out
    scores of the head and of MiniLM + logistic regression, and the card's new ``intent_head``."""
    from peft import PeftModel

    from core.scoring import mean_hidden_states
    from finetune.trainer import load_base

    files = files or [SAMPLE_FILE]
    folder = settings.adapters_path / adapter
    opts = OwnSupportOptions()
    train, heldout = split_own(read_own(files))
    fit_rows, dev_rows = dev_split(train, opts.dev_share)
    device = torch.device(settings.resolved_device())
    tokenizer, base = load_base(settings.base_model_path, device)
    model = PeftModel.from_pretrained(base, folder)
    fit_texts = intent_texts(tokenizer, fit_rows, opts, answers=opts.learn_from_answers)
    dev_texts = intent_texts(tokenizer, dev_rows, opts, answers=False)
    held_texts = [(r.question, str(r.intent)) for r in heldout if r.intent]
    embedder = MiniLMEmbedder(settings.embedder_path)

    def features(pairs: list[tuple[str, str]]) -> np.ndarray:
        texts = [t for t, _ in pairs]
        return np.concatenate([embedder.embed(texts), mean_hidden_states(model, tokenizer, texts, device, 32)], axis=1)

    x_fit, x_dev, x_held = features(fit_texts), features(dev_texts), features(held_texts)
    dims = [embedder.dim, x_fit.shape[1] - embedder.dim]
    recipe = feature_recipe(list(INTENT_FEATURES), dims, settings.base_model_path.name, adapter)
    head, chosen = fit_weighted(
        (x_fit, [i for _, i in fit_texts]),
        (x_dev, [i for _, i in dev_texts]),
        split_at=dims[0],
        c_grid=opts.c_grid,
        weight_grid=opts.weight_grid,
        recipe=recipe,
    )
    head.save((out or folder) / INTENT_HEAD_FILE)
    return {
        "file": [str(f) for f in files],
        "rows": {"train": len(train), "fit": len(fit_texts), "dev": len(dev_texts), "heldout": len(held_texts)},
        "intents": len(head.classes),
        "chosen": chosen,
        "heldout": {
            "intent_head": intent_scores([i for _, i in held_texts], head.predict(x_held)),
            "minilm_logreg": minilm_logreg(embedder, train, heldout, opts),
        },
        "card_intent_head": support.intent_head_section(len(head.classes), recipe),
    }


def refit_store_head(settings: Settings, adapter: str = SHARED) -> dict[str, Any]:
    """``fit_shared_head`` on the demo store's sample file, and the adapter's card says so: its
    ``serving.intent_head`` (the store's intents) and ``metrics.store_intents`` (held-out scores)."""
    from finetune.cards import update_card

    report = fit_shared_head(settings, adapter=adapter)
    update_card(
        settings.adapters_path / adapter,
        serving={"intent_head": report["card_intent_head"]},
        metrics={"store_intents": {k: report[k] for k in ("file", "rows", "intents", "chosen", "heldout")}},
    )
    return report


if __name__ == "__main__":  # python -m finetune.tasks.support_own: refit data/adapters/support/intent_head.npz
    import json

    from core.config import get_settings

    print(json.dumps(refit_store_head(get_settings()), indent=2))
