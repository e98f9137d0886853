"""The engine queue is bounded by its estimated time, and a caller that gives up takes its work out:
a queued job never runs, a running generation stops at its next decode step."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from core.batching import Job, MicroBatcher, one_admission
from core.engine import LocalEngine
from core.errors import EngineOverloadedError
from core.sampling import SamplingParams

pytestmark = pytest.mark.unit

WAIT_S = 10  # generous: nothing below is timed, these only stop a broken test from hanging


def _echo(jobs: list[Job]) -> list[Any]:
    return [j.payload for j in jobs]


@pytest.fixture
def held() -> Iterator[tuple[MicroBatcher, threading.Event]]:
    """A batcher bounded at 3 s of work, its "x" kind measured at 1 s per row, and its worker held
    by a gate job until the test sets the event (so what the test queues stays queued)."""
    batcher = MicroBatcher({"x": _echo, "y": _echo}, max_batch=2, wait_s=0.0, max_queue_s=3.0)
    batcher._observe("x", 1, 1.0)  # as if a one-row batch of x had taken a second
    batcher.start()
    release = threading.Event()
    gate = batcher.submit_solo(lambda: release.wait(WAIT_S), kind="gate", bounded=False)
    while not gate.running():
        threading.Event().wait(0.001)
    yield batcher, release
    release.set()
    batcher.stop()


def test_the_queue_is_bounded_by_estimated_seconds_not_by_count(held: tuple[MicroBatcher, threading.Event]) -> None:
    batcher, release = held
    unmeasured = [batcher.submit("y", f"y{i}") for i in range(10)]  # a kind not measured yet counts as free
    # With batches of 2, a new x row waits for the full batches ahead of the one it joins.
    first = [batcher.submit("x", i) for i in range(4)]  # ahead of each: 0, 0, 2, 2 s (the bound is 3)
    assert batcher.backlog_s("x") == pytest.approx(4.0)
    with pytest.raises(EngineOverloadedError, match=r"about 4 s of work queued .* bound is 3 s") as refused:
        batcher.submit("x", "one too many")
    assert refused.value.retry_after_s == 1  # 4 s ahead, 3 allowed: retry in a second
    with pytest.raises(EngineOverloadedError):
        batcher.submit("y", "y10")  # another kind waits for every queued x row
    release.set()
    assert [f.result(timeout=WAIT_S) for f in first] == [0, 1, 2, 3]
    assert [f.result(timeout=WAIT_S) for f in unmeasured] == [f"y{i}" for i in range(10)]


def test_only_a_partial_batch_at_the_queue_tail_is_joined(held: tuple[MicroBatcher, threading.Event]) -> None:
    batcher, _ = held
    batcher.submit("x", "x0")
    assert batcher.backlog_s("x") == 0.0  # a new x would share x0's batch
    batcher.submit("y", "y0")
    assert batcher.backlog_s("x") == 1.0  # a batch takes consecutive jobs of one kind: now it waits for x0


def test_a_request_is_admitted_whole_by_the_work_ahead_of_it(held: tuple[MicroBatcher, threading.Event]) -> None:
    batcher, release = held
    chunks = batcher.submit_all("x", [(i, 2, 2.0) for i in range(5)])  # 10 s of work, on an empty queue: admitted
    with pytest.raises(EngineOverloadedError):
        batcher.submit("x", "next")  # but nobody after it
    release.set()
    assert [f.result(timeout=WAIT_S) for f in chunks] == [0, 1, 2, 3, 4]


def test_a_piece_of_work_once_admitted_is_not_refused_halfway(held: tuple[MicroBatcher, threading.Event]) -> None:
    """A support answer makes several engine calls: its first is held to the bound, the rest are not."""
    batcher, release = held
    errors: list[BaseException] = []

    def another_request() -> None:  # a thread of its own: not part of the work below
        try:
            batcher.submit("x", "another request")
        except EngineOverloadedError as exc:
            errors.append(exc)

    with one_admission():
        batcher.submit_all("x", [(i, 2, 2.0) for i in range(2)])  # on an empty queue: admitted
        batcher.submit("x", "the same answer's second call")  # past the bound, but the work is under way
        other = threading.Thread(target=another_request)
        other.start()
        other.join(WAIT_S)
        assert len(errors) == 1  # anyone else: refused
        with pytest.raises(EngineOverloadedError), one_admission():
            batcher.submit("x", "a new piece of work")  # its first call: refused
    release.set()


def test_a_cancelled_job_leaves_the_backlog_at_once_and_never_runs(held: tuple[MicroBatcher, threading.Event]) -> None:
    batcher, release = held
    keep = batcher.submit("x", "kept")
    gone = [batcher.submit("x", f"gone {i}") for i in range(3)]
    assert batcher.queued_jobs == 4 and REGISTRY.get_sample_value("domainllm_queue_depth") == 4
    for f in gone:
        assert f.cancel()
    assert batcher.queued_jobs == 1 and REGISTRY.get_sample_value("domainllm_queue_depth") == 1  # not run yet
    assert batcher.backlog_s("x") == 0.0
    release.set()
    assert keep.result(timeout=WAIT_S) == "kept"
    assert batcher.submit("x", "after").result(timeout=WAIT_S) == "after"
    ran = [n for kind, n in batcher.recent if kind == "x"]
    assert ran == [1, 1]  # "kept" and "after", one row each: no cancelled row rode along


def test_cancelling_a_running_job_marks_it_abandoned_for_its_handler() -> None:
    started = threading.Event()

    def until_abandoned(jobs: list[Job]) -> list[Any]:
        started.set()
        for _ in range(WAIT_S * 1000):
            if jobs[0].abandoned:
                return ["stopped early"]
            threading.Event().wait(0.001)
        return ["ran to the end"]

    batcher = MicroBatcher({"x": until_abandoned}, max_batch=2, wait_s=0.0)
    batcher.start()
    try:
        future = batcher.submit("x", None)
        assert started.wait(WAIT_S)
        assert not future.cancel()  # running: concurrent.futures cannot cancel it...
        assert future.result(timeout=WAIT_S) == "stopped early"  # ...but its handler saw the caller leave
    finally:
        batcher.stop()


def test_a_cancelled_generation_stops_at_its_next_decode_step(tiny_engine: LocalEngine) -> None:
    params = SamplingParams(max_new_tokens=200, ignore_eos=True)
    futures: list[Any] = []

    def on_delta(_: str) -> None:  # on the engine thread, at the first token: the caller gives up
        futures[0].cancel()

    futures.append(tiny_engine.submit_generate("The market", params=params, on_delta=on_delta))
    other = tiny_engine.submit_generate("The market", params=SamplingParams(max_new_tokens=12, ignore_eos=True))
    cut = futures[0].result(timeout=60)
    assert cut.finish_reason == "cancelled" and cut.completion_tokens < 50  # not 200
    assert other.result(timeout=60).completion_tokens == 12  # a row sharing the batch is unaffected


def test_a_generation_cancelled_while_queued_never_runs(tiny_engine: LocalEngine) -> None:
    release = threading.Event()
    gate = tiny_engine._batcher.submit_solo(lambda: release.wait(WAIT_S), kind="gate", bounded=False)
    before = len(tiny_engine.recent_batches)
    future = tiny_engine.submit_generate("hello", params=SamplingParams(max_new_tokens=8))
    assert future.cancel()
    release.set()
    gate.result(timeout=WAIT_S)
    assert tiny_engine.generate("hello", params=SamplingParams(max_new_tokens=2)).completion_tokens > 0
    ran = [b for b in tiny_engine.recent_batches[before:] if b[0] != "gate"]
    assert ran == [("generate", 1)]  # only the second generation ran
