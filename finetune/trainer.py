"""PEFT LoRA training on CPU or CUDA, with two objectives:

- ``labels``: cross-entropy over the label set, where each label's logit is the pooled next-token
  logit of its first tokens at the answer position. It is exactly what ``Engine.score_labels``
  computes at serving time, so training optimises the served quantity (sentiment, recommend).
- ``lm``: next-token loss on the target tokens only, the prompt masked (support answers).

Progress bar, evaluation on a dev split (each epoch and optionally every N steps), early stopping,
a hard time budget that keeps the best checkpoint, and a fixed seed.

On a CPU with AVX512-BF16 (or AMX) the forward and backward run under bf16 autocast: a 576x1536
matmul over 1,184 tokens takes 6.9 ms in bf16 against 38.8 ms in fp32 on this machine's EPYC, and
a training step is about 2x faster. The LoRA weights and the optimiser stay in fp32.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.decoding import output_cache
from core.scoring import label_first_tokens
from finetune.config import TrainConfig

log = logging.getLogger(__name__)

IGNORE = -100


@dataclass
class Example:
    prompt_ids: list[int]
    label: int = -1  # labels objective: index into the label list
    target_ids: list[int] = field(default_factory=list)  # lm objective: tokens to learn
    # labels objective with a shared prefix: ``prompt_ids`` is a prefix (a user's history) and each
    # continuation (a target item and the answer template) has its own label. The prefix runs once
    # and its KV cache is repeated across the continuations, as Engine.score_continuations serves it.
    continuations: list[list[int]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


@dataclass
class TrainResult:
    best_metric: float
    best_step: int
    steps: int
    epochs_run: float
    seconds: float
    history: list[dict[str, float]]
    stopped_by: str  # "epochs", "early_stopping" or "time_budget"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def load_base(base_path: Path, device: torch.device) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model: Any = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
    model = model.to(device)
    return tokenizer, model


def wrap_lora(model: Any, config: TrainConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    spec = config.lora
    layers = None
    if spec.top_layers is not None:
        n = model.config.num_hidden_layers
        layers = list(range(max(0, n - spec.top_layers), n))
    lora_config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora_config)


def use_bf16(precision: str, device: torch.device) -> bool:
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return True
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def length_bucketed_batches(examples: list[Example], batch_size: int, rng: random.Random) -> list[list[Example]]:
    """Shuffle, then sort by length within windows of 50 batches: far less padding, still random."""
    order = examples[:]
    rng.shuffle(order)
    window = batch_size * 50
    batches: list[list[Example]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda e: len(e.prompt_ids) + len(e.target_ids))
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def collate_left(batch: list[Example], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Left-padded prompts with position ids from the mask, as the engine serves them."""
    width = max(len(e.prompt_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # [b, width]
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        ids[i, width - len(e.prompt_ids) :] = torch.tensor(e.prompt_ids)
        mask[i, width - len(e.prompt_ids) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": positions.to(device)}


def collate_lm(batch: list[Example], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded prompt + target; labels are -100 except on the target tokens."""
    seqs = [e.prompt_ids + e.target_ids for e in batch]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # [b, width]
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for i, (e, s) in enumerate(zip(batch, seqs, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, len(e.prompt_ids) : len(s)] = torch.tensor(e.target_ids)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


MIN_SHARED_PREFIX = 8  # tokens; below this one more forward call costs more than it saves


def common_prefix_example(batch: list[Example]) -> Example | None:
    """The batch as one shared-prefix example: the token prefix every prompt starts with, and each
    prompt's rest as a continuation (never empty: the answer position stays in it). None when the
    common prefix is shorter than MIN_SHARED_PREFIX tokens."""
    prompts = [e.prompt_ids for e in batch]
    shortest = min(len(p) for p in prompts)
    agree = next((i for i, column in enumerate(zip(*prompts, strict=False)) if len(set(column)) > 1), shortest)
    shared = min(agree, shortest - 1)
    if shared < MIN_SHARED_PREFIX:
        return None
    return Example(
        prompt_ids=prompts[0][:shared],
        continuations=[e.prompt_ids[shared:] for e in batch],
        labels=[e.label for e in batch],
    )


class LabelHead:
    """Pooled first-token logits of each label at the last position -> [b, n_labels]."""

    def __init__(self, tokenizer: Any, labels: list[str]) -> None:
        tokens = label_first_tokens(tokenizer, labels)
        if tokens is None:
            raise ValueError(f"labels {labels} share first tokens; the labels objective needs distinct ones")
        self.tokens = tokens

    def __call__(self, last_logits: torch.Tensor) -> torch.Tensor:
        logprobs = torch.log_softmax(last_logits.float(), dim=-1)  # [b, vocab]
        return torch.stack([torch.logsumexp(logprobs[:, t], dim=-1) for t in self.tokens], dim=-1)  # [b, labels]


class LoraTrainer:
    def __init__(self, config: TrainConfig, base_path: Path, device: torch.device, objective: str) -> None:
        if objective not in ("labels", "lm"):
            raise ValueError(f"objective must be 'labels' or 'lm', got {objective!r}")
        self.config = config
        self.device = device
        self.objective = objective
        seed_everything(config.seed)
        self.tokenizer, base = load_base(base_path, device)
        self.model = wrap_lora(base, config)
        self.head = LabelHead(self.tokenizer, config.labels) if objective == "labels" else None
        self.pad_id = self.tokenizer.pad_token_id
        self.bf16 = use_bf16(config.precision, device)

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def _loss(self, batch: list[Example]) -> torch.Tensor:
        with self.autocast():
            return self._loss_fp(batch)

    def _loss_fp(self, batch: list[Example]) -> torch.Tensor:
        if self.head is None:
            inputs = collate_lm(batch, self.pad_id, self.device)
            return self.model(**inputs, use_cache=False).loss
        if batch[0].continuations:
            sums = [self._shared_prefix_loss(e) for e in batch]
            return torch.stack(sums).sum() / sum(len(e.continuations) for e in batch)
        shared = common_prefix_example(batch) if self.config.share_prompt_prefix else None
        if shared is not None:
            return self._shared_prefix_loss(shared) / len(batch)
        inputs = collate_left(batch, self.pad_id, self.device)
        out = self.model(**inputs, logits_to_keep=1, use_cache=False)
        scores = self.head(out.logits[:, -1, :])  # [b, labels]
        target = torch.tensor([e.label for e in batch], device=self.device)
        return torch.nn.functional.cross_entropy(scores, target)

    def _shared_prefix_loss(self, example: Example) -> torch.Tensor:
        """Summed label cross-entropy of every continuation after one prefix pass (gradients flow
        back through the repeated KV cache into the prefix)."""
        head = self.head
        assert head is not None
        device, n, plen = self.device, len(example.continuations), len(example.prompt_ids)
        out = self.model(input_ids=torch.tensor([example.prompt_ids], device=device), use_cache=True, logits_to_keep=1)
        cache = output_cache(out)
        cache.batch_repeat_interleave(n)
        lengths = torch.tensor([len(c) for c in example.continuations], device=device)
        width = int(lengths.max())
        ids = torch.full((n, width), self.pad_id, dtype=torch.long, device=device)  # [n, L], right-padded
        for i, c in enumerate(example.continuations):
            ids[i, : len(c)] = torch.tensor(c, device=device)
        cont_mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()  # [n, L]
        mask = torch.cat([torch.ones((n, plen), dtype=torch.long, device=device), cont_mask], dim=1)
        positions = torch.arange(plen, plen + width, device=device).expand(n, width)
        # the LM head (576 x 49k) runs only at the positions that end a continuation, not at every one
        ends, row_end = torch.unique(lengths - 1, return_inverse=True)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=ends,
        )
        last = out.logits[torch.arange(n, device=device), row_end]  # [n, vocab]: after each continuation
        target = torch.tensor(example.labels, device=device)
        return torch.nn.functional.cross_entropy(head(last), target, reduction="sum")

    @torch.inference_mode()
    def predict_labels(self, examples: list[Example], batch_size: int = 32) -> torch.Tensor:
        """[n, labels] probabilities."""
        head = self.head
        if head is None:
            raise ValueError("predict_labels needs the labels objective")
        self.model.eval()
        out = []
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt_ids))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            inputs = collate_left([examples[i] for i in idx], self.pad_id, self.device)
            with self.autocast():
                logits = self.model(**inputs, logits_to_keep=1, use_cache=False).logits[:, -1, :]
            out.append((idx, torch.softmax(head(logits), dim=-1).cpu()))
        probs = torch.zeros((len(examples), len(head.tokens)))
        for idx, p in out:
            probs[idx] = p
        return probs

    @torch.inference_mode()
    def dev_loss(self, examples: list[Example], batch_size: int = 16) -> float:
        self.model.eval()
        total, n = 0.0, 0
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            total += float(self._loss(batch)) * len(batch)
            n += len(batch)
        return total / max(n, 1)

    def fit(
        self,
        train: list[Example],
        dev_metric: Callable[[], float],
        on_progress: Callable[[int, int, float], None] | None = None,
    ) -> TrainResult:
        """Train; ``dev_metric`` is higher-is-better. The best LoRA weights are restored at the end."""
        cfg = self.config
        rng = random.Random(cfg.seed)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
        total_steps = steps_per_epoch * cfg.epochs
        warmup = max(1, int(total_steps * cfg.warmup_ratio))

        def lr_at(step: int) -> float:
            """Linear warmup, then linear decay to zero at the last step or at the time budget,
            whichever comes first: a run cut by the budget still ends on a low learning rate."""
            if step < warmup:
                return (step + 1) / warmup
            by_steps = (total_steps - step) / max(1, total_steps - warmup)
            by_time = 1.0 - (time.monotonic() - started) / budget
            return max(0.0, min(by_steps, by_time))

        started = time.monotonic()
        budget = cfg.max_minutes * 60
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
        best, best_step, best_state = -math.inf, 0, None
        history: list[dict[str, float]] = []
        bad_evals, step, stopped_by = 0, 0, "epochs"
        running = 0.0

        def evaluate() -> bool:
            nonlocal best, best_step, best_state, bad_evals
            metric = dev_metric()
            history.append({"step": step, "epoch": step / steps_per_epoch, "dev": metric, "train_loss": running})
            log.info("step %d: dev %.4f (train loss %.4f)", step, metric, running)
            if metric > best:
                best, best_step, bad_evals = metric, step, 0
                best_state = {k: v.detach().clone() for k, v in self.model.named_parameters() if v.requires_grad}
                return False
            bad_evals += 1
            return bad_evals > cfg.patience

        for _epoch in range(cfg.epochs):
            for batch in length_bucketed_batches(train, cfg.batch_size, rng):
                self.model.train()
                loss = self._loss(batch)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                value = float(loss.detach())
                running = 0.9 * running + 0.1 * value if step > 1 else value
                if on_progress:
                    on_progress(step, total_steps, running)
                if step % 20 == 0:
                    log.info(
                        "step %d/%d: loss %.4f, %.2f s/step",
                        step,
                        total_steps,
                        running,
                        (time.monotonic() - started) / step,
                    )
                if time.monotonic() - started > budget:
                    stopped_by = "time_budget"
                    break
                if cfg.eval_every_steps and step % cfg.eval_every_steps == 0 and evaluate():
                    stopped_by = "early_stopping"
                    break
            if stopped_by != "epochs":
                break
            just_evaluated = bool(history) and history[-1]["step"] == step  # eval_every_steps hit the epoch end
            if not just_evaluated and evaluate():
                stopped_by = "early_stopping"
                break
        if not history or history[-1]["step"] != step:
            evaluate()
        if best_state is not None:
            with torch.no_grad():
                for name, p in self.model.named_parameters():
                    if name in best_state:
                        p.copy_(best_state[name])
        self.model.eval()
        return TrainResult(
            best_metric=best,
            best_step=best_step,
            steps=step,
            epochs_run=step / steps_per_epoch,
            seconds=time.monotonic() - started,
            history=history,
            stopped_by=stopped_by,
        )

    def save(self, out_dir: Path) -> int:
        """Save the adapter in 16-bit (a few MB) and return its size in bytes."""
        from safetensors.torch import load_file, save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out_dir)
        weights = out_dir / "adapter_model.safetensors"
        tensors = {k: v.to(torch.float16).contiguous() for k, v in load_file(weights).items()}
        save_file(tensors, weights, metadata={"format": "pt"})
        return weights.stat().st_size
