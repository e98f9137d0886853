"""Optional int8 dynamic quantisation of the base model on CPU (``DOMAINLLM_QUANTIZATION=int8``).

The base model's ``nn.Linear`` layers (attention projections, MLP gate/up, the LM head) become
dynamically quantised Linears: int8 weights (one scale per output channel), activations quantised
on the fly per call with one scale per tensor, int8 GEMM (x86: fbgemm/onednn), float output.
Embeddings and norms stay float.

``down_proj`` stays float by default. Its input (SiLU(gate) * up) carries the "massive
activations" of Llama-family models: on SmolLM2-135M a few tokens reach |x| ~ 3000 in layers 11 and
28 while the mean is ~0.2, so one per-tensor int8 scale leaves the other values a handful of
levels. Measured on 64 Financial PhraseBank sentences: fp32 perplexity 144; every Linear int8: 372;
all but down_proj: 171, still 2.3x faster per decode step at batch 1 (bench/README.md).

Caveat: one activation scale per tensor means a row's result depends on the rows batched with it
(and their padding). On 32 FPB texts with SmolLM2, zero-shot labels scored alone vs inside a batch
of 32 agree on only ~75% (max |Δp| 0.36), where fp32 gives identical numbers. Per-token activation
scales (torchao's ``Int8DynamicActivationInt8WeightConfig``) or weight-only int8 would not have this.

LoRA's own ``lora_A``/``lora_B`` Linears are left in float, on purpose:

* PEFT's LoRA forward reads ``lora_A[name].weight.dtype``; on a quantised Linear ``weight`` is a
  method, so converting them breaks every forward with an adapter.
* they are tiny (rank r, about 1-2 % of the base's weights): int8 saves no memory worth having, and
  the per-call activation quantisation costs more than their float matmul saves.
* an adapter is a small correction on top of the base output; rounding it to 8 bits would spend
  most of the precision the fine-tuning bought.

Adapters must therefore be loaded *before* quantising (the engine quantises after loading the
adapters found at start): PEFT cannot inject LoRA layers into an already quantised Linear.
"""

from __future__ import annotations

import warnings

import torch

LORA_MARKER = "lora_"
KEEP_FLOAT = ("down_proj",)


def int8_target_names(model: torch.nn.Module, keep_float: tuple[str, ...] = KEEP_FLOAT) -> list[str]:
    """Qualified names of the ``nn.Linear`` modules to quantise: every one outside LoRA whose name
    has no part in ``keep_float`` (a PEFT-wrapped ``...down_proj.base_layer`` counts as down_proj)."""
    names = []
    for name, module in model.named_modules():
        parts = name.split(".")
        if not isinstance(module, torch.nn.Linear) or any(p.startswith(LORA_MARKER) for p in parts):
            continue
        if not any(p in keep_float for p in parts):
            names.append(name)
    return names


def quantize_int8(
    model: torch.nn.Module, *, keep_float: tuple[str, ...] = KEEP_FLOAT, inplace: bool = True
) -> torch.nn.Module:
    """Dynamic int8 quantisation of the base Linear layers; LoRA layers and ``keep_float`` modules
    stay float (see the module docstring for why).

    In place by default: the engine's adapter registry keeps references to both the PEFT wrapper
    and the base model inside it, and a deep copy would leave one of them pointing at the float
    model (and hold two copies of the weights in memory).
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = dict.fromkeys(int8_target_names(model, keep_float), per_channel_dynamic_qconfig)
    with warnings.catch_warnings():
        # torch.ao.quantization's eager API (and the quantized-tensor constructors it packs the
        # weights with) are marked deprecated in favour of torchao, which is not a dependency here;
        # the int8 kernels still ship with torch and are what we measure. Silence exactly those two
        # notices, nothing else.
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings(
            "ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other", category=UserWarning
        )
        return quantize_dynamic(model, spec, dtype=torch.qint8, inplace=inplace)
