"""Many adapters on one engine: lazy registration, LRU paging within a resident budget, served
names (``tenant/name@vN``) mapped to PEFT keys, store versions found on first use, batches split
when they need more adapters than the budget, and changes to the set while requests are queued."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from prometheus_client import REGISTRY

from core.adapters import TENANTS_DIR, AdapterRegistry, slot_layout, version_dir
from core.config import Settings
from core.engine import LocalEngine
from core.errors import AdapterLoadError, AdapterNotFoundError, ConflictError, InvalidRequestError
from core.sampling import SamplingParams
from core.tiny import build_random_lora

pytestmark = pytest.mark.unit

CHAT = [{"role": "user", "content": "Where is my order?"}]
PARAMS = SamplingParams(max_new_tokens=6, ignore_eos=True)
LABELS = ["negative", "neutral", "positive"]
NAMES = ["alpha", "beta", "delta", "epsilon", "gamma"]  # epsilon: alpha's layout (rank 4, all projections)
VERSION = "acme/support@v1"  # in the store: a copy of gamma


@pytest.fixture(scope="module")
def many_adapters(
    tiny_model_dir: Path, tiny_adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """An adapters folder with alpha..epsilon and a store version ``acme/support@v1`` (gamma's weights, a card)."""
    root = tmp_path_factory.mktemp("many-adapters")
    for name in ("alpha", "beta"):
        shutil.copytree(tiny_adapters[name], root / name)
    build_random_lora(tiny_model_dir, root / "gamma", rank=2, seed=3, target_modules=("q_proj", "v_proj"))
    build_random_lora(tiny_model_dir, root / "delta", rank=6, seed=4)
    build_random_lora(tiny_model_dir, root / "epsilon", rank=4, seed=5)
    stored = version_dir(root, "acme", "support", 1)
    shutil.copytree(root / "gamma", stored)
    card = {"serving": {"labels": LABELS, "instruction": "Rate it."}}
    (stored / "adapter_card.json").write_text(json.dumps(card))
    (stored / "intent_head.json").write_text("{}")
    return root


def _engine(settings: Settings, folder: Path, budget: int, **update: object) -> LocalEngine:
    engine = LocalEngine(settings.model_copy(update={"adapters_dir": folder, "adapter_max_resident": budget, **update}))
    engine.warm_up()
    return engine


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path, many_adapters: Path) -> Iterator[dict[str, object]]:
    """Every adapter resident (no budget), each request alone: the numbers paging must reproduce."""
    settings = Settings(environment="test", admin_key="test-admin-key", base_model=str(tiny_model_dir))
    engine = _engine(settings, many_adapters, 0)
    try:
        models = ["base", *NAMES]
        yield {
            "tokens": {m: engine.generate(CHAT, model=m, params=PARAMS).token_ids for m in models},
            "labels": {m: engine.score_labels(["Shares fell."], LABELS, model=m)[0] for m in models},
        }
    finally:
        engine.close()


@pytest.fixture
def paged(tiny_settings: Settings, many_adapters: Path) -> Iterator[LocalEngine]:
    """Five adapters in the folder, room for two."""
    engine = _engine(tiny_settings, many_adapters, 2)
    yield engine
    engine.close()


def _registry(engine: LocalEngine) -> AdapterRegistry:
    assert engine.registry is not None
    return engine.registry


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_slot_layout_tells_which_adapters_can_share_a_slot(many_adapters: Path) -> None:
    def layout(name: str, **change: object) -> str | None:
        cfg = json.loads((many_adapters / name / "adapter_config.json").read_text())
        return slot_layout({**cfg, **change})

    assert layout("alpha") == layout("epsilon") == layout("alpha", base_model_name_or_path="/elsewhere")
    assert layout("alpha") == layout(
        "alpha",
        target_modules=list(
            reversed(json.loads((many_adapters / "alpha" / "adapter_config.json").read_text())["target_modules"])
        ),
    )
    assert layout("alpha") != layout("beta")  # rank 8
    assert layout("alpha") != layout("alpha", lora_alpha=3)
    assert layout("alpha", use_dora=True) is None


