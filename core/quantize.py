"""Optional int8 dynamic quantisation of the base model on CPU (``DOMAINLLM_QUANTIZATION=int8``).

Every ``nn.Linear`` of the *base* model (attention and MLP projections, the LM head) becomes a
dynamically quantised Linear: int8 weights (one scale per output channel), activations quantised
on the fly per call, int8 GEMM (fbgemm/onednn), float output. Embeddings and norms stay float.

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


def int8_target_names(model: torch.nn.Module) -> list[str]:
    """Qualified names of the float ``nn.Linear`` modules to quantise: every one outside LoRA."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not any(part.startswith(LORA_MARKER) for part in name.split("."))
    ]


def quantize_int8(model: torch.nn.Module, *, inplace: bool = True) -> torch.nn.Module:
    """Dynamic int8 quantisation of the base Linear layers; LoRA layers stay float (see module doc).

    In place by default: the engine's adapter registry keeps references to both the PEFT wrapper
    and the base model inside it, and a deep copy would leave one of them pointing at the float
    model (and hold two copies of the weights in memory).
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = dict.fromkeys(int8_target_names(model), per_channel_dynamic_qconfig)
    with warnings.catch_warnings():
        # torch.ao.quantization's eager API is marked deprecated in favour of torchao (not a
        # dependency here); the kernels still ship with torch and are what we measure. Silence
        # exactly that notice, nothing else.
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        return quantize_dynamic(model, spec, dtype=torch.qint8, inplace=inplace)
