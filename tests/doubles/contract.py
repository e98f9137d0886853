"""For the train/serve contract tests: an engine serving one random LoRA adapter under a card's
serving section, a record of the token ids the engine is asked to read, and a data-file reader's
refusal of a bad file."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from core.adapters import CARD_FILE
from core.config import Settings
from core.engine import LocalEngine
from domains.records import DataFileError


@contextmanager
def served_engine(
    tiny_model_dir: Path,
    lora: Path,
    root: Path,
    name: str,
    serving: dict[str, Any],
    write: Callable[[Path], object] | None = None,
) -> Iterator[LocalEngine]:
    """An engine serving ``lora`` as adapter ``name`` with ``serving`` as its card's section;
    ``write`` may add files to the adapter folder before the engine starts."""
    adapter = root / "adapters" / name
    adapter.parent.mkdir(parents=True)
    shutil.copytree(lora, adapter)
    (adapter / CARD_FILE).write_text(json.dumps({"serving": serving}))
    if write is not None:
        write(adapter)
    engine = LocalEngine(Settings(environment="test", base_model=str(tiny_model_dir), adapters_dir=adapter.parent,
                                  admin_key="k-test", data_dir=root / "data", batch_wait_ms=5))  # fmt: skip
    engine.warm_up()
    try:
        yield engine
    finally:
        engine.close()


def record_tokenize(engine: LocalEngine, monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The token ids of every text the engine tokenizes from now on, in order."""
    seen: list[list[int]] = []
    tokenize = engine.tokenize

    def spy(text: str) -> list[int]:
        seen.append(tokenize(text))
        return seen[-1]

    monkeypatch.setattr(engine, "tokenize", spy)
    return seen


def assert_refused(read: Callable[[Path], object], path: Path, body: str, message: str) -> None:
    """``read`` refuses ``path`` holding ``body`` with a DataFileError matching ``message``."""
    path.write_text(body)
    with pytest.raises(DataFileError, match=message):
        read(path)
