"""Stacked mixed-adapter LoRA: the same numbers as PEFT and as each row alone, on every path the
router picks, while adapters come and go; adapters it cannot stack fall back to PEFT."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from core.config import Settings
from core.engine import LocalEngine
from core.errors import AdapterNotFoundError
from core.lora_stack import LoraRouter
from core.sampling import SamplingParams

pytestmark = pytest.mark.unit

ATOL = 1e-4
# the tiny Llama's Linears have no bias, so PEFT warns that a LoRA bias could not be merged: true, and
# not what these tests are about
LORA_BIAS_WARNING = "`lora_bias=True` was passed"
CHAT = [{"role": "user", "content": "Where is my order?"}]


def _build_adapter(base: Path, out: Path, *, seed: int, **config: Any) -> Path:
    """A LoRA adapter with random non-zero A and B (and B's bias, with ``lora_bias``)."""
    from peft import LoraConfig, get_peft_model
    from peft.utils.warning import PeftWarning
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        # with lora_bias PEFT warns twice here: the bias cannot be merged (see LORA_BIAS_WARNING), and
        # its save-time shape check takes the 1-D bias of lora_B for an unsharded ZeRO-3 weight
        warnings.filterwarnings("ignore", category=PeftWarning)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(task_type="CAUSAL_LM", **config))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_A" in name or "lora_B" in name:
                    param.normal_(0.0, 0.05)
        model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def extra_adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """gamma: another rank, scaling and set of target modules; dora: DoRA; biased: LoRA with a bias on B."""
    root = tmp_path_factory.mktemp("extra-adapters")
    return {
        "gamma": _build_adapter(
            tiny_model_dir, root / "gamma", seed=3, r=2, lora_alpha=7, target_modules=["q_proj", "v_proj", "up_proj"]
        ),
        "dora": _build_adapter(
            tiny_model_dir, root / "dora", seed=4, r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "o_proj"]
        ),
        "biased": _build_adapter(
            tiny_model_dir, root / "biased", seed=5, r=4, lora_alpha=4, lora_bias=True, target_modules=["k_proj"]
        ),
    }


def _ids(rows: int, seq: int = 9) -> torch.Tensor:
    return torch.randint(3, 400, (rows, seq), generator=torch.Generator().manual_seed(rows))  # [rows, seq]


def _router(engine: LocalEngine) -> LoraRouter:
    assert engine.lora is not None
    return engine.lora


@torch.inference_mode()
def _routed_logits(engine: LocalEngine, ids: torch.Tensor, names: list[str]) -> torch.Tensor:
    assert engine.registry is not None
    with _router(engine).rows(names) as adapters:
        return engine.registry.model(input_ids=ids, **adapters.kwargs).logits.float()  # [rows, seq, vocab]


@torch.inference_mode()
def _peft_logits(engine: LocalEngine, ids: torch.Tensor, names: list[str]) -> torch.Tensor:
    """PEFT's own mixed-batch forward, outside any router context."""
    assert engine.registry is not None
    registry = engine.registry
    return registry.model(input_ids=ids, adapter_names=[registry.resolve(n) for n in names]).logits.float()


@torch.inference_mode()
def _fresh_peft_logits(base: Path, adapter: Path, ids: torch.Tensor) -> torch.Tensor:
    """An independent reference: a new PeftModel holding only ``adapter``, its plain forward."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).eval()
    return model(input_ids=ids).logits.float()


def _assert_mixed_matches(engine: LocalEngine, names: list[str], path: str, *, alone: bool = True) -> None:
    """The routed mixed batch equals PEFT's adapter_names batch and each row run alone (both ways)."""
    ids = _ids(len(names))
    before = _router(engine).paths[path]
    mixed = _routed_logits(engine, ids, names)
    assert _router(engine).paths[path] == before + 1
    torch.testing.assert_close(mixed, _peft_logits(engine, ids, names), atol=ATOL, rtol=0)
    for i, name in enumerate(names if alone else []):
        row = ids[i : i + 1]
        torch.testing.assert_close(mixed[i : i + 1], _routed_logits(engine, row, [name]), atol=ATOL, rtol=0)
        torch.testing.assert_close(mixed[i : i + 1], _peft_logits(engine, row, [name]), atol=ATOL, rtol=0)


