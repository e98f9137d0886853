"""The adapter registry: load, unload, list; clear errors; a broken folder never breaks serving."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core.engine import LocalEngine
from core.errors import AdapterLoadError, AdapterNotFoundError, ConflictError, InvalidRequestError
from core.sampling import SamplingParams

pytestmark = pytest.mark.unit

PARAMS = SamplingParams(max_new_tokens=6, ignore_eos=True)


def test_adapters_in_the_folder_load_on_start(tiny_engine: LocalEngine) -> None:
    assert [m["id"] for m in tiny_engine.list_models()] == ["base", "alpha", "beta"]
    alpha = tiny_engine.registry.info("alpha")
    assert alpha.rank == 4
    assert alpha.size_bytes > 0
    assert "q_proj" in alpha.target_modules


def test_unload_and_reload_at_run_time(tiny_engine: LocalEngine, tiny_adapters: dict[str, Path]) -> None:
    before = tiny_engine.generate("hello", model="alpha", params=PARAMS).token_ids
    tiny_engine.unload_adapter("alpha")
    assert not tiny_engine.has_model("alpha")
    with pytest.raises(AdapterNotFoundError):
        tiny_engine.generate("hello", model="alpha", params=PARAMS)
    tiny_engine.load_adapter("alpha", tiny_adapters["alpha"])
    assert tiny_engine.generate("hello", model="alpha", params=PARAMS).token_ids == before


def test_unloading_every_adapter_restores_the_plain_base(tiny_engine: LocalEngine) -> None:
    base_before = tiny_engine.generate("hello", params=PARAMS).token_ids
    tiny_engine.unload_adapter("alpha")
    tiny_engine.unload_adapter("beta")
    assert not tiny_engine.registry.has_adapters
    assert tiny_engine.generate("hello", params=PARAMS).token_ids == base_before


def test_loading_a_name_twice_is_a_conflict(tiny_engine: LocalEngine, tiny_adapters: dict[str, Path]) -> None:
    with pytest.raises(ConflictError):
        tiny_engine.load_adapter("alpha", tiny_adapters["beta"])


@pytest.mark.parametrize("name", ["base", "__base__", "Bad Name", "", "../etc", "x" * 80])
def test_invalid_names_are_refused(tiny_engine: LocalEngine, tiny_adapters: dict[str, Path], name: str) -> None:
    with pytest.raises(InvalidRequestError):
        tiny_engine.load_adapter(name, tiny_adapters["alpha"])


def _broken_copies(src: Path, root: Path) -> dict[str, Path]:
    cases = {}
    missing = root / "missing-config"
    shutil.copytree(src, missing)
    (missing / "adapter_config.json").unlink()
    cases["missing-config"] = missing
    bad_json = root / "bad-json"
    shutil.copytree(src, bad_json)
    (bad_json / "adapter_config.json").write_text("{not json")
    cases["bad-json"] = bad_json
    garbage = root / "garbage-weights"
    shutil.copytree(src, garbage)
    (garbage / "adapter_model.safetensors").write_bytes(b"garbage")
    cases["garbage-weights"] = garbage
    wrong_shape = root / "wrong-shape"
    shutil.copytree(src, wrong_shape)
    cfg = (wrong_shape / "adapter_config.json").read_text().replace('"r": 4', '"r": 16')
    (wrong_shape / "adapter_config.json").write_text(cfg)
    cases["wrong-shape"] = wrong_shape
    cases["no-folder"] = root / "does-not-exist"
    return cases


def test_broken_adapter_folders_fail_clearly_and_the_loaded_ones_keep_serving(
    tiny_engine: LocalEngine, tiny_adapters: dict[str, Path], tmp_path: Path
) -> None:
    expected = {m: tiny_engine.generate("hello", model=m, params=PARAMS).token_ids for m in ("base", "alpha", "beta")}
    for name, path in _broken_copies(tiny_adapters["alpha"], tmp_path).items():
        with pytest.raises(AdapterLoadError, match=name):
            tiny_engine.load_adapter(name, path)
        assert [m["id"] for m in tiny_engine.list_models()] == ["base", "alpha", "beta"]
        for model, ids in expected.items():
            assert tiny_engine.generate("hello", model=model, params=PARAMS).token_ids == ids


def test_a_broken_first_adapter_leaves_the_base_untouched(
    tiny_settings, tiny_adapters: dict[str, Path], tmp_path: Path
) -> None:
    settings = tiny_settings.model_copy(update={"adapters_dir": tmp_path / "empty"})
    engine = LocalEngine(settings)
    engine.warm_up()
    try:
        base = engine.generate("hello", params=PARAMS).token_ids
        broken = _broken_copies(tiny_adapters["alpha"], tmp_path)
        for name in ("garbage-weights", "wrong-shape"):
            with pytest.raises(AdapterLoadError):
                engine.load_adapter(name, broken[name])
            assert engine.generate("hello", params=PARAMS).token_ids == base
        engine.load_adapter("alpha", tiny_adapters["alpha"])
        assert engine.generate("hello", model="alpha", params=PARAMS).token_ids != base
    finally:
        engine.close()


def test_discovery_skips_broken_folders_and_reports_them(
    tiny_settings, tiny_adapters: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "adapters"
    shutil.copytree(tiny_adapters["beta"], folder / "beta")
    shutil.copytree(tiny_adapters["alpha"], folder / "broken")
    (folder / "broken" / "adapter_model.safetensors").write_bytes(b"nope")
    engine = LocalEngine(tiny_settings.model_copy(update={"adapters_dir": folder}))
    engine.warm_up()
    try:
        assert [m["id"] for m in engine.list_models()] == ["base", "beta"]
        assert "broken" in engine.adapter_failures
    finally:
        engine.close()
