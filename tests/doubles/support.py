"""The support bot as the integration tests build it: the real SmolLM2 with the committed adapters
(the support adapter's intent head), real MiniLM, the sample help centre in a FAISS + BM25 knowledge
base. Not a double: the real pieces, assembled once per test module."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from apps.support.answer import SupportBot
from apps.support.documents import read_help_centre
from apps.support.intents import IntentClassifier
from apps.support.kb import KnowledgeBase
from apps.support.rules import load_rules
from apps.support.settings import SAMPLES_DIR, SupportSettings
from core.config import PROJECT_ROOT, Settings
from core.engine import LocalEngine

ADAPTERS = PROJECT_ROOT / "data" / "adapters"


@contextmanager
def sample_help_centre_bot(model_dir: Path, kb_dir: Path, **settings: Any) -> Iterator[SupportBot]:
    """A ``SupportBot`` over the sample help centre (skips when the committed adapter is missing)."""
    if not (ADAPTERS / "support" / "adapter_config.json").is_file():
        pytest.skip("the committed support adapter is missing")
    engine = LocalEngine(
        Settings(environment="test", admin_key="test-admin-key", base_model=str(model_dir), adapters_dir=ADAPTERS)
    )
    engine.warm_up()
    try:
        support = SupportSettings(kb_dir=kb_dir, **settings)
        kb = KnowledgeBase(support.kb_dir, engine)
        kb.warm_up()
        kb.upsert_many(read_help_centre(SAMPLES_DIR))
        yield SupportBot(engine, kb, load_rules(support.rules_path), support, IntentClassifier(engine, "support"))
    finally:
        engine.close()
