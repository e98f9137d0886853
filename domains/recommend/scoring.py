"""The LLM interest score: P("Yes") per candidate from one ``score_continuations`` call. The history
prefix runs once; each candidate's target sentence is a continuation over its cache.

The prompt follows the adapter card's ``serving`` section (instruction, labels, which label means
yes, how many titles of history and where a rating starts to count as liked, the wording and which
catalogue fields name an item): the adapter is asked exactly what it was trained on. The base model
has no card: it is asked in ``wording`` (the product wording unless the caller names another).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from core.batching import settle
from core.errors import EngineOverloadedError
from core.interface import Engine
from core.sampling import ContinuationScore
from domains.recommend.prompt import HISTORY, MOVIE, PRODUCT, SplitPrompt, Wording, split_prompt
from domains.recommend.serving import RecommendServing, read_serving

BASE = "base"


class LLMScorer:
    def __init__(
        self,
        engine: Engine,
        adapter: str,
        *,
        history: int = HISTORY,
        deadline_s: float | None = None,
        wording: Wording = PRODUCT,
    ) -> None:
        """``history`` and ``wording``: titles in the prompt and the words around them for a model
        with no card (the base model); an adapter without the keys was trained with TALLRec's.
        ``deadline_s``: ``score`` waits this long at most, then cancels and raises ``EngineOverloadedError``."""
        self.engine = engine
        self.adapter = adapter
        self.deadline_s = deadline_s
        self.history = history
        self.wording = wording

    def model(self) -> str:
        """The adapter when it is loaded, else the base model."""
        return self.adapter if self.engine.has_model(self.adapter) else BASE

    def serving(self, model: str | None = None) -> RecommendServing:
        """How ``model`` (default: the one ``model()`` picks) is prompted, from its card."""
        model = model or self.model()
        wording = self.wording if model == BASE else MOVIE
        return read_serving(self.engine.serving_config(model), history=self.history, wording=wording)

    def _split(self, serving: RecommendServing, liked: Sequence[str], disliked: Sequence[str]) -> SplitPrompt:
        return split_prompt(self.engine.render, liked, disliked, serving.instruction, serving.wording)

    def submit(self, liked: Sequence[str], disliked: Sequence[str], titles: Sequence[str]) -> Future[list[float]]:
        model = self.model()
        serving = self.serving(model)
        split = self._split(serving, liked, disliked)
        inner = self.engine.submit_score_continuations(
            split.prefix, [split.continuation(t) for t in titles], model=model, answer_labels=list(serving.labels)
        )
        outer: Future[list[float]] = Future()

        def done(f: Future[list[ContinuationScore]]) -> None:
            if f.cancelled():
                outer.cancel()
                return
            exc = f.exception()
            if exc is not None:
                settle(outer, error=exc)
            else:
                settle(outer, [_positive(s, serving) for s in f.result()])

        inner.add_done_callback(done)
        outer.add_done_callback(lambda o: inner.cancel() if o.cancelled() else None)  # a caller gave up
        return outer

    def score(self, liked: Sequence[str], disliked: Sequence[str], titles: Sequence[str]) -> list[float]:
        future = self.submit(liked, disliked, titles)
        try:
            return future.result(timeout=self.deadline_s)
        except FutureTimeout:
            future.cancel()  # its rows leave the engine's batch
            raise EngineOverloadedError(
                f"the LLM did not score the candidates within {self.deadline_s:g} s", retry_after_s=1
            ) from None

    def score_separately(self, liked: Sequence[str], disliked: Sequence[str], titles: Sequence[str]) -> list[float]:
        """Each candidate as its own full prompt (prefix recomputed every time): the latency baseline."""
        model = self.model()
        serving = self.serving(model)
        split = self._split(serving, liked, disliked)
        out = []
        for t in titles:
            [s] = self.engine.score_continuations(
                split.prefix, [split.continuation(t)], model=model, answer_labels=list(serving.labels)
            )
            out.append(_positive(s, serving))
        return out


def _positive(score: ContinuationScore, serving: RecommendServing) -> float:
    if score.next_label_probs is None:
        raise ValueError("the engine returned no answer-label probabilities")
    return float(score.next_label_probs[serving.positive])