def test_discovery_registers_all_and_makes_resident_up_to_the_budget(paged: LocalEngine) -> None:
    registry = _registry(paged)
    models = {m["id"]: m for m in paged.list_models()}
    assert list(models) == ["base", *NAMES]  # the store version is not listed before its first use
    assert registry.resident_names() == ["alpha", "beta"]
    assert [models[n]["resident"] for n in NAMES] == [True, True, False, False, False]
    # PEFT sees slot names only; the served names stay outside
    keys = [registry.info(n).key for n in NAMES]
    assert keys[:2] == ["slot0", "slot1"] and keys[2:] == ["", "", ""]
    assert registry.info("gamma").size_bytes > 0  # estimated from the weights header until loaded
    assert paged.has_model("gamma") and paged.has_model(VERSION) and not paged.has_model("acme/support@v2")


def test_lru_eviction_and_cold_loads_give_the_numbers_of_each_adapter_alone(
    paged: LocalEngine, reference: dict[str, dict[str, object]]
) -> None:
    registry = _registry(paged)
    loads, evictions = registry.cold_loads, registry.evictions
    cold_before = _metric("domainllm_adapter_cold_loads_total", adapter="gamma")
    for model in ["gamma", "alpha", "delta", "gamma", "beta", "delta", "base", "alpha"]:
        assert paged.generate(CHAT, model=model, params=PARAMS).token_ids == reference["tokens"][model], model
        if model != "base":
            assert registry.resident_names()[-1] == model  # the most recently used
        assert len(registry.resident_names()) <= 2
    # resident at start, least recent first: alpha, beta. Each request then loads its adapter and
    # evicts the least recently used one: gamma (alpha out), alpha (beta), delta (gamma), gamma
    # (alpha), beta (delta), delta (gamma), base (nothing), alpha (beta)
    assert registry.cold_loads - loads == 7
    assert registry.evictions - evictions == 7
    assert registry.resident_names() == ["delta", "alpha"]
    assert registry.names() == NAMES  # evicted adapters stay registered
    assert _metric("domainllm_adapter_cold_loads_total", adapter="gamma") == cold_before + 2
    assert _metric("domainllm_adapters_resident") == 2
    assert _metric("domainllm_adapter_cold_load_seconds_count") >= 7
    for model in ("beta", "gamma"):
        got = paged.score_labels(["Shares fell."], LABELS, model=model)[0]
        assert got == pytest.approx(reference["labels"][model], abs=1e-5)


def test_a_compatible_adapter_takes_the_evicted_ones_slot_in_place(
    paged: LocalEngine, reference: dict[str, dict[str, object]]
) -> None:
    """epsilon has alpha's layout: loading it over alpha is a copy into alpha's slot, not a PEFT load."""
    registry = _registry(paged)
    for model in ("alpha", "beta"):
        paged.generate(CHAT, model=model, params=PARAMS)
    slot, reuses = registry.info("alpha").key, registry.slot_reuses
    assert paged.score_labels(["Shares fell."], LABELS, model="epsilon")[0] == pytest.approx(
        reference["labels"]["epsilon"], abs=1e-5
    )
    assert registry.slot_reuses == reuses + 1
    assert registry.info("epsilon").key == slot and registry.info("alpha").key == ""
    assert registry.resident_names() == ["beta", "epsilon"]
    # alpha comes back: the least recently used (beta) has another layout, so PEFT loads alpha anew
    futures = [paged.submit_score_labels(["Shares fell."], LABELS, model=m) for m in ("alpha", "epsilon", "base")]
    for model, future in zip(("alpha", "epsilon", "base"), futures, strict=True):
        assert future.result()[0] == pytest.approx(reference["labels"][model], abs=1e-5)
    assert registry.slot_reuses == reuses + 1 and registry.info("alpha").key not in ("", slot)
    assert paged.generate(CHAT, model="epsilon", params=PARAMS).token_ids == reference["tokens"]["epsilon"]


