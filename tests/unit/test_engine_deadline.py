"""A caller never waits on the engine past its deadline: the job is cancelled (a queued one never
runs) and the caller gets EngineOverloadedError (a 503 with Retry-After over HTTP)."""

from __future__ import annotations

import threading
import time

import pytest

from core.config import Settings
from core.engine import LocalEngine
from core.errors import EngineOverloadedError

pytestmark = pytest.mark.unit


def test_a_wait_past_the_deadline_fails_and_the_queued_job_never_runs(tiny_settings: Settings) -> None:
    engine = LocalEngine(tiny_settings.model_copy(update={"engine_deadline_s": 0.3}))
    engine.warm_up()
    try:
        release = threading.Event()
        busy = engine._batcher.submit_solo(lambda: release.wait(5))  # the engine thread is taken
        ran: list[str] = []

        def embed() -> None:
            ran.append("embedded")

        started = time.monotonic()
        with pytest.raises(EngineOverloadedError, match=r"did not answer within 0\.3 s"):
            engine._wait(engine._batcher.submit_solo(embed))
        assert time.monotonic() - started < 3
        release.set()
        busy.result(timeout=5)
        assert engine._wait(engine._batcher.submit_solo(lambda: "served")) == "served"  # the next caller is served
        assert ran == []  # the cancelled job was dropped, not run late
    finally:
        engine.close()


def test_many_texts_are_scored_in_micro_batch_chunks_with_the_same_result(tiny_settings: Settings) -> None:
    texts = [f"Profit {'rose' if i % 2 else 'fell'} {i}% in the quarter." for i in range(70)]
    labels = ["negative", "neutral", "positive"]
    whole = LocalEngine(tiny_settings.model_copy(update={"max_batch_size": 512}))
    chunked = LocalEngine(tiny_settings.model_copy(update={"max_batch_size": 16}))
    try:
        whole.warm_up()
        chunked.warm_up()
        one, many = whole.score_labels(texts, labels), chunked.score_labels(texts, labels)
        assert len(many) == 70
        for a, b in zip(one, many, strict=True):
            assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-4 for k in a)
        future = chunked.submit_score_labels(texts, labels)
        future.cancel()  # a cancelled request drops its chunks
        assert future.cancelled()
    finally:
        whole.close()
        chunked.close()


def test_the_waits_of_one_piece_of_work_share_one_deadline(
    tiny_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A support answer waits on the engine several times: together, not each, within the deadline."""
    from concurrent.futures import Future

    import core.engine
    from core.batching import one_admission

    engine = LocalEngine(tiny_settings.model_copy(update={"engine_deadline_s": 20.0}))
    never: Future[str] = Future()  # a job that would never finish
    monkeypatch.setattr(core.engine, "work_elapsed_s", lambda: 20.0)  # as if the work had used it all
    with one_admission(), pytest.raises(EngineOverloadedError, match="within 20 s"):
        engine._wait(never)
    assert never.cancelled()
    done: Future[str] = Future()
    done.set_result("answered")
    monkeypatch.setattr(core.engine, "work_elapsed_s", lambda: 5.0)
    with one_admission():
        assert engine._wait(done) == "answered"