def test_mixed_batch_logits_match_peft_and_each_row_alone(tiny_engine: LocalEngine) -> None:
    names = ["alpha", "beta", "base", "alpha", "base"]
    _assert_mixed_matches(tiny_engine, names, "stacked")
    paths = _router(tiny_engine).paths
    assert paths["single"] >= 3 and paths["base"] >= 2  # the rows alone took the one-adapter paths
    ids = _ids(2)
    assert not torch.equal(
        _routed_logits(tiny_engine, ids, ["alpha"] * 2), _routed_logits(tiny_engine, ids, ["beta"] * 2)
    )


def test_mixed_greedy_generation_equals_one_at_a_time(tiny_engine: LocalEngine) -> None:
    """Rows of different lengths leave the batch early: the row mask must follow the KV cache."""
    jobs = [("alpha", 3), ("base", 9), ("beta", 5), ("alpha", 9), ("beta", 1)]
    solo = [
        tiny_engine.generate(CHAT, model=m, params=SamplingParams(max_new_tokens=n, ignore_eos=True)).token_ids
        for m, n in jobs
    ]
    stacked_before = _router(tiny_engine).paths["stacked"]
    futures = [
        tiny_engine.submit_generate(CHAT, model=m, params=SamplingParams(max_new_tokens=n, ignore_eos=True))
        for m, n in jobs
    ]
    assert [f.result().token_ids for f in futures] == solo
    assert ("generate", len(jobs)) in tiny_engine.recent_batches
    assert _router(tiny_engine).paths["stacked"] == stacked_before + 1


def test_stacks_follow_adapters_loaded_and_unloaded_at_run_time(
    tiny_engine: LocalEngine, tiny_adapters: dict[str, Path], extra_adapters: dict[str, Path]
) -> None:
    _assert_mixed_matches(tiny_engine, ["alpha", "beta", "base"], "stacked")
    tiny_engine.load_adapter("gamma", extra_adapters["gamma"])  # rank 2, scaling 3.5, three modules only
    _assert_mixed_matches(tiny_engine, ["gamma", "alpha", "base", "beta", "gamma"], "stacked")
    tiny_engine.unload_adapter("beta")
    _assert_mixed_matches(tiny_engine, ["alpha", "gamma", "base"], "stacked")
    with pytest.raises(AdapterNotFoundError), _router(tiny_engine).rows(["alpha", "beta"]):
        pass
    # the same name with other weights: the old stack must not survive
    tiny_engine.unload_adapter("alpha")
    tiny_engine.load_adapter("alpha", tiny_adapters["beta"])
    _assert_mixed_matches(tiny_engine, ["alpha", "gamma", "base"], "stacked")
    tiny_engine.unload_adapter("alpha")
    tiny_engine.unload_adapter("gamma")
    _assert_mixed_matches(tiny_engine, ["base", "base"], "base")  # no PEFT wrapper left at all


def test_dora_is_not_stacked_and_runs_apart_with_correct_results(
    tiny_engine: LocalEngine, tiny_model_dir: Path, extra_adapters: dict[str, Path]
) -> None:
    tiny_engine.load_adapter("dora", extra_adapters["dora"])
    router = _router(tiny_engine)
    assert router.groups(["alpha", "dora", "base", "dora"]) == [[0, 2], [1, 3]]
    with pytest.raises(ValueError, match="cannot share a batch"), router.rows(["alpha", "dora"]):
        pass

    ids = _ids(2)
    dora = _routed_logits(tiny_engine, ids, ["dora", "dora"])
    assert router.paths["peft_active"] == 1
    torch.testing.assert_close(dora, _fresh_peft_logits(tiny_model_dir, extra_adapters["dora"], ids), atol=ATOL, rtol=0)
    # DoRA loaded, but not in the batch: the others still stack, and DoRA's layers add nothing
    _assert_mixed_matches(tiny_engine, ["alpha", "beta", "base"], "stacked")

    jobs = ["dora", "alpha", "base", "dora", "beta"]
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    solo = [tiny_engine.generate(CHAT, model=m, params=params).token_ids for m in jobs]
    futures = [tiny_engine.submit_generate(CHAT, model=m, params=params) for m in jobs]
    assert [f.result().token_ids for f in futures] == solo
    beam = tiny_engine.generate(CHAT, model="dora", params=SamplingParams(max_new_tokens=4, num_beams=2))
    assert beam.completion_tokens >= 1


