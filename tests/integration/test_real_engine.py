"""The engine on the real SmolLM2-135M-Instruct: sensible answers, two adapters on one base with
memory measured, and mixed-adapter batches equal to solo runs."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch

from core.config import Settings
from core.engine import LocalEngine
from core.sampling import SamplingParams
from core.tiny import build_random_lora

pytestmark = pytest.mark.integration


def _param_bytes(model: torch.nn.Module) -> int:
    """Bytes of distinct parameter storage (tied weights counted once)."""
    seen: dict[int, int] = {}
    for p in model.parameters():
        seen[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
    return sum(seen.values())


@pytest.fixture(scope="module")
def real_adapters(real_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("real-adapters")
    return {
        "support": build_random_lora(real_model_dir, root / "support", rank=8, seed=1, scale=0.02),
        "sentiment": build_random_lora(real_model_dir, root / "sentiment", rank=16, seed=2, scale=0.02),
    }


@pytest.fixture(scope="module")
def real_engine(real_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEngine]:
    settings = Settings(
        environment="test",
        admin_key="test-admin-key",
        base_model=str(real_model_dir),
        adapters_dir=tmp_path_factory.mktemp("no-adapters"),
        batch_wait_ms=30,
    )
    engine = LocalEngine(settings)
    engine.warm_up()
    yield engine
    engine.close()


def test_answers_a_simple_question_sensibly(real_engine: LocalEngine) -> None:
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    deltas: list[str] = []
    out = real_engine.generate(chat, params=SamplingParams(max_new_tokens=32), on_delta=deltas.append)
    assert "Paris" in out.text
    assert out.finish_reason == "stop"
    assert "".join(deltas) == out.text


def test_two_adapters_share_one_base_and_cost_only_their_own_weights(
    real_engine: LocalEngine, real_adapters: dict[str, Path]
) -> None:
    registry = real_engine.registry
    base_ptrs = {n: p.data_ptr() for n, p in registry.base_model.named_parameters()}
    base_bytes = _param_bytes(registry.model)
    gc.collect()
    rss_before = psutil.Process().memory_info().rss

    for name, path in real_adapters.items():
        real_engine.load_adapter(name, path)
    gc.collect()
    rss_after = psutil.Process().memory_info().rss
    adapter_bytes = sum(registry.info(n).size_bytes for n in real_adapters)
    total_bytes = _param_bytes(registry.model)

    # parameters grew by exactly the two adapters' weights: the base is not copied
    assert total_bytes - base_bytes == adapter_bytes
    assert 0 < adapter_bytes < base_bytes / 10
    # the base weights are the very same tensors, not reloaded or cloned
    after = {n.replace(".base_layer", ""): p.data_ptr() for n, p in registry.model.named_parameters()}
    for name, ptr in base_ptrs.items():
        assert after[f"base_model.model.{name}"] == ptr, name
    # the process grew by far less than a second base model (rss is noisy; a copy would be +500 MB)
    assert rss_after - rss_before < base_bytes / 4, (rss_after - rss_before, base_bytes)

    chat = [{"role": "user", "content": "Say hello."}]
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    outs = {m: real_engine.generate(chat, model=m, params=params).token_ids for m in ("base", *real_adapters)}
    assert outs["support"] != outs["base"] and outs["sentiment"] != outs["base"]


def test_mixed_adapter_batch_equals_solo_on_the_real_model(
    real_engine: LocalEngine, real_adapters: dict[str, Path]
) -> None:
    for name, path in real_adapters.items():
        if not real_engine.has_model(name):
            real_engine.load_adapter(name, path)
    requests = [
        ("base", "What is the capital of France?"),
        ("support", "My parcel never arrived and the tracking page has not changed for a week. What can I do?"),
        ("sentiment", "Write one sentence about the stock market."),
        ("support", "How do I reset my password?"),
    ]
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    solo = [real_engine.generate([{"role": "user", "content": q}], model=m, params=params) for m, q in requests]
    before = len(real_engine.recent_batches)
    futures = [
        real_engine.submit_generate([{"role": "user", "content": q}], model=m, params=params) for m, q in requests
    ]
    batched = [f.result() for f in futures]
    assert ("generate", len(requests)) in real_engine.recent_batches[before:]
    for s, b in zip(solo, batched, strict=True):
        assert b.token_ids == s.token_ids

    labels = ["negative", "neutral", "positive"]
    texts = [q for _, q in requests]
    solo_probs = [real_engine.score_labels([t], labels, model=m)[0] for (m, _), t in zip(requests, texts, strict=True)]
    futures = [real_engine.submit_score_labels([t], labels, model=m) for (m, _), t in zip(requests, texts, strict=True)]
    for s, f in zip(solo_probs, futures, strict=True):
        b = f.result()[0]
        for label in labels:
            assert b[label] == pytest.approx(s[label], abs=1e-4)
