"""int8 dynamic quantisation: the engine loads, generates and scores with it, with and without
adapters, and its label probabilities stay close to fp32."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear

from core.config import Settings
from core.engine import LocalEngine
from core.quantize import int8_target_names, quantize_int8
from core.sampling import SamplingParams

pytestmark = pytest.mark.unit

LABELS = ["negative", "neutral", "positive"]
TEXTS = ["The market fell sharply after the earnings report.", "Shares of the bank rose on merger news."]


def _engine(settings: Settings, **update: object) -> Iterator[LocalEngine]:
    engine = LocalEngine(settings.model_copy(update=update))
    engine.warm_up()
    yield engine
    engine.close()


@pytest.fixture
def fp32_engine(tiny_settings: Settings) -> Iterator[LocalEngine]:
    yield from _engine(tiny_settings)


@pytest.fixture
def int8_engine(tiny_settings: Settings) -> Iterator[LocalEngine]:
    yield from _engine(tiny_settings, quantization="int8")


@pytest.fixture
def int8_base_engine(tiny_settings: Settings) -> Iterator[LocalEngine]:
    yield from _engine(tiny_settings, quantization="int8", load_adapters_on_start=False)


def _modules(engine: LocalEngine) -> dict[str, torch.nn.Module]:
    assert engine.registry is not None
    return dict(engine.registry.model.named_modules())


def test_quantize_int8_is_in_place_and_silent(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    targets = int8_target_names(model)
    assert "lm_head" in targets
    assert not any(name.endswith("down_proj") for name in targets)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the deprecation notices of torch.ao are handled inside
        quantized = quantize_int8(model)
    assert quantized is model
    modules = dict(model.named_modules())
    assert isinstance(modules["model.layers.0.self_attn.q_proj"], QuantizedLinear)
    assert type(modules["model.layers.0.mlp.down_proj"]) is torch.nn.Linear


def test_int8_engine_without_adapters_generates_and_scores(
    int8_base_engine: LocalEngine, fp32_engine: LocalEngine
) -> None:
    modules = _modules(int8_base_engine)
    assert isinstance(modules["lm_head"], QuantizedLinear)

    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    completion = int8_base_engine.generate([{"role": "user", "content": "Where is my order?"}], params=params)
    assert completion.completion_tokens == 6

    int8_probs = int8_base_engine.score_labels(TEXTS, LABELS)
    fp32_probs = fp32_engine.score_labels(TEXTS, LABELS)
    for q, f in zip(int8_probs, fp32_probs, strict=True):
        assert sum(q.values()) == pytest.approx(1.0, abs=1e-5)
        assert max(abs(q[k] - f[k]) for k in LABELS) < 0.01


def test_int8_engine_with_adapters_keeps_lora_float(int8_engine: LocalEngine, fp32_engine: LocalEngine) -> None:
    modules = _modules(int8_engine)
    assert int8_engine.registry is not None
    slot = int8_engine.registry.info("alpha").key  # PEFT's name for alpha's slot
    lora_a = [m for name, m in modules.items() if f".lora_A.{slot}" in name]
    base_layers = [m for name, m in modules.items() if name.endswith("q_proj.base_layer")]
    assert lora_a and all(type(m) is torch.nn.Linear for m in lora_a)
    assert base_layers and all(isinstance(m, QuantizedLinear) for m in base_layers)

    params = SamplingParams(max_new_tokens=5, ignore_eos=True)
    futures = [
        int8_engine.submit_generate("The market fell", model=m, params=params) for m in ("alpha", "beta", "base")
    ]
    assert [f.result().completion_tokens for f in futures] == [5, 5, 5]

    for model in ("alpha", "beta", "base"):
        q = int8_engine.score_labels(TEXTS, LABELS, model=model)
        f = fp32_engine.score_labels(TEXTS, LABELS, model=model)
        for qp, fp in zip(q, f, strict=True):
            assert max(abs(qp[k] - fp[k]) for k in LABELS) < 0.01, model
    # the adapters still act on the quantised base: their label probabilities differ from the base's
    alpha = int8_engine.score_labels(TEXTS, LABELS, model="alpha")
    base = int8_engine.score_labels(TEXTS, LABELS, model="base")
    assert any(abs(a[k] - b[k]) > 1e-3 for a, b in zip(alpha, base, strict=True) for k in LABELS)