def test_a_batch_needing_more_adapters_than_the_budget_runs_in_groups(
    paged: LocalEngine, reference: dict[str, dict[str, object]]
) -> None:
    registry = _registry(paged)
    models = ["delta", "alpha", "base", "gamma", "beta", "delta", "gamma", "base"]
    paged.score_labels(["Shares fell."], LABELS)  # a marker in recent_batches: ("labels", 1)
    futures = [paged.submit_generate(CHAT, model=m, params=PARAMS) for m in models]
    assert [f.result().token_ids for f in futures] == [reference["tokens"][m] for m in models]
    recent = paged.recent_batches
    mine = recent[len(recent) - recent[::-1].index(("labels", 1)) :]  # the generations after the marker
    # a micro-batch took at least 4 of them (any 4 in a row name 3 adapters, past the budget of 2) and
    # was split inside (one batch of all 8 on a quiet machine; under load the batcher may start earlier)
    assert any(kind == "generate" and rows >= 4 for kind, rows in mine), recent
    assert len(registry.resident_names()) <= 2
    chunks = [paged.submit_score_labels(["Shares fell."], LABELS, model=m) for m in models]
    for model, future in zip(models, chunks, strict=True):
        assert future.result()[0] == pytest.approx(reference["labels"][model], abs=1e-5)
    # the groups: resident adapters first, then the budget's worth at a time; base rows in the first
    registry.acquire(["alpha", "beta"])
    assert registry.groups(["gamma", "base", "alpha", "delta", "beta"]) == [[1, 2, 4], [0, 3]]
    assert registry.groups(["alpha", "base", "alpha"]) == [[0, 1, 2]]


def test_solo_paths_cold_load_too(paged: LocalEngine) -> None:
    registry = _registry(paged)
    registry.acquire(["alpha", "beta"])
    beam = paged.generate(CHAT, model="delta", params=SamplingParams(max_new_tokens=4, num_beams=2))
    assert beam.completion_tokens >= 1 and registry.is_resident("delta")
    scores = paged.score_continuations(CHAT, [" yes", " no"], model="gamma")
    assert len(scores) == 2 and registry.is_resident("gamma")
    assert paged.hidden_states(["hello"], model="alpha").shape[0] == 1
    assert len(registry.resident_names()) <= 2


def test_stacks_follow_the_resident_set_as_it_changes(paged: LocalEngine) -> None:
    """After evictions and cold loads, the stacked mixed batch still equals PEFT's own mixed forward."""
    registry, router = _registry(paged), paged.lora
    assert router is not None
    ids = torch.randint(3, 400, (4, 7), generator=torch.Generator().manual_seed(0))  # [rows, seq]
    reuses = registry.slot_reuses
    batches = (
        ["alpha", "beta", "base", "alpha"],
        ["epsilon", "beta", "epsilon", "base"],  # epsilon into alpha's slot
        ["gamma", "delta", "gamma", "base"],
        ["beta", "gamma"] * 2,
        ["alpha", "epsilon", "base", "alpha"],
    )
    for names in batches:
        with torch.inference_mode(), router.rows(names) as rows:
            stacked = registry.model(input_ids=ids, **rows.kwargs).logits  # [rows, seq, vocab]
        with torch.inference_mode():
            peft = registry.model(input_ids=ids, adapter_names=[registry.resolve(n) for n in names]).logits
        torch.testing.assert_close(stacked, peft, atol=1e-4, rtol=0)
        assert set(registry.resident_names()) == set(names) - {"base"}
    assert router.paths["stacked"] >= len(batches) and registry.slot_reuses > reuses


def test_a_slot_taking_new_weights_is_refilled_in_place(paged: LocalEngine) -> None:
    """Churn under a full budget costs a copy of the incoming adapter: the stacks and the cached mix
    of every resident adapter are updated in place, not rebuilt, and still give PEFT's numbers."""
    registry, router = _registry(paged), paged.lora
    assert router is not None
    ids = torch.randint(3, 400, (3, 5), generator=torch.Generator().manual_seed(1))  # [rows, seq]

    def check(names: list[str]) -> None:
        with torch.inference_mode(), router.rows(names) as rows:
            stacked = registry.model(input_ids=ids, **rows.kwargs).logits  # [rows, seq, vocab]
        with torch.inference_mode():
            peft = registry.model(input_ids=ids, adapter_names=[registry.resolve(n) for n in names]).logits
        torch.testing.assert_close(stacked, peft, atol=1e-4, rtol=0)

    check(["alpha", "beta", "base"])  # alpha least recently used after this
    stack = router._stack
    assert stack is not None and stack._mixes
    mixes, reuses = dict(stack._mixes), registry.slot_reuses
    check(["epsilon", "beta", "base"])  # epsilon into alpha's slot
    assert registry.slot_reuses == reuses + 1 and router._stack is stack
    assert stack._mixes.keys() == mixes.keys() and all(stack._mixes[k] is m for k, m in mixes.items())
    check(["beta", "epsilon", "epsilon"])


