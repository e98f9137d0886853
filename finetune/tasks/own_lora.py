"""What training on a tenant's own file needs in every domain: a LoRA trainer that can start from the
shared adapter of its domain, progress over several training phases, and an interval for a score.

Starting from the shared adapter (``data/adapters/<domain>``, when it was trained on the same base
model) rather than from a fresh LoRA: a few hundred rows then adjust an adapter that already knows
the task instead of teaching it from nothing. The gate compares the new version with what serves the
tenant now (the shared adapter, for a first version) on the tenant's held-out rows and on a public
guard set; a fresh LoRA trained on 200 headlines would lose to it on the guard for what it never saw.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.config import Settings
from finetune.config import TrainConfig
from finetune.trainer import LabelHead, LoraTrainer, load_base, seed_everything, use_bf16, wrap_lora

Progress = Callable[[int, int, float], None]


def shared_adapter(settings: Settings, name: str) -> Path | None:
    """The shared adapter folder ``name`` when it holds a LoRA for this base model, else None."""
    folder = settings.adapters_path / name
    config = folder / "adapter_config.json"
    if not config.is_file() or not any(
        (folder / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")
    ):
        return None
    try:
        base = str(json.loads(config.read_text()).get("base_model_name_or_path") or "")
    except (OSError, ValueError):
        return None
    return folder if Path(base).name == settings.base_model_path.name else None


def lora_of(folder: Path) -> dict[str, Any]:
    """The LoRA shape an adapter folder holds (what a warm start keeps)."""
    config = json.loads((folder / "adapter_config.json").read_text())
    keys = ("r", "lora_alpha", "lora_dropout", "target_modules", "layers_to_transform")
    return {k: sorted(config[k]) if k == "target_modules" else config.get(k) for k in keys}


class OwnLoraTrainer(LoraTrainer):
    """``LoraTrainer`` whose LoRA is loaded, trainable, from ``start_from`` when given (its shape
    then wins over ``config.lora``), else made fresh from ``config.lora``. The same attributes as
    ``LoraTrainer.__init__`` sets, which cannot be told to load a LoRA."""

    def __init__(
        self, config: TrainConfig, base_path: Path, device: torch.device, objective: str, start_from: Path | None
    ) -> None:
        if objective not in ("labels", "lm"):
            raise ValueError(f"objective must be 'labels' or 'lm', got {objective!r}")
        self.config, self.device, self.objective = config, device, objective
        seed_everything(config.seed)
        self.tokenizer, base = load_base(base_path, device)
        if start_from is None:
            self.model = wrap_lora(base, config)
        else:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(base, start_from, is_trainable=True)
        self.head = LabelHead(self.tokenizer, config.labels) if objective == "labels" else None
        self.pad_id = self.tokenizer.pad_token_id
        self.bf16 = use_bf16(config.precision, device)


def phased(progress: Progress | None, offset: int, total: int) -> Progress | None:
    """``progress`` for one phase of several: steps counted from ``offset`` out of ``total`` in all."""
    if progress is None:
        return None
    report = progress
    return lambda step, _phase_total, loss: report(offset + step, total, loss)


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``correct / n``."""
    if n == 0:
        return 0.0, 0.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def freeze_below(model: Any, start: int) -> int:
    """Stop the gradient of every trainable weight in a decoder layer below ``start`` (the LoRA of a
    warm start keeps its lower layers as they are); returns how many weights were frozen."""
    frozen = 0
    for name, p in model.named_parameters():
        if p.requires_grad and ".layers." in name and int(name.split(".layers.")[1].split(".")[0]) < start:
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def snapshot(model: Any) -> dict[str, torch.Tensor]:
    """A copy of the trainable weights."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def restore(model: Any, weights: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in weights:
                p.copy_(weights[name])


class _Captured(Exception):
    """Raised by the pre-hook once it has the input of the first trained layer: the rest is not run."""


class TopLayers:
    """The decoder's top ``k`` layers and final norm run on their own, fed the cached input of layer
    ``n - k``. When only those layers' LoRA trains (the layers below are the base model's, or a
    frozen start), their input never changes: it is computed once per text (``inputs``) and every
    step runs ``k`` layers instead of all of them. Llama-style decoders only; ``check`` compares
    the result with the whole model's, and the caller runs the whole model when it differs."""

    def __init__(self, model: Any, k: int) -> None:
        self.decoder = model.get_decoder()  # a PeftModel forwards this to the LoRA-wrapped base
        n = len(self.decoder.layers)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        k = min(k, n)
        self.start = n - k
        config = copy.deepcopy(self.decoder.config)
        config.num_hidden_layers, config.vocab_size, config.pad_token_id = k, 1, None  # no real embedding table
        top = type(self.decoder)(config)
        top.layers = torch.nn.ModuleList(list(self.decoder.layers[self.start :]))  # the same modules: one LoRA
        top.norm, top.rotary_emb = self.decoder.norm, self.decoder.rotary_emb
        self.top = top.to(next(self.decoder.parameters()).device)

    def freeze_below(self, model: Any) -> int:
        """Stop the gradient of every LoRA weight below the top layers; returns how many were frozen."""
        return freeze_below(model, self.start)

    @torch.no_grad()
    def inputs(
        self, ids: list[list[int]], pad_id: int, device: torch.device, batch_size: int = 32
    ) -> list[torch.Tensor]:
        """Per text, the input of layer ``n - k``: [len, hidden] (the layers below run once, here)."""
        seen: dict[str, torch.Tensor] = {}

        def capture(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            seen["h"] = args[0] if args else kwargs["hidden_states"]
            raise _Captured

        out: list[torch.Tensor] = []
        training = self.decoder.training
        self.decoder.eval()  # no LoRA dropout below: the cache is what serving computes
        handle = self.decoder.layers[self.start].register_forward_pre_hook(capture, with_kwargs=True)
        try:
            for start in range(0, len(ids), batch_size):
                part = ids[start : start + batch_size]
                batch, mask = right_padded(part, pad_id, device)
                with contextlib.suppress(_Captured):
                    self.decoder(input_ids=batch, attention_mask=mask, use_cache=False)
                out += [seen["h"][i, : len(p)].detach().clone() for i, p in enumerate(part)]
        finally:
            handle.remove()
            self.decoder.train(training)
        return out

    def pooled(self, cached: list[torch.Tensor]) -> torch.Tensor:
        """[b, hidden]: the mean over each text's tokens of the final normed hidden state."""
        width = max(c.shape[0] for c in cached)
        x = cached[0].new_zeros((len(cached), width, cached[0].shape[1]))  # [b, width, hidden], right-padded
        mask = torch.zeros((len(cached), width), dtype=torch.long, device=x.device)
        for i, c in enumerate(cached):
            x[i, : c.shape[0]] = c
            mask[i, : c.shape[0]] = 1
        hidden = self.top(inputs_embeds=x, attention_mask=mask, use_cache=False).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # [b, width, 1]
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def right_padded(ids: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """[b, width] ids and attention mask, right-padded: each text's tokens keep positions 0..len-1."""
    width = max(len(i) for i in ids)
    batch = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, i in enumerate(ids):
        batch[row, : len(i)] = torch.tensor(i)
        mask[row, : len(i)] = 1
    return batch.to(device), mask.to(device)
