"""Probe why LoRA training gives NaN losses on CUDA: the base model's logits on one unpadded and one
left-padded batch, in the trainer's load (bf16 weights on CUDA), with SDPA and with eager attention.

    python bench/probes/gpu_nan_probe.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from core.config import Settings  # noqa: E402
from finetune.trainer import Example, collate_left  # noqa: E402


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Settings().base_model_path
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:  # as the trainer does
        tok.pad_token = tok.eos_token
    texts = [
        "Shares fell sharply after the report.",
        "Profit rose.",
        "The bank kept its outlook unchanged for the year.",
    ]
    examples = [Example(prompt_ids=tok.encode(t), label=0) for t in texts]
    for attn in ("sdpa", "eager"):
        for dtype in (torch.bfloat16, torch.float32):
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn).to(device)
            model.train()
            batch = collate_left(examples, tok.pad_token_id, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.float32):
                padded = model(**batch, use_cache=False).logits.float()
                alone = model(input_ids=batch["input_ids"][2:3], use_cache=False).logits.float()
            loss = padded[:, -1].logsumexp(-1).sum()
            loss.backward()
            grad_nan = any(bool(torch.isnan(p.grad).any()) for p in model.parameters() if p.grad is not None)
            print(
                f"{attn} {dtype}: padded logits NaN rows {torch.isnan(padded[:, -1]).any(-1).tolist()}, "
                f"unpadded NaN {bool(torch.isnan(alone).any())}, last-pos diff (full row) "
                f"{float((padded[2, -1] - alone[0, -1]).abs().max()):.4f}, grads NaN {grad_nan}",
                flush=True,
            )
            del model


if __name__ == "__main__":
    main()