def test_register_checks_the_folder_without_loading_it(
    paged: LocalEngine, many_adapters: Path, tmp_path: Path, reference: dict[str, dict[str, object]]
) -> None:
    registry = _registry(paged)
    paged._batcher.submit_solo(lambda: registry.register("late", many_adapters / "gamma")).result()
    assert not registry.is_resident("late") and paged.has_model("late")
    with pytest.raises(ConflictError):
        paged._batcher.submit_solo(lambda: registry.register("late", many_adapters / "beta")).result()
    broken = tmp_path / "broken"
    shutil.copytree(many_adapters / "alpha", broken)
    (broken / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(AdapterLoadError, match="safetensors"):
        paged._batcher.submit_solo(lambda: registry.register("broken", broken)).result()
    wrong_rank = tmp_path / "wrong-rank"
    shutil.copytree(many_adapters / "alpha", wrong_rank)
    cfg = json.loads((wrong_rank / "adapter_config.json").read_text())
    (wrong_rank / "adapter_config.json").write_text(json.dumps({**cfg, "r": 16}))
    with pytest.raises(AdapterLoadError, match=r"rank 4 but adapter_config\.json says r=16"):
        paged._batcher.submit_solo(lambda: registry.register("wrong-rank", wrong_rank)).result()
    assert not paged.has_model("broken") and not paged.has_model("wrong-rank")
    assert paged.generate(CHAT, model="late", params=PARAMS).token_ids == reference["tokens"]["gamma"]


def test_a_store_version_is_served_on_first_use_under_its_served_name(
    paged: LocalEngine, reference: dict[str, dict[str, object]]
) -> None:
    registry = _registry(paged)
    assert VERSION not in registry.names()
    # read from its folder, nothing loaded
    assert paged.serving_config(VERSION) == {"labels": LABELS, "instruction": "Rate it."}
    assert paged.adapter_file(VERSION, "intent_head.json") is not None
    assert paged.adapter_file(VERSION, "missing.json") is None
    assert VERSION not in registry.names()
    got = paged.generate(CHAT, model=VERSION, params=PARAMS)
    assert got.token_ids == reference["tokens"]["gamma"]
    models = {m["id"]: m for m in paged.list_models()}
    assert models[VERSION]["resident"] is True and models[VERSION]["card"]["serving"]["labels"] == LABELS
    assert registry.info(VERSION).key.startswith("slot") and registry.resolve(VERSION) == registry.info(VERSION).key
    futures = [paged.submit_generate(CHAT, model=m, params=PARAMS) for m in (VERSION, "alpha", "base")]
    assert [f.result().token_ids for f in futures] == [reference["tokens"][m] for m in ("gamma", "alpha", "base")]
    for unknown in ("acme/support@v2", "other/support@v1", "acme/Support@v1", "acme/support@v0"):
        assert not paged.has_model(unknown)
        with pytest.raises(AdapterNotFoundError, match="unknown model/adapter"):
            paged.generate(CHAT, model=unknown, params=PARAMS)


def test_an_admin_loads_and_unloads_under_a_tenant_version_name(
    paged: LocalEngine, many_adapters: Path, reference: dict[str, dict[str, object]]
) -> None:
    paged.load_adapter("bank/sentiment@v3", many_adapters / "delta")
    paged.load_adapter("support.v2", many_adapters / "beta")
    registry = _registry(paged)
    assert registry.resident_names()[-2:] == ["bank/sentiment@v3", "support.v2"]  # load = resident now
    for served, same_as in (("bank/sentiment@v3", "delta"), ("support.v2", "beta")):
        assert paged.generate(CHAT, model=served, params=PARAMS).token_ids == reference["tokens"][same_as]
    with pytest.raises(ConflictError):
        paged.load_adapter("bank/sentiment@v3", many_adapters / "alpha")
    with pytest.raises(InvalidRequestError, match="invalid"):
        paged.load_adapter("bank/sentiment@3", many_adapters / "alpha")
    paged.unload_adapter("bank/sentiment@v3")
    with pytest.raises(AdapterNotFoundError, match="bank/sentiment@v3"):
        paged.generate(CHAT, model="bank/sentiment@v3", params=PARAMS)


def _blocked(engine: LocalEngine) -> tuple[threading.Event, threading.Event]:
    """Hold the engine thread in a solo job until the returned ``release`` is set."""
    started, release = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait(30)

    engine._batcher.submit_solo(hold, bounded=False)
    assert started.wait(30)
    return started, release


def test_a_request_queued_for_an_adapter_unloaded_meanwhile_gets_404_alone(
    paged: LocalEngine, reference: dict[str, dict[str, object]]
) -> None:
    _, release = _blocked(paged)
    try:
        unloading = threading.Thread(target=paged.unload_adapter, args=("beta",))
        unloading.start()
        deadline = time.monotonic() + 30
        while paged._batcher.queued_jobs < 1 and time.monotonic() < deadline:  # the unload waits behind the hold
            time.sleep(0.01)
        gone = paged.submit_generate(CHAT, model="beta", params=PARAMS)  # admitted: beta is still registered
        fine = paged.submit_generate(CHAT, model="alpha", params=PARAMS)
    finally:
        release.set()
    unloading.join(30)
    with pytest.raises(AdapterNotFoundError, match="beta"):
        gone.result(30)
    assert fine.result(30).token_ids == reference["tokens"]["alpha"]


def test_a_request_queued_for_an_adapter_evicted_meanwhile_cold_loads_it(
    paged: LocalEngine, reference: dict[str, dict[str, object]]
) -> None:
    registry = _registry(paged)
    assert registry.is_resident("alpha")
    _, release = _blocked(paged)
    try:
        evicting = paged._batcher.submit_solo(lambda: registry.evict("alpha"), bounded=False)
        queued = [paged.submit_generate(CHAT, model=m, params=PARAMS) for m in ("alpha", "gamma", "alpha")]
    finally:
        release.set()
    evicting.result(30)
    assert [f.result(30).token_ids for f in queued] == [reference["tokens"][m] for m in ("alpha", "gamma", "alpha")]
    assert registry.is_resident("alpha") and registry.is_resident("gamma")


def test_a_store_folder_that_fails_to_load_fails_its_requests_only(
    paged: LocalEngine, many_adapters: Path, tmp_path: Path, reference: dict[str, dict[str, object]]
) -> None:
    """A version whose weights pass the header check but not PEFT (another base's shapes): 422 for
    its rows, and the batch's other rows are served."""
    store = tmp_path / "adapters"
    folder = version_dir(store, "acme", "broken", 1)
    shutil.copytree(many_adapters / "alpha", folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "target_modules": ["no_such_module"]}))
    registry = _registry(paged)
    registry.store = store
    assert (store / TENANTS_DIR).is_dir() and paged.has_model("acme/broken@v1")
    futures = [paged.submit_generate(CHAT, model=m, params=PARAMS) for m in ("alpha", "acme/broken@v1", "base")]
    with pytest.raises(AdapterLoadError, match="acme/broken@v1"):
        futures[1].result(30)
    assert futures[0].result(30).token_ids == reference["tokens"]["alpha"]
    assert futures[2].result(30).token_ids == reference["tokens"]["base"]


