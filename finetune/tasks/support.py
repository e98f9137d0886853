"""The support adapter: answer a customer in the support voice from a retrieved knowledge-base snippet.

Train (``lm`` objective, loss on the response tokens only) on Bitext requests whose prompt holds the
response of the most similar other knowledge-base row, built by ``domains.support.prompt`` as the app
builds it.
Then fit the banking77 intent head on [MiniLM embedding, mean last hidden state with the adapter on]
and save it next to the adapter.

Evaluate: ROUGE-L (rouge-score), BLEU-4 (sacreBLEU) and reference perplexity on held-out Bitext rows, adapter vs base on the
same retrieved-snippet prompts (and the retrieved answer itself as a no-model baseline); banking77
intent accuracy on a held-out 15% for zero-shot MiniLM, MiniLM + logistic regression, the base
model's hidden states + logistic regression, and ours.

A tenant's own data (``finetune.own``): ``read_own``, ``split_own``, ``train_own``, ``evaluate_own`` and
``guard_rows`` live in ``finetune.tasks.support_own`` and are named here.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.adapters import CARD_FILE
from core.config import Settings
from core.embeddings import Embedder, MiniLMEmbedder
from core.heads import LinearHead
from core.prompts import Message, render_chat
from core.sampling import SamplingParams
from core.scoring import mean_hidden_states
from domains import support
from domains.support import (
    INTENT_FEATURES,
    PASSAGE_TOKENS,
    IntentText,
    SupportRow,
    SupportServing,
    read_banking77,
    read_bitext,
)
from finetune.cards import write_card
from finetune.config import ConfigError, TrainConfig, config_for, load_config
from finetune.data.support import nearest_allowed, stratified_split
from finetune.metrics import (
    BLEU_SIGNATURE,
    RESULTS_DIR,
    classification_report,
    corpus_bleu,
    plot_bars,
    rouge_l,
    word_tokens,
)
from finetune.progress import track
from finetune.tasks.intent_head import feature_recipe, fit_logreg
from finetune.tasks.support_own import evaluate_own, guard_rows, read_own, refit_store_head, split_own, train_own
from finetune.trainer import Example, LoraTrainer, load_base

# the head fitted on banking77 by ``train``: the public benchmark's, for ``evaluate`` only (the head
# served, INTENT_HEAD_FILE, is the store's own intents: finetune.tasks.support_own.refit_store_head)
BANKING77_HEAD_FILE = "intent_head_banking77.npz"

__all__ = ["evaluate_own", "feature_recipe", "fit_logreg", "guard_rows", "read_own", "split_own", "train_own"]


@dataclass
class SupportOptions:
    """The task's knobs under ``options:`` in support.yaml, checked before anything loads."""

    passage_tokens: int = PASSAGE_TOKENS
    held_out_share: float = 0.1  # Bitext rows per intent never trained on nor retrieved
    intent_held_out_share: float = 0.15  # banking77 rows per intent kept for evaluation
    intent_dev_share: float = 0.15  # of the remaining 85%: picks the logistic regression's C
    head_c_grid: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0, 3.0])
    feature_batch_size: int = 64
    eval_rows: int = 100
    eval_max_tokens: int = 160

    def __post_init__(self) -> None:
        for name in ("held_out_share", "intent_held_out_share", "intent_dev_share"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"options.{name} must be in (0, 1), got {getattr(self, name)}")
        for name in ("passage_tokens", "feature_batch_size", "eval_rows", "eval_max_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"options.{name} must be at least 1, got {getattr(self, name)}")
        if not self.head_c_grid or any(c <= 0 for c in self.head_c_grid):
            raise ConfigError(f"options.head_c_grid must hold positive values, got {self.head_c_grid}")

    @classmethod
    def from_config(cls, config: TrainConfig) -> SupportOptions:
        unknown = set(config.options) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown support options: {', '.join(sorted(unknown))}")
        return cls(**config.options)


def bitext_splits(config: TrainConfig, shared: Path, opts: SupportOptions) -> tuple[list[SupportRow], list[SupportRow]]:
    """(knowledge base, held out): the same rows for the same data and seed."""
    return stratified_split(read_bitext(config.path("bitext", shared)), _intent, opts.held_out_share, config.seed)


def intent_splits(config: TrainConfig, shared: Path, opts: SupportOptions) -> tuple[list[IntentText], list[IntentText]]:
    """(train 85%, held out 15%) of banking77 train.csv, stratified by intent."""
    rows = read_banking77(config.path("banking77", shared))
    return stratified_split(rows, _intent, opts.intent_held_out_share, config.seed)


def _intent(row: SupportRow | IntentText) -> str:
    return row.intent


class ChunkedEmbedder:
    """Engine.embed refuses more than a request's worth of texts; evaluation embeds thousands."""

    def __init__(self, inner: Embedder, chunk: int = 2048) -> None:
        self.inner, self.chunk = inner, chunk

    def embed(self, texts: list[str], *, normalize: bool = True) -> np.ndarray:
        parts = [
            self.inner.embed(texts[i : i + self.chunk], normalize=normalize) for i in range(0, len(texts), self.chunk)
        ]
        return np.concatenate(parts, axis=0) if parts else np.zeros((0, 384), dtype=np.float32)


def with_passages(
    rows: list[SupportRow], kb: list[SupportRow], embedder: Embedder
) -> list[tuple[SupportRow, SupportRow]]:
    """Each row with the KB row it retrieves (by request similarity; never itself)."""
    kb_vecs = embedder.embed([r.request for r in kb])
    row_vecs = kb_vecs if rows is kb else embedder.embed([r.request for r in rows])
    return [(row, kb[j]) for row, j in zip(rows, nearest_allowed(rows, row_vecs, kb, kb_vecs), strict=True)]


def serving_of(config: TrainConfig, opts: SupportOptions) -> SupportServing:
    """The instruction and passage length the adapter is trained with, and so served with."""
    return SupportServing(instruction=config.instruction or support.INSTRUCTION, passage_tokens=opts.passage_tokens)


def prompt_for(
    truncate: support.Truncate, row: SupportRow, passage: SupportRow, config: TrainConfig, opts: SupportOptions
) -> list[Message]:
    """A Bitext request with the retrieved row's response as its one passage (Bitext has no titles)."""
    return support.prompt(row.request, [support.passage_text(passage.response)], truncate, serving_of(config, opts))


def to_examples(
    tokenizer: Any, pairs: list[tuple[SupportRow, SupportRow]], config: TrainConfig, opts: SupportOptions
) -> list[Example]:
    """Prompt kept whole; the response (ending in EOS, so the model learns to stop) cut to fit
    ``max_length``, keeping at least 16 answer tokens."""
    out = []
    truncate = support.tokenizer_truncate(tokenizer)
    for row, passage in pairs:
        prompt = render_chat(tokenizer, prompt_for(truncate, row, passage, config, opts))
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
        target_ids = tokenizer.encode(row.response + tokenizer.eos_token, add_special_tokens=False)
        room = max(config.max_length - len(prompt_ids), 16)
        out.append(Example(prompt_ids=prompt_ids, target_ids=target_ids[:room]))
    return out


# ---- train ----------------------------------------------------------------------------------------


def train(config: TrainConfig, settings: Settings, progress: Any = None) -> dict[str, Any]:
    opts = SupportOptions.from_config(config)
    shared = settings.shared_data_dir
    kb, _held_out = bitext_splits(config, shared, opts)
    intents, _intents_held_out = intent_splits(config, shared, opts)
    embedder = MiniLMEmbedder(settings.embedder_path)
    pairs = with_passages(kb, kb, embedder)
    random.Random(config.seed).shuffle(pairs)
    dev_pairs, train_pairs = pairs[: config.dev_rows], pairs[config.dev_rows :]
    if config.max_train_rows:
        train_pairs = train_pairs[: config.max_train_rows]
    device = torch.device(settings.resolved_device())
    trainer = LoraTrainer(config, settings.base_model_path, device, objective="lm")
    train_ex = to_examples(trainer.tokenizer, train_pairs, config, opts)
    dev_ex = to_examples(trainer.tokenizer, dev_pairs, config, opts)
    result = trainer.fit(train_ex, dev_metric=lambda: -trainer.dev_loss(dev_ex), on_progress=progress)
    out_dir = settings.adapters_path / config.adapter_name
    size = trainer.save(out_dir)

    texts = [r.text for r in intents]
    minilm = embedder.embed(texts)
    hidden = mean_hidden_states(trainer.model, trainer.tokenizer, texts, device, opts.feature_batch_size)
    recipe = feature_recipe(
        list(INTENT_FEATURES), [minilm.shape[1], hidden.shape[1]], settings.base_model_path.name, config.adapter_name
    )
    head, head_dev = fit_logreg(
        np.concatenate([minilm, hidden], axis=1),
        [r.intent for r in intents],
        opts.head_c_grid,
        opts.intent_dev_share,
        config.seed + 1,
        recipe,
    )
    head.save(out_dir / BANKING77_HEAD_FILE)  # the public benchmark's head: evaluation only
    card = write_card(
        out_dir,
        config,
        data_files=[config.path("bitext", shared), config.path("banking77", shared)],
        train_rows=len(train_ex),
        training={**result.__dict__, "adapter_bytes": size, "trainable_parameters": trainer.trainable_parameters()},
        metrics={
            "dev": {"adapter": {"loss": -result.best_metric, "perplexity": math.exp(-result.best_metric)}},
            "banking77_dev": {"intent_head": head_dev},
        },
        serving=support.serving_section(
            serving_of(config, opts), intent_head=support.intent_head_section(len(head.classes), recipe)
        ),
    )
    if config.adapter_name == "support":
        # the demo store's bot names the store's own intents, never banking77's: refit the served
        # head on the sample store's file (finetune.tasks.support_own), the card updated
        refit_store_head(settings, adapter=config.adapter_name)
        card = json.loads((out_dir / CARD_FILE).read_text())
    return card


# ---- evaluate -------------------------------------------------------------------------------------


def generation_scores(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    return {
        "rouge_l": float(np.mean([rouge_l(r, h) for r, h in zip(references, hypotheses, strict=True)])),
        "sacrebleu": corpus_bleu(references, hypotheses),
        "mean_words": float(np.mean([len(word_tokens(h)) for h in hypotheses])),
    }


def evaluate(settings: Settings, adapter: str = "support", out_dir: Path = RESULTS_DIR) -> dict[str, Any]:
    from core.engine import LocalEngine

    config = load_config(config_for("support"), settings.shared_data_dir)
    opts = SupportOptions.from_config(config)
    shared = settings.shared_data_dir
    started = time.monotonic()
    kb, held_out = bitext_splits(config, shared, opts)
    rows = random.Random(config.seed).sample(held_out, min(opts.eval_rows, len(held_out)))
    references = [r.response for r in rows]
    engine = LocalEngine(settings)
    engine.warm_up()
    try:
        has_adapter = engine.has_model(adapter)
        pairs = with_passages(rows, kb, ChunkedEmbedder(engine))  # engine.embed: on the engine thread
        prompts = [prompt_for(engine.truncate_tokens, row, passage, config, opts) for row, passage in pairs]
        models = {"base": "base"} | ({f"adapter:{adapter}": adapter} if has_adapter else {})
        params = SamplingParams(max_new_tokens=opts.eval_max_tokens)
        futures = {
            name: [engine.submit_generate(p, model=model, params=params) for p in prompts]
            for name, model in models.items()
        }  # all at once: the micro-batcher decodes them in mixed-adapter batches
        generated = {
            name: [f.result().text for f in track(fs, f"generating answers ({name})")] for name, fs in futures.items()
        }
        perplexity = {}
        for name, model in models.items():
            scores = [
                engine.score_continuations(p, [ref], model=model)[0]
                for p, ref in track(zip(prompts, references, strict=True), f"perplexity ({name})", len(prompts))
            ]
            perplexity[name] = {
                "perplexity": math.exp(-sum(s.logprob for s in scores) / sum(s.n_tokens for s in scores))
            }
    finally:
        engine.close()
    generation = {name: generation_scores(references, hyps) for name, hyps in generated.items()}
    generation["retrieved_answer"] = generation_scores(references, [passage.response for _, passage in pairs])

    head_path = settings.adapters_path / adapter / BANKING77_HEAD_FILE  # the served head is the store's
    ours = adapter if has_adapter and head_path.is_file() else None
    intents = intent_report(settings, config, opts, ChunkedEmbedder(engine), ours)
    report: dict[str, Any] = {
        "task": "support",
        "splits": {
            "banking77_held_out": intents["splits"],
            "bitext_generation": generation,
            "bitext_reference_perplexity": perplexity,
        },
        "intent_heads": intents["heads"],
        "setup": {
            "bitext_eval_rows": len(rows),
            "max_new_tokens": opts.eval_max_tokens,
            "decoding": "greedy",
            "prompt": "domains.support.prompt with the response of the most similar knowledge-base request as passage [1]",
            "rouge": "rouge-score ROUGE-L F1 (no stemming), mean over rows",
            "banking77": "stratified 15% of train.csv held out; C chosen on a dev part of the other 85%",
            "bleu": BLEU_SIGNATURE,
        },
        "samples": [
            {"request": r.request, "reference": r.response, **{n: g[i] for n, g in generated.items()}}
            for i, r in enumerate(rows[:3])
        ],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_bars(
        {
            "banking77 intent accuracy": {n: v["accuracy"] for n, v in intents["splits"].items()},
            "Bitext ROUGE-L": {n: v["rouge_l"] for n, v in generation.items()},
        },
        "support: intent classification and answers on held-out rows",
        out_dir / "support_quality.png",
    )
    report["seconds"] = time.monotonic() - started
    (out_dir / "quality_support.json").write_text(json.dumps(report, indent=2))
    return report


def intent_report(
    settings: Settings, config: TrainConfig, opts: SupportOptions, embedder: Embedder, adapter: str | None
) -> dict[str, dict[str, Any]]:
    """banking77 held-out accuracy per system; ``adapter`` None leaves out the adapter's saved head."""
    train_rows, held_rows = intent_splits(config, settings.shared_data_dir, opts)
    train_texts, held_texts = [r.text for r in train_rows], [r.text for r in held_rows]
    labels, gold = [r.intent for r in train_rows], [r.intent for r in held_rows]
    classes = sorted(set(labels))
    minilm_train, minilm_held = embedder.embed(train_texts), embedder.embed(held_texts)
    names = embedder.embed([c.replace("_", " ") for c in classes])
    predictions = {"zero_shot_minilm": [classes[i] for i in (minilm_held @ names.T).argmax(axis=1)]}

    device = torch.device(settings.resolved_device())
    tokenizer, model = load_base(settings.base_model_path, device)
    batch = opts.feature_batch_size
    base_train = mean_hidden_states(model, tokenizer, train_texts, device, batch)
    base_held = mean_hidden_states(model, tokenizer, held_texts, device, batch)
    base_name = settings.base_model_path.name
    heads: dict[str, Any] = {}
    systems = {
        "minilm_logreg": (["minilm"], minilm_train, minilm_held),
        "base_hidden_logreg": (["hidden"], base_train, base_held),
        "minilm+base_hidden_logreg": (
            ["minilm", "hidden"],
            np.concatenate([minilm_train, base_train], axis=1),
            np.concatenate([minilm_held, base_held], axis=1),
        ),
    }
    for name, (parts, x_train, x_held) in systems.items():
        dims = [minilm_train.shape[1] if p == "minilm" else base_train.shape[1] for p in parts]
        head, heads[name] = fit_logreg(
            x_train,
            labels,
            opts.head_c_grid,
            opts.intent_dev_share,
            config.seed + 1,
            feature_recipe(parts, dims, base_name, None),
        )
        predictions[name] = head.predict(x_held)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, settings.adapters_path / adapter)
        ours = LinearHead.load(settings.adapters_path / adapter / BANKING77_HEAD_FILE)
        adapter_held = mean_hidden_states(model, tokenizer, held_texts, device, batch)
        predictions[f"adapter:{adapter}"] = ours.predict(np.concatenate([minilm_held, adapter_held], axis=1))
        heads[f"adapter:{adapter}"] = {"C": ours.recipe["C"], "saved": True}
    splits = {}
    for name, pred in predictions.items():
        scores = classification_report(gold, pred, classes)
        splits[name] = {k: v for k, v in scores.items() if k != "confusion"}  # 77 x 77: too big to keep per system
    return {"splits": splits, "heads": heads}
