"""The shipped Games adapter on the real base model: the storefront's scorer asks it in the product
wording its card names, the shared-prefix scores equal whole prompts, and the held-out check of the
own-data contract runs on the public guard set through the Engine protocol. Bounded: 12 guard users."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from core.config import PROJECT_ROOT, Settings
from core.engine import LocalEngine
from domains.recommend.prompt import PRODUCT, PreferencePrompt
from domains.recommend.scoring import LLMScorer
from finetune.evals.games import GAMES_ADAPTER
from finetune.tasks.recommend import RecommendHeldOut, evaluate_own, guard_rows

pytestmark = pytest.mark.integration

ADAPTER = PROJECT_ROOT / "data" / "adapters" / GAMES_ADAPTER


@pytest.fixture(scope="module")
def engine(real_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEngine]:
    if not (ADAPTER / "adapter_card.json").is_file():
        pytest.skip(
            f"{ADAPTER} is not trained (domainllm train recommend --config finetune/configs/recommend-games.yaml)"
        )
    settings = Settings(
        environment="test",
        admin_key="test-admin-key",
        base_model=str(real_model_dir),
        adapters_dir=tmp_path_factory.mktemp("no-adapters"),
    )
    engine = LocalEngine(settings)
    engine.warm_up()
    engine.load_adapter(GAMES_ADAPTER, ADAPTER)
    yield engine
    engine.close()


def test_the_games_adapter_is_asked_in_the_product_wording(engine: LocalEngine) -> None:
    scorer = LLMScorer(engine, GAMES_ADAPTER)
    serving = scorer.serving()
    assert scorer.model() == GAMES_ADAPTER and serving.wording == PRODUCT and serving.item_fields == ("title",)
    liked = ["Mario Kart 8 - Wii U", "Wii U Pro Controller"]
    titles = ["Splatoon - Wii U", "Gran Turismo 5 - PlayStation 3", "Xbox 360 Wireless Headset"]
    shared = scorer.score(liked, [], titles)
    rows = [PreferencePrompt(tuple(liked), (), t, "Yes") for t in titles]
    whole = engine.score_labels(
        [r.text(PRODUCT) for r in rows], list(serving.labels), model=GAMES_ADAPTER, instruction=serving.instruction
    )
    assert np.allclose(shared, [p["Yes"] for p in whole], atol=2e-3)
    assert all(0.0 < p < 1.0 for p in shared)


@pytest.mark.long  # builds the Games-6k guard split and ranks its candidates: minutes on 2 cores (make bench)
def test_the_held_out_check_runs_on_the_public_guard_set(engine: LocalEngine) -> None:
    guard = guard_rows(engine.settings.model_copy(update={"shared_data_dir": Settings().shared_data_dir}))
    if guard is None:
        pytest.skip("the shared Games-6k data is not here")
    small = RecommendHeldOut(guard.cases[:12], guard.source)
    adapter = evaluate_own(engine, GAMES_ADAPTER, small)
    base = evaluate_own(engine, "base", small)
    for metrics in (adapter, base):
        assert metrics["cases"] == 12 and 0.0 <= metrics["score"] <= 1.0
        assert metrics["hr@1"] <= metrics["hr@10"] <= 1.0
