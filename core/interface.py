"""The ``Engine`` Protocol: what the apps, the workers and the evaluations may ask of an LLM host.

``core.engine.LocalEngine`` (the base model and its adapters in this process) implements it; a
remote engine (an OpenAI-compatible multi-LoRA server) can implement it too. Callers type against
this Protocol and never reach into an implementation's tokenizer, registry or embedder: what they
need of those (a chat rendered as the model sees it, an adapter's card or files, embeddings on the
engine thread) is a method here.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from core.adapters import AdapterInfo
from core.prompts import Message
from core.sampling import Completion, ContinuationScore, SamplingParams

Prompt = str | list[Message]
DeltaCallback = Callable[[str], None]


@runtime_checkable
class Engine(Protocol):
    """One base model and its adapters, addressed by model name (an adapter, or ``"base"``)."""

    # ---- lifecycle and the served models -------------------------------------------------------
    @property
    def ready(self) -> bool: ...

    adapter_failures: dict[str, str]
    base_model_name: str
    load_seconds: float

    def warm_up(self) -> None: ...

    def close(self) -> None: ...

    def list_models(self) -> list[dict[str, Any]]: ...

    def has_model(self, name: str) -> bool: ...

    def adapters(self) -> list[AdapterInfo]: ...

    def serving_config(self, name: str) -> dict[str, Any]: ...

    def adapter_file(self, name: str, filename: str) -> Path | None: ...

    def load_adapter(self, name: str, path: Path) -> AdapterInfo: ...

    def unload_adapter(self, name: str) -> None: ...

    # ---- prompts -------------------------------------------------------------------------------
    def render(self, prompt: Prompt) -> str: ...

    def truncate_tokens(self, text: str, max_tokens: int) -> str: ...

    @property
    def max_batch_texts(self) -> int: ...

    # ---- model work ----------------------------------------------------------------------------
    def submit_generate(
        self,
        prompt: Prompt,
        *,
        model: str = ...,
        params: SamplingParams | None = None,
        on_delta: DeltaCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Future[Completion]: ...

    def generate(self, prompt: Prompt, **kwargs: Any) -> Completion: ...

    def submit_score_labels(
        self, texts: list[str], labels: list[str], *, model: str = ..., instruction: str | None = None
    ) -> Future[list[dict[str, float]]]: ...

    def score_labels(self, texts: list[str], labels: list[str], **kwargs: Any) -> list[dict[str, float]]: ...

    def submit_score_continuations(
        self,
        prefix: Prompt,
        continuations: list[str],
        *,
        model: str = ...,
        answer_labels: list[str] | None = None,
    ) -> Future[list[ContinuationScore]]: ...

    def score_continuations(
        self, prefix: Prompt, continuations: list[str], **kwargs: Any
    ) -> list[ContinuationScore]: ...

    def embed(self, texts: list[str], *, normalize: bool = True) -> np.ndarray: ...

    def hidden_states(self, texts: list[str], *, model: str = ...) -> np.ndarray: ...