def test_without_a_budget_every_adapter_stays_resident(tiny_settings: Settings, many_adapters: Path) -> None:
    engine = _engine(tiny_settings, many_adapters, 0)
    try:
        registry = _registry(engine)
        assert registry.resident_names() == NAMES
        engine.generate(CHAT, model=VERSION, params=PARAMS)
        assert len(registry.resident_names()) == len(NAMES) + 1 and registry.evictions == 0
    finally:
        engine.close()


def test_int8_refuses_cold_loads_clearly(tiny_settings: Settings, many_adapters: Path) -> None:
    """An int8 base cannot take new LoRA layers: the adapters of the folder are all loaded at start
    (whatever the budget) and serve; a store version or an admin load is a clear 400."""
    engine = _engine(tiny_settings, many_adapters, 2, quantization="int8")
    try:
        registry = _registry(engine)
        assert registry.resident_names() == NAMES
        assert engine.has_model("gamma") and not engine.has_model(VERSION)
        futures = [engine.submit_generate(CHAT, model=m, params=PARAMS) for m in NAMES]
        assert all(f.result(30).completion_tokens == PARAMS.max_new_tokens for f in futures)
        with pytest.raises(InvalidRequestError, match="int8"):
            engine.generate(CHAT, model=VERSION, params=PARAMS)
        with pytest.raises(InvalidRequestError, match="int8"):
            engine.load_adapter("late", many_adapters / "gamma")
        assert registry.evictions == 0
    finally:
        engine.close()
