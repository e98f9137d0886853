"""One hundred adapters on the real base model with room for twenty (issue 16): requests spread
over all of them, queued together through the engine's batcher, all succeed, and each result is
that adapter's result served alone: greedy tokens identical, label probabilities equal to float
tolerance. Sixty adapters sit in the adapters folder (registered at start, twenty made resident);
forty are tenant versions in the artefact store (``tenants/<tenant>/<name>/v1``), never registered
before their first request.

The adapters are random (rank 8 on q_proj and v_proj, A and B drawn from N(0, 0.02²), saved in
fp16): throughput and correctness do not depend on training. Each adapter gets one request, a short
greedy generation (even ones) or label scores (odd ones).
"""

from __future__ import annotations

import random
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from core.adapters import AdapterRegistry, version_dir
from core.config import Settings
from core.engine import LocalEngine
from core.sampling import SamplingParams

pytestmark = pytest.mark.integration

ADAPTERS = 100
IN_FOLDER = 60  # the rest are store versions
BUDGET = 20
PARAMS = SamplingParams(max_new_tokens=3, ignore_eos=True)
LABELS = ["negative", "neutral", "positive"]
PROMPTS = ["Shares fell.", "Profit rose sharply this year.", "Where is my parcel?", "Rate this movie."]


def _served(i: int) -> str:
    return f"a{i:03d}" if i < IN_FOLDER else f"t{i:03d}/adapter@v1"


def _kind(i: int) -> str:
    return "generate" if i % 2 == 0 else "labels"


@pytest.fixture(scope="module")
def adapters_dir(real_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hundred-adapters")
    # in a thread that exits: torch work on the test's own thread would give it an OpenMP team of
    # its own beside the engine's, and more threads than cores slow every op (bench/README.md)
    builder = threading.Thread(target=_build_adapters, args=(real_model_dir, root))
    builder.start()
    builder.join()
    assert (root / _served(IN_FOLDER - 1)).is_dir()
    assert version_dir(root, f"t{ADAPTERS - 1:03d}", "adapter", 1).is_dir()
    return root


def _build_adapters(base: Path, root: Path) -> None:
    """One PEFT model on the real base; its LoRA weights redrawn and written (fp16) once per adapter."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
        lora = [p for n, p in model.named_parameters() if "lora_A" in n or "lora_B" in n]
        generator = torch.Generator().manual_seed(16)
        for i in range(ADAPTERS):
            with torch.no_grad():
                for param in lora:
                    param.normal_(0.0, 0.02, generator=generator)
            folder = root / _served(i) if i < IN_FOLDER else version_dir(root, f"t{i:03d}", "adapter", 1)
            folder.mkdir(parents=True)
            state = {k: v.to(torch.float16).contiguous() for k, v in get_peft_model_state_dict(model).items()}
            save_file(state, str(folder / "adapter_model.safetensors"))
            model.peft_config["default"].save_pretrained(str(folder))


@pytest.fixture(scope="module")
def engine(real_model_dir: Path, adapters_dir: Path) -> Iterator[LocalEngine]:
    settings = Settings(
        environment="test",
        admin_key="test-admin-key",
        base_model=str(real_model_dir),
        adapters_dir=adapters_dir,
        adapter_max_resident=BUDGET,
        batch_wait_ms=30,
        engine_max_queue_s=3600,  # everything is queued at once on purpose
    )
    engine = LocalEngine(settings)
    engine.warm_up()
    yield engine
    engine.close()


def _registry(engine: LocalEngine) -> AdapterRegistry:
    assert engine.registry is not None
    return engine.registry


def test_a_hundred_adapters_with_room_for_twenty_each_match_served_alone(engine: LocalEngine) -> None:
    registry = _registry(engine)
    assert len(registry.names()) == IN_FOLDER and len(registry.resident_names()) == BUDGET
    assert all(engine.has_model(_served(i)) for i in range(ADAPTERS))

    # one request per adapter (a generation for even ones, label scores for odd ones), shuffled, all
    # queued at once, generations first (a micro-batch takes consecutive jobs of one kind)
    order = list(range(ADAPTERS))
    random.Random(16).shuffle(order)
    work = [(_kind(i), i) for i in order if _kind(i) == "generate"] + [
        (_kind(i), i) for i in order if _kind(i) == "labels"
    ]
    futures = []
    for kind, i in work:
        prompt = PROMPTS[i % len(PROMPTS)]
        if kind == "generate":
            futures.append(engine.submit_generate(prompt, model=_served(i), params=PARAMS))
        else:
            futures.append(engine.submit_score_labels([prompt], LABELS, model=_served(i)))
    results = [f.result(timeout=300) for f in futures]
    batched = {(kind, i): r for (kind, i), r in zip(work, results, strict=True)}
    loads_together = registry.cold_loads
    big = [rows for _, rows in engine.recent_batches if rows > BUDGET]
    assert big, engine.recent_batches  # micro-batches needing more adapters than the budget (split inside)
    assert len(registry.names()) == ADAPTERS and len(registry.resident_names()) <= BUDGET
    assert loads_together >= ADAPTERS - BUDGET and registry.evictions >= ADAPTERS - BUDGET
    assert registry.slot_reuses > 0  # one layout for all: cold loads past the budget reuse slots

    # each adapter alone: one request at a time (the budget keeps paging them in and out)
    for kind, i in work:
        prompt = PROMPTS[i % len(PROMPTS)]
        if kind == "generate":
            alone = engine.generate(prompt, model=_served(i), params=PARAMS)
            assert batched[kind, i].token_ids == alone.token_ids, _served(i)
        else:
            probs = engine.score_labels([prompt], LABELS, model=_served(i))[0]
            assert batched[kind, i][0] == pytest.approx(probs, abs=1e-4), _served(i)
    assert len(registry.resident_names()) <= BUDGET

    # the adapters are really different from one another and from the base
    for p, prompt in enumerate(PROMPTS):
        scores = [batched["labels", i][0]["negative"] for i in range(ADAPTERS) if _kind(i) == "labels" and i % 4 == p]
        base = engine.score_labels([prompt], LABELS)[0]["negative"]
        assert len({round(x, 6) for x in [*scores, base]}) == len(scores) + 1, (prompt, scores, base)