@pytest.mark.filterwarnings(f"ignore:{LORA_BIAS_WARNING}")
def test_an_adapter_that_cannot_be_stacked_falls_back_to_peft_adapter_names(
    tiny_engine: LocalEngine, tiny_model_dir: Path, extra_adapters: dict[str, Path]
) -> None:
    tiny_engine.load_adapter("biased", extra_adapters["biased"])  # lora_bias: PEFT can mix it, we cannot stack it
    _assert_mixed_matches(tiny_engine, ["biased", "alpha", "base"], "peft_names")
    ids = _ids(1)
    alone = _routed_logits(tiny_engine, ids, ["biased"])
    expected = _fresh_peft_logits(tiny_model_dir, extra_adapters["biased"], ids)
    torch.testing.assert_close(alone, expected, atol=ATOL, rtol=0)
    _assert_mixed_matches(tiny_engine, ["beta", "alpha", "base"], "stacked")


def test_stacking_works_over_an_int8_base(tiny_settings: Settings) -> None:
    """LoRA layers that wrap int8 dynamically quantised Linears: the hooks add to their float output.
    Rows alone differ from rows in a batch under int8 (one activation scale per batch), so the
    reference is PEFT's mixed batch only."""
    engine = LocalEngine(tiny_settings.model_copy(update={"quantization": "int8"}))
    engine.warm_up()
    try:
        _assert_mixed_matches(engine, ["alpha", "beta", "base", "beta"], "stacked", alone=False)
    finally:
        engine.close()


def test_state_is_restored_after_an_error_and_contexts_do_not_nest(tiny_engine: LocalEngine) -> None:
    assert tiny_engine.registry is not None
    ids, names = _ids(3), ["alpha", "beta", "base"]
    reference = _peft_logits(tiny_engine, ids, names)
    router = _router(tiny_engine)
    with pytest.raises(RuntimeError, match="boom"), router.rows(names):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="do not nest"), router.rows(["alpha"]), router.rows(["beta"]):
        pass
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in tiny_engine.registry.model.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and not any(m.disable_adapters for m in layers)
    torch.testing.assert_close(_peft_logits(tiny_engine, ids, names), reference, atol=0, rtol=0)
    torch.testing.assert_close(_routed_logits(tiny_engine, ids, names), reference, atol=ATOL, rtol=0)


def test_beam_search_through_the_router_equals_peft_generate(tiny_engine: LocalEngine) -> None:
    assert tiny_engine.registry is not None
    params = SamplingParams(max_new_tokens=6, num_beams=3)
    got = tiny_engine.generate(CHAT, model="beta", params=params)
    ids = torch.tensor([tiny_engine.tokenize(tiny_engine.render(CHAT))])
    eos = sorted(tiny_engine._eos_ids)
    with torch.inference_mode():
        out = tiny_engine.registry.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            num_beams=3,
            do_sample=False,
            max_new_tokens=6,
            early_stopping=True,
            eos_token_id=eos,
            pad_token_id=tiny_engine.tokenizer.pad_token_id,
            adapter_names=[tiny_engine.registry.resolve("beta")],  # PEFT's name for beta's slot
        )
    expected = out[0, ids.shape[1] :].tolist()
    cut = next((i for i, t in enumerate(expected) if t in eos), len(expected))
    assert got.token_ids == expected[:cut]
    assert _router(tiny_engine).paths["single"] >= 1
