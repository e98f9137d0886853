"""Optional int8 dynamic quantisation of the base model on CPU (``DOMAINLLM_QUANTIZATION=int8``)."""

from __future__ import annotations

import torch


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantisation of the Linear layers: int8 weights, activations quantised on the fly."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
