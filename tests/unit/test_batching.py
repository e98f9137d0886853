"""Micro-batching: concurrent requests across adapters run as one batch and equal solo results."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest

from core.batching import MicroBatcher
from core.engine import LocalEngine
from core.errors import DomainLLMError
from core.sampling import SamplingParams

pytestmark = pytest.mark.unit

PROMPTS = [
    ("base", "Where is my order?"),
    ("alpha", "The market fell sharply after the earnings report, and the bank said it would cut jobs."),
    ("beta", "Recommend a game"),
    ("alpha", "How do I reset my password?"),
    ("base", "Shares of the bank rose on merger news."),
    ("beta", "I want a refund for the damaged item, please."),
]


def _solo_then_batched(engine: LocalEngine, submit) -> tuple[list, list, list[tuple[str, int]]]:
    solo = [submit(m, p).result() for m, p in PROMPTS]
    before = len(engine.recent_batches)
    futures = [submit(m, p) for m, p in PROMPTS]  # all queued within the batch window
    batched = [f.result() for f in futures]
    return solo, batched, engine.recent_batches[before:]


def test_mixed_adapter_generation_batch_equals_solo(tiny_engine: LocalEngine) -> None:
    params = SamplingParams(max_new_tokens=10, ignore_eos=True)

    def submit(model: str, prompt: str) -> Future:
        return tiny_engine.submit_generate([{"role": "user", "content": prompt}], model=model, params=params)

    solo, batched, batches = _solo_then_batched(tiny_engine, submit)
    assert ("generate", len(PROMPTS)) in batches, batches  # one batch, three adapters
    for s, b in zip(solo, batched, strict=True):
        assert b.token_ids == s.token_ids


def test_mixed_adapter_label_batch_equals_solo(tiny_engine: LocalEngine) -> None:
    labels = ["negative", "neutral", "positive"]

    def submit(model: str, prompt: str) -> Future:
        return tiny_engine.submit_score_labels([prompt], labels, model=model)

    solo, batched, batches = _solo_then_batched(tiny_engine, submit)
    assert ("labels", len(PROMPTS)) in batches, batches
    for s, b in zip(solo, batched, strict=True):
        for label in labels:
            assert b[0][label] == pytest.approx(s[0][label], abs=1e-5)


def test_rows_that_finish_early_leave_the_batch_without_disturbing_others(tiny_engine: LocalEngine) -> None:
    short = SamplingParams(max_new_tokens=2, ignore_eos=True)
    long = SamplingParams(max_new_tokens=12, ignore_eos=True)
    chat = [{"role": "user", "content": "Where is my order?"}]
    solo_long = tiny_engine.generate(chat, model="alpha", params=long)
    futures = [
        tiny_engine.submit_generate(chat, model="beta", params=short),
        tiny_engine.submit_generate(chat, model="alpha", params=long),
        tiny_engine.submit_generate(chat, model="base", params=short),
    ]
    results = [f.result() for f in futures]
    assert [r.completion_tokens for r in results] == [2, 12, 2]
    assert results[1].token_ids == solo_long.token_ids


def test_batcher_groups_by_kind_caps_rows_and_runs_solo_jobs_alone() -> None:
    seen: list[tuple[str, list[int]]] = []
    release = threading.Event()

    def handler(kind: str):
        def run(jobs):
            seen.append((kind, [j.payload for j in jobs]))
            return [j.payload * 10 for j in jobs]

        return run

    batcher = MicroBatcher({"a": handler("a"), "b": handler("b")}, max_batch=3, wait_s=0.05)
    batcher.start()
    try:
        gate = batcher.submit_solo(lambda: release.wait(5))  # hold the worker while we queue
        futures = [batcher.submit(k, i) for i, k in enumerate("aabaaa")]
        release.set()
        assert gate.result() is True
        assert [f.result() for f in futures] == [0, 10, 20, 30, 40, 50]
    finally:
        batcher.stop()
    assert all(len(p) <= 3 for _, p in seen)
    assert seen[0] == ("a", [0, 1])  # stops at the first job of another kind
    assert sorted(x for _, p in seen for x in p) == [0, 1, 2, 3, 4, 5]


def test_a_failing_batch_fails_its_callers_and_the_worker_keeps_serving() -> None:
    def boom(jobs):
        if any(j.payload == "bad" for j in jobs):
            raise DomainLLMError("bad row")
        return [j.payload for j in jobs]

    batcher = MicroBatcher({"x": boom}, max_batch=8, wait_s=0.0)
    batcher.start()
    try:
        with pytest.raises(DomainLLMError, match="bad row"):
            batcher.submit("x", "bad").result(timeout=5)
        time.sleep(0.01)
        assert batcher.submit("x", "good").result(timeout=5) == "good"
    finally:
        batcher.stop()


def test_stop_runs_the_work_queued_before_it_then_fails_what_comes_after() -> None:
    """A server draining on SIGTERM closes its engine with requests still queued: they get answers."""
    release = threading.Event()
    batcher = MicroBatcher({"x": lambda jobs: [j.payload for j in jobs]}, max_batch=1, wait_s=0.0)
    batcher.start()
    gate = batcher.submit_solo(lambda: release.wait(5))  # hold the worker while we queue
    queued = [batcher.submit("x", i) for i in range(3)]
    stopping = threading.Thread(target=batcher.stop)
    stopping.start()
    time.sleep(0.05)  # the stop sentinel is queued behind the three jobs now
    late = batcher.submit("x", "late")
    release.set()
    stopping.join(timeout=10)
    assert gate.result() is True
    assert [f.result(timeout=1) for f in queued] == [0, 1, 2]
    with pytest.raises(DomainLLMError, match="shutting down"):
        late.result(timeout=1)
