"""Next-item adapters in the product wording: the Games-6k adapter (``recommend-games``,
``finetune/configs/recommend-games.yaml``) and a store's own (``finetune.tasks.recommend.train_own``).

Both train the same way: shared-prefix groups (one history window, the real next product and
sampled negatives), the labels objective on Yes/No, the best checkpoint by dev AUC; the card's
serving section names the product wording and the item fields, so the storefront's scorer asks the
adapter exactly what it learnt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.config import Settings
from domains.recommend.games import DATA_SUBDIR, read_games, split_games
from domains.recommend.prompt import PRODUCT, PreferencePrompt
from domains.recommend.serving import RecommendServing, serving_section
from finetune.cards import write_card
from finetune.config import TrainConfig
from finetune.data.games import games_training
from finetune.metrics import auc
from finetune.tasks.recommend import to_examples, to_group_examples
from finetune.trainer import LoraTrainer

log = logging.getLogger(__name__)
Progress = Callable[[int, int, float], None]


def product_serving(config: TrainConfig, item_fields: tuple[str, ...] = ("title",)) -> RecommendServing:
    return RecommendServing(
        instruction=config.instruction or PRODUCT.instruction,
        labels=tuple(config.labels),
        wording=PRODUCT,
        item_fields=item_fields,
    )


def fit_next_item(
    config: TrainConfig,
    settings: Settings,
    groups: list[list[PreferencePrompt]],
    dev_rows: list[PreferencePrompt],
    out_dir: Path,
    *,
    data_files: list[Path],
    item_fields: tuple[str, ...] = ("title",),
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train on ``groups``, keep the checkpoint with the best AUC on ``dev_rows``, write the adapter
    and its card to ``out_dir``; returns the card. ``config.options.wording`` must be "product"."""
    if config.options.get("wording") != PRODUCT.name:
        raise ValueError("a next-item product adapter trains with options.wording: product")
    if not groups or len({r.label for r in dev_rows}) < 2:
        raise ValueError("training needs at least one group and dev rows with both answers")
    device = torch.device(settings.resolved_device())
    trainer = LoraTrainer(config, settings.base_model_path, device, objective="labels")
    train_ex, agreement = to_group_examples(trainer.tokenizer, groups, config)
    if not train_ex:
        raise ValueError(f"every history window is longer than max_length ({config.max_length} tokens)")
    dev_ex = to_examples(trainer.tokenizer, dev_rows, config)
    dev_gold = [int(r.label == "Yes") for r in dev_rows]
    yes = config.labels.index("Yes")
    log.info("%d shared-prefix groups, %d dev rows; split tokenisation equals whole: %.1f%%",
             len(train_ex), len(dev_ex), 100 * agreement)  # fmt: skip
    result = trainer.fit(
        train_ex,
        dev_metric=lambda: auc(dev_gold, trainer.predict_labels(dev_ex)[:, yes].tolist()),
        on_progress=progress,
    )
    size = trainer.save(out_dir)
    return write_card(
        out_dir,
        config,
        data_files=data_files,
        train_rows=sum(len(e.continuations) for e in train_ex),
        training={
            **result.__dict__,
            "adapter_bytes": size,
            "trainable_parameters": trainer.trainable_parameters(),
            "shared_prefix_groups": len(train_ex),
            "split_tokenisation_agreement": agreement,
        },
        metrics={"dev": {"adapter": {"auc": result.best_metric}}},
        serving=serving_section(product_serving(config, item_fields), objective="next_item"),
    )


def train_games(config: TrainConfig, settings: Settings, progress: Progress | None = None) -> dict[str, Any]:
    """The Games-6k adapter: groups from the fit histories, dev rows from the dev users' last items."""
    folder = config.path("items", settings.shared_data_dir).parent
    games = read_games(folder)
    split = split_games(games)
    options = config.options
    data = games_training(
        split,
        games.titles,
        sorted(games.titles, key=lambda i: (len(i), i)),
        groups=config.max_train_rows or 6000,
        dev_rows=config.dev_rows,
        negatives=int(options.get("negatives", 7)),
        hard=int(options.get("hard_negatives", 4)),
        windows_per_user=int(options.get("windows_per_user", 1)),
        seed=config.seed,
    )
    return fit_next_item(
        config,
        settings,
        data.groups,
        data.dev_rows,
        settings.adapters_path / config.adapter_name,
        data_files=[config.path("items", settings.shared_data_dir), config.path("sequences", settings.shared_data_dir)],
        progress=progress,
    )


__all__ = ["DATA_SUBDIR", "fit_next_item", "product_serving", "train_games"]
