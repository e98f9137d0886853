"""Adapter cards: what an adapter is, how it was trained, on what, and how well it does.

Written next to the adapter as ``adapter_card.json`` (read by the core's registry and shown in
/v1/models) and ``README.md`` (for people)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import time
from pathlib import Path
from typing import Any

from core.adapters import CARD_FILE
from finetune.config import TrainConfig


def data_hash(paths: list[Path]) -> str:
    """SHA-256 over the training files' bytes, in order: proves which data an adapter saw."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def write_card(
    out_dir: Path,
    config: TrainConfig,
    *,
    data_files: list[Path],
    train_rows: int,
    training: dict[str, Any],
    metrics: dict[str, Any],
    serving: dict[str, Any],
) -> dict[str, Any]:
    import torch

    card = {
        "name": config.adapter_name,
        "task": config.task,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": dataclasses.asdict(config),
        "data": {"files": [p.name for p in data_files], "sha256": data_hash(data_files), "train_rows": train_rows},
        "training": training,
        "metrics": metrics,
        "serving": serving,  # what the apps need to call it the way it was trained
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor()},
    }
    (out_dir / CARD_FILE).write_text(json.dumps(card, indent=2, default=str))
    (out_dir / "README.md").write_text(_markdown(card))
    return card


def update_card(
    out_dir: Path, *, serving: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Merge ``serving`` and ``metrics`` sections into an adapter's card (a head refitted later, on
    other data) and write both files again."""
    card = json.loads((out_dir / CARD_FILE).read_text())
    card["serving"] = {**card.get("serving", {}), **(serving or {})}
    card["metrics"] = {**card.get("metrics", {}), **(metrics or {})}
    (out_dir / CARD_FILE).write_text(json.dumps(card, indent=2, default=str))
    (out_dir / "README.md").write_text(_markdown(card))
    return card


def _markdown(card: dict[str, Any]) -> str:
    cfg = card["config"]
    lines = [
        f"# Adapter `{card['name']}` ({card['task']})",
        "",
        f"LoRA r={cfg['lora']['r']}, alpha={cfg['lora']['alpha']}, targets {', '.join(cfg['lora']['target_modules'])}"
        + (f", top {cfg['lora']['top_layers']} layers" if cfg["lora"].get("top_layers") else ""),
        f"trained {card['created_at']} on {card['data']['train_rows']} rows from {', '.join(card['data']['files'])}",
        f"(data sha256 {card['data']['sha256'][:16]}…) in {card['training'].get('seconds', 0) / 60:.1f} min,"
        f" {card['training'].get('steps', 0)} steps, stopped by {card['training'].get('stopped_by', '?')}.",
        "",
        "## Metrics",
        "",
        "| split | system | metric | value |",
        "|---|---|---|---|",
    ]
    for split, systems in card["metrics"].items():
        if not isinstance(systems, dict):
            continue
        for system, values in systems.items():
            if not isinstance(values, dict):
                continue
            for metric, value in values.items():
                if isinstance(value, float):
                    lines.append(f"| {split} | {system} | {metric} | {value:.4f} |")
    lines += ["", "## Serving", "", "```json", json.dumps(card["serving"], indent=2), "```", ""]
    return "\n".join(lines)
