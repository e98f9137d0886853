"""The remote engine against a second instance of this project's server: uvicorn in a subprocess on a
loopback port, the tiny random Llama and its two random adapters, real HTTP. Every answer must equal
the local engine's on the same model files: greedy tokens (plain and streamed), label probabilities,
continuation log-likelihoods and answer probabilities, for the base model and an adapter. Then the
apps' own routes, served in process on the remote engine."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from apps.server import create_app
from core.config import Settings
from core.engine import LocalEngine
from core.interface import Prompt
from core.remote_client import RemoteSettings
from core.remote_engine import RemoteEngine
from core.sampling import SamplingParams
from tests.doubles.redis import free_port
from tests.doubles.servers import KEYED, start_process, stop_process, wait_until_ready

pytestmark = pytest.mark.integration

REMOTE_KEY = "remote-admin-key"
STARTUP_TIMEOUT_S = 60
LABELS = ["negative", "neutral", "positive"]
TEXTS = ["The market fell sharply after the earnings report.", "Shares of the bank rose on merger news."]
CHAT: list[dict[str, str]] = [{"role": "user", "content": "Where is my order? I want a refund."}]
CANDIDATES = [' "Heat (1995)" (Action)', ' "Toy Story (1995)" (Animation)', " No"]


@pytest.fixture(scope="module")
def remote_url(
    tiny_model_dir: Path, tiny_adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Base URL of our server started by uvicorn's CLI on the tiny model and its adapters."""
    tmp = tmp_path_factory.mktemp("remote-server")
    port = free_port()
    env = {
        **os.environ,
        "DOMAINLLM_ENVIRONMENT": "test",
        "DOMAINLLM_ADMIN_KEY": REMOTE_KEY,
        "DOMAINLLM_BASE_MODEL": str(tiny_model_dir),
        "DOMAINLLM_ADAPTERS_DIR": str(tiny_adapters["alpha"].parent),
        "DOMAINLLM_DATA_DIR": str(tmp / "data"),
    }
    log_path = tmp / "server.log"
    command = [sys.executable, "-m", "uvicorn", "apps.server:create_app", "--factory"]
    proc = start_process([*command, "--host", "127.0.0.1", "--port", str(port)], env, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, proc, log_path, STARTUP_TIMEOUT_S)
        yield base
    finally:
        stop_process(proc, timeout=20)
    assert "Traceback" not in log_path.read_text(), log_path.read_text()


@pytest.fixture(scope="module")
def settings(
    tiny_model_dir: Path, tiny_adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return Settings(
        environment="test",
        data_dir=tmp_path_factory.mktemp("local") / "data",
        base_model=str(tiny_model_dir),
        adapters_dir=tiny_adapters["alpha"].parent,
        admin_key="test-admin-key",
    )


@pytest.fixture(scope="module")
def local(settings: Settings) -> Iterator[LocalEngine]:
    """The reference: the same model files in this process."""
    engine = LocalEngine(settings)
    engine.warm_up()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def remote(settings: Settings, remote_url: str) -> Iterator[RemoteEngine]:
    engine = RemoteEngine(settings, RemoteSettings(url=remote_url, api_key=SecretStr(REMOTE_KEY), startup_wait_s=0))
    engine.warm_up()
    yield engine
    engine.close()


def test_the_remote_serves_the_same_models(remote: RemoteEngine, local: LocalEngine) -> None:
    assert [m["id"] for m in remote.list_models()] == [m["id"] for m in local.list_models()]
    assert remote.base_model_name == local.base_model_name
    assert [(a.name, a.rank) for a in remote.adapters()] == [(a.name, a.rank) for a in local.adapters()]


@pytest.mark.parametrize("model", ["base", "alpha"])
def test_generation_is_token_for_token_the_local_one(remote: RemoteEngine, local: LocalEngine, model: str) -> None:
    cases: list[tuple[Prompt, SamplingParams]] = [
        (CHAT, SamplingParams(max_new_tokens=16)),
        ("The market fell", SamplingParams(max_new_tokens=12, ignore_eos=True)),
        (CHAT, SamplingParams(max_new_tokens=16, stop=("e",))),
    ]
    for prompt, params in cases:
        near = local.generate(prompt, model=model, params=params)
        far = remote.generate(prompt, model=model, params=params)
        assert (far.text, far.token_ids, far.finish_reason) == (near.text, near.token_ids, near.finish_reason)
        assert (far.prompt_tokens, far.completion_tokens) == (near.prompt_tokens, near.completion_tokens)
    deltas: list[str] = []
    streamed = remote.generate(CHAT, model=model, params=SamplingParams(max_new_tokens=16), on_delta=deltas.append)
    near = local.generate(CHAT, model=model, params=SamplingParams(max_new_tokens=16))
    assert "".join(deltas) == streamed.text == near.text and streamed.token_ids == near.token_ids


@pytest.mark.parametrize("model", ["base", "alpha"])
def test_scores_equal_the_local_ones(remote: RemoteEngine, local: LocalEngine, model: str) -> None:
    for labels in (LABELS, ["yes", "yesterday"]):  # first-token pooling, and whole-label likelihood
        near = local.score_labels(TEXTS, labels, model=model)
        far = remote.score_labels(TEXTS, labels, model=model)
        for a, b in zip(near, far, strict=True):
            assert b == pytest.approx(a, abs=1e-5)
    near_c = local.score_continuations(CHAT, CANDIDATES, model=model, answer_labels=["Yes", "No"])
    far_c = remote.score_continuations(CHAT, CANDIDATES, model=model, answer_labels=["Yes", "No"])
    for here, there in zip(near_c, far_c, strict=True):
        assert there.n_tokens == here.n_tokens and there.logprob == pytest.approx(here.logprob, abs=1e-4)
        assert there.next_label_probs == pytest.approx(here.next_label_probs, abs=1e-5)


def test_the_apps_routes_run_on_the_remote_engine(remote: RemoteEngine, local: LocalEngine, settings: Settings) -> None:
    with TestClient(create_app(settings=settings, engine=remote), headers=KEYED) as front:
        r = front.post("/v1/classify", json={"model": "alpha", "texts": TEXTS, "labels": LABELS})
        assert r.status_code == 200, r.text
        for result, near in zip(r.json()["results"], local.score_labels(TEXTS, LABELS, model="alpha"), strict=True):
            assert result["scores"] == pytest.approx(near, abs=1e-5)
        chat = front.post("/v1/chat/completions", json={"model": "beta", "messages": CHAT, "max_tokens": 12})
        expected = local.generate(CHAT, model="beta", params=SamplingParams(max_new_tokens=12)).text
        assert chat.json()["choices"][0]["message"]["content"] == expected
        refused = front.post("/v1/adapters", json={"name": "gamma", "path": "alpha"})
        assert refused.status_code == 400 and "loaded on the remote server" in refused.json()["error"]["message"]
        assert front.post("/v1/classify", json={"model": "nope", "texts": TEXTS, "labels": LABELS}).status_code == 404
