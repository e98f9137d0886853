"""The recommend adapter (TALLRec-style): P("Yes") that a user with these liked and disliked
titles will like the target, from the first-token logits.

Train on ml-latest-small (never ml-100k: the TALLRec prompts come from ml-100k users). Evaluate AUC
on tallrec-prompts/movie/valid.json next to the zero-shot base, item popularity (the target's like
rate in the training ratings), and MiniLM similarity (to the liked minus to the disliked titles).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.config import Settings
from core.prompts import Message, render_chat
from domains.recommend.movielens import read_movielens
from domains.recommend.prompt import (
    INSTRUCTION,
    MOVIE,
    WORDINGS,
    PreferencePrompt,
    Render,
    Wording,
    read_tallrec,
    render_prompt,
    split_prompt,
)
from domains.recommend.serving import RecommendServing, serving_section
from finetune.cards import write_card
from finetune.config import TrainConfig, config_for, load_config
from finetune.data.recommend import assemble, like_rates
from finetune.metrics import RESULTS_DIR, auc, plot_roc
from finetune.progress import track
from finetune.trainer import Example, LoraTrainer

log = logging.getLogger(__name__)


def renderer(tokenizer: Any) -> Render:
    """The chat template as the engine applies it when it serves (``engine.render``)."""

    def render(messages: list[Message]) -> str:
        return render_chat(tokenizer, messages)

    return render


def wording_of(config: TrainConfig) -> Wording:
    """The prompt's wording a config trains with (``options.wording``: movie, TALLRec's, by default)."""
    name = str(config.options.get("wording", MOVIE.name))
    if name not in WORDINGS:
        raise ValueError(f"options.wording must be one of {', '.join(WORDINGS)}, got {name!r}")
    return WORDINGS[name]


def to_examples(tokenizer: Any, rows: list[PreferencePrompt], config: TrainConfig) -> list[Example]:
    wording = wording_of(config)
    instruction = config.instruction or wording.instruction
    render = renderer(tokenizer)
    out = []
    for r in rows:
        ids = tokenizer.encode(render_prompt(render, r, instruction, wording), add_special_tokens=False)
        out.append(Example(prompt_ids=ids[-config.max_length :], label=config.labels.index(r.label)))
    return out


def to_group_examples(
    tokenizer: Any, groups: list[list[PreferencePrompt]], config: TrainConfig
) -> tuple[list[Example], float]:
    """One shared-prefix example per group: the prompt split as the recommender serves it
    (``domains.recommend.prompt.split_prompt``): the rendered prompt up to the target sentence is the
    prefix, the rest (target, end of turn, assistant header) each row's continuation. Returns the
    examples and the share of rows whose split tokens equal the whole prompt's tokens (the served
    ``score_labels`` path tokenises the whole prompt)."""
    wording = wording_of(config)
    instruction = config.instruction or wording.instruction
    render = renderer(tokenizer)
    out, same, total = [], 0, 0
    for group in groups:
        if len({(r.liked, r.disliked) for r in group}) != 1:
            raise ValueError("rows of a group must share their history")
        split = split_prompt(render, group[0].liked, group[0].disliked, instruction, wording)
        prefix_ids = tokenizer.encode(split.prefix, add_special_tokens=False)
        if len(prefix_ids) > config.max_length - 48:
            continue
        conts = []
        for r in group:
            conts.append(tokenizer.encode(split.continuation(r.target), add_special_tokens=False))
            if total < 200:
                whole = render_prompt(render, r, instruction, wording)
                same += int(tokenizer.encode(whole, add_special_tokens=False) == prefix_ids + conts[-1])
                total += 1
        out.append(
            Example(prompt_ids=prefix_ids, continuations=conts, labels=[config.labels.index(r.label) for r in group])
        )
    return out, same / max(total, 1)


def train(config: TrainConfig, settings: Settings, progress: Any = None) -> dict[str, Any]:
    if config.options.get("dataset") == "games":  # Amazon Games, the product wording (finetune/configs)
        from finetune.tasks.games import train_games

        return train_games(config, settings, progress)
    shared = settings.shared_data_dir
    history = read_movielens(config.path("ratings", shared), config.path("movies", shared)).title_ratings()
    data = assemble(history, config)
    dev_rows = data.dev_rows
    device = torch.device(settings.resolved_device())
    trainer = LoraTrainer(config, settings.base_model_path, device, objective="labels")
    split_agreement = None
    if data.groups:  # shared-prefix groups: one pass over each history window
        train_ex, split_agreement = to_group_examples(trainer.tokenizer, data.groups, config)
        log.info(
            "%d shared-prefix groups; split tokenisation equals whole: %.1f%%", len(train_ex), 100 * split_agreement
        )
    else:
        train_ex = to_examples(trainer.tokenizer, data.rows, config)
    dev_ex = to_examples(trainer.tokenizer, dev_rows, config)
    dev_gold = [int(r.label == "Yes") for r in dev_rows]
    yes = config.labels.index("Yes")
    result = trainer.fit(
        train_ex,
        dev_metric=lambda: auc(dev_gold, trainer.predict_labels(dev_ex)[:, yes].tolist()),
        on_progress=progress,
    )
    out_dir = settings.adapters_path / config.adapter_name
    size = trainer.save(out_dir)
    return write_card(
        out_dir,
        config,
        data_files=[config.path("ratings", shared), config.path("movies", shared)],
        train_rows=sum(max(1, len(e.continuations)) for e in train_ex),
        training={
            **result.__dict__,
            "adapter_bytes": size,
            "trainable_parameters": trainer.trainable_parameters(),
            "shared_prefix_groups": len(train_ex) if split_agreement is not None else None,
            "split_tokenisation_agreement": split_agreement,
        },
        metrics={"dev": {"adapter": {"auc": result.best_metric}}},
        serving=serving_section(
            RecommendServing(instruction=config.instruction or INSTRUCTION, labels=tuple(config.labels)),
            objective=str(config.options.get("objective", "like")),
        ),
    )


def popularity_scores(rows: list[PreferencePrompt], rates: dict[str, tuple[int, int]]) -> list[float]:
    likes = sum(v[0] for v in rates.values())
    total = sum(v[1] for v in rates.values())
    prior = likes / total
    # smoothed like rate: unknown or rarely rated titles fall back towards the global rate
    return [(rates.get(r.target, (0, 0))[0] + 5 * prior) / (rates.get(r.target, (0, 0))[1] + 5) for r in rows]


def embedding_scores(rows: list[PreferencePrompt], embed: Any) -> list[float]:
    titles = sorted({t for r in rows for t in (*r.liked, *r.disliked, r.target)})
    vectors = dict(zip(titles, embed(titles), strict=True))
    out = []
    for r in rows:
        target = vectors[r.target]
        liked = float(np.mean([vectors[t] @ target for t in r.liked])) if r.liked else 0.0
        disliked = float(np.mean([vectors[t] @ target for t in r.disliked])) if r.disliked else 0.0
        out.append(liked - disliked)
    return out


def evaluate(settings: Settings, adapter: str = "recommend", out_dir: Path = RESULTS_DIR) -> dict[str, Any]:
    from core.engine import LocalEngine

    config = load_config(config_for("recommend"), settings.shared_data_dir)
    shared = settings.shared_data_dir
    rows = read_tallrec(config.path("tallrec_valid", shared))
    gold = [int(r.label == "Yes") for r in rows]
    history = read_movielens(config.path("ratings", shared), config.path("movies", shared)).title_ratings()
    started = time.monotonic()
    scores: dict[str, list[float]] = {"popularity": popularity_scores(rows, like_rates(history))}
    scores["user_like_ratio"] = [len(r.liked) / max(1, len(r.liked) + len(r.disliked)) for r in rows]
    engine = LocalEngine(settings)
    engine.warm_up()
    try:
        scores["minilm_similarity"] = embedding_scores(rows, engine.embed)
        instruction = config.instruction or INSTRUCTION
        for model in ["base"] + ([adapter] if engine.has_model(adapter) else []):
            name = "zero_shot_base" if model == "base" else f"adapter:{adapter}"
            texts = [r.text() for r in rows]
            probs: list[float] = []
            for start in track(range(0, len(texts), 32), f"{model} on TALLRec valid (batches of 32)"):
                batch = engine.score_labels(
                    texts[start : start + 32], config.labels, model=model, instruction=instruction
                )
                probs += [p["Yes"] for p in batch]
            scores[name] = probs
    finally:
        engine.close()
    report: dict[str, Any] = {
        "task": "recommend",
        "splits": {"tallrec_movie_valid": {name: {"auc": auc(gold, s), "n": len(gold)} for name, s in scores.items()}},
        "anchors": {"TALLRec LLaMA-7B (movie, reported AUC)": "0.67-0.72"},
        "seconds": time.monotonic() - started,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_roc({n: (gold, s) for n, s in scores.items()}, "TALLRec movie valid: like?", out_dir / "recommend_roc.png")
    (out_dir / "quality_recommend.json").write_text(json.dumps(report, indent=2))
    return report


# ---- a store's own data: the orchestrator's contract (finetune/tasks/recommend_own.py) ---------------

from finetune.tasks.recommend_own import (  # noqa: E402  (re-exported under the contract's names)
    HeldOutCase,
    RecommendHeldOut,
    RecommendOwnData,
    evaluate_own,
    guard_rows,
    read_own,
    split_own,
    train_own,
)

__all__ = [
    "HeldOutCase",
    "RecommendHeldOut",
    "RecommendOwnData",
    "evaluate",
    "evaluate_own",
    "guard_rows",
    "read_own",
    "split_own",
    "train",
    "train_own",
]
