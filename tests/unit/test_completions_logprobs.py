"""/v1/completions with vLLM's log-probability extensions, on the tiny random Llama: the shapes vLLM
answers with (``CompletionLogProbs``, ``prompt_logprobs`` of ``{token id: Logprob}``,
``return_token_ids``), values checked against a plain forward of the model, and the refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from apps.server import create_app
from core.config import Settings
from core.engine import LocalEngine
from core.logprobs import shared_prefixes
from tests.doubles.servers import KEYED, wait_ready

pytestmark = pytest.mark.unit

PROMPT = "The market fell sharply after the earnings report."


@pytest.fixture
def client(tiny_engine: LocalEngine, tiny_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings=tiny_settings, engine=tiny_engine), headers=KEYED) as c:
        wait_ready(c)
        yield c


def plain_logprobs(model_dir: Path, row: list[int]) -> list[float]:
    """log P(row[i] | row[:i]) for i >= 1, from one plain forward of the base model loaded afresh."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([row])).logits[0].float()  # [len, vocab]
    return torch.log_softmax(logits, -1)[torch.arange(len(row) - 1), torch.tensor(row[1:])].tolist()


def completion(client: TestClient, **body: Any) -> dict[str, Any]:
    r = client.post("/v1/completions", json={"model": "base", **body})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_echo_scores_a_text_prompt_in_vllm_shape(
    client: TestClient, tiny_engine: LocalEngine, tiny_model_dir: Path
) -> None:
    body = completion(client, prompt=PROMPT, echo=True, max_tokens=0, logprobs=2)
    ids = tiny_engine.tokenize(PROMPT)
    (choice,) = body["choices"]
    assert choice["text"] == PROMPT and choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(ids)
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert "".join(lp["tokens"]) == PROMPT and lp["text_offset"][0] == 0
    assert lp["token_logprobs"][1:] == pytest.approx(plain_logprobs(tiny_model_dir, ids), abs=1e-5)
    for token, value, top in zip(lp["tokens"][1:], lp["token_logprobs"][1:], lp["top_logprobs"][1:], strict=True):
        assert top[token] == value and 2 <= len(top) <= 3  # the token itself and the 2 most likely
    # with echo, `logprobs` also asks for vLLM's prompt_logprobs (keyed by token id)
    prompt_lp = choice["prompt_logprobs"]
    assert prompt_lp[0] is None and len(prompt_lp) == len(ids)
    own = prompt_lp[1][str(ids[1])]
    assert set(own) == {"logprob", "rank", "decoded_token"} and own["logprob"] == lp["token_logprobs"][1]
    assert {1, 2} <= {v["rank"] for v in prompt_lp[1].values()}  # the 2 most likely are there too


def test_token_id_prompts_are_scored_in_one_request(client: TestClient, tiny_engine: LocalEngine) -> None:
    rows = [tiny_engine.tokenize(PROMPT), tiny_engine.tokenize("Where is my order?")]
    body = completion(client, model="alpha", prompt=rows, echo=True, max_tokens=0, prompt_logprobs=0)
    assert [c["index"] for c in body["choices"]] == [0, 1] and body["choices"][0]["logprobs"] is None
    prefix, cont = [{"role": "user", "content": "Where is my order?"}], " It has shipped."
    row = tiny_engine.tokenize(tiny_engine.render(prefix)) + tiny_engine.tokenize(cont)
    (choice,) = completion(client, model="alpha", prompt=row, echo=True, max_tokens=0, prompt_logprobs=0)["choices"]
    assert all(len(entry) == 1 for entry in choice["prompt_logprobs"][1:])  # 0 alternatives: the token only
    start = len(row) - len(tiny_engine.tokenize(cont))
    total = sum(choice["prompt_logprobs"][p][str(row[p])]["logprob"] for p in range(start, len(row)))
    (expected,) = tiny_engine.score_continuations(prefix, [cont], model="alpha")  # the adapter applies
    assert total == pytest.approx(expected.logprob, abs=1e-4)


def test_generation_with_logprobs_and_token_ids(client: TestClient, tiny_engine: LocalEngine) -> None:
    plain = completion(client, prompt=PROMPT, max_tokens=6, ignore_eos=True)
    body = completion(client, prompt=PROMPT, max_tokens=6, ignore_eos=True, logprobs=1, return_token_ids=True)
    (choice,) = body["choices"]
    assert choice["text"] == plain["choices"][0]["text"] and body["usage"]["completion_tokens"] == 6
    assert choice["prompt_token_ids"] == tiny_engine.tokenize(PROMPT) and len(choice["token_ids"]) == 6
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == 6 and None not in lp["token_logprobs"]
    for value, top in zip(lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert value == pytest.approx(max(top.values()))  # greedy: each token is the most likely one
    assert choice["prompt_logprobs"] is None
    echoed = completion(client, prompt=PROMPT, max_tokens=6, ignore_eos=True, echo=True, logprobs=0)["choices"][0]
    assert echoed["text"] == PROMPT + choice["text"]
    assert len(echoed["logprobs"]["tokens"]) == len(choice["prompt_token_ids"]) + 6
    as_ids = completion(client, prompt=PROMPT, max_tokens=3, logprobs=0, return_tokens_as_token_ids=True)["choices"][0]
    assert all(t.startswith("token_id:") for t in as_ids["logprobs"]["tokens"])


def test_streamed_token_ids_come_in_the_last_chunk(client: TestClient) -> None:
    req = {"model": "beta", "prompt": PROMPT, "max_tokens": 8, "return_token_ids": True}
    plain = completion(client, **req)["choices"][0]
    r = client.post("/v1/completions", json={**req, "stream": True})
    assert r.status_code == 200
    events = [line[len("data: ") :] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e)["choices"][0] for e in events[:-1]]
    assert chunks[0]["prompt_token_ids"] == plain["prompt_token_ids"]
    assert chunks[-1]["token_ids"] == plain["token_ids"] and chunks[-1]["finish_reason"] == plain["finish_reason"]
    assert "".join(c["text"] for c in chunks) == plain["text"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"prompt": [1, 2]}, 422, "token ids is scored"),
        ({"prompt": [1, 2], "echo": True, "max_tokens": 0, "logprobs": 21}, 422, "less than or equal to 20"),
        ({"prompt": PROMPT, "max_tokens": 0}, 422, "needs echo"),
        ({"prompt": PROMPT, "stream": True, "logprobs": 1}, 422, "not available with stream"),
        ({"prompt": PROMPT, "logprobs": True}, 422, "JSON number"),
        ({"prompt": [[1, 2], []], "echo": True, "max_tokens": 0}, 422, "prompt"),
        ({"prompt": [1, 10**6], "echo": True, "max_tokens": 0}, 400, "outside the vocabulary"),
        ({"prompt": [[1, 2]] * 300, "echo": True, "max_tokens": 0}, 413, "the limit is 256"),
        ({"prompt": "   ", "echo": True, "max_tokens": 0}, 400, "non-empty"),
        ({"model": "gamma", "prompt": [1, 2], "echo": True, "max_tokens": 0}, 404, "gamma"),
    ],
)
def test_refusals(client: TestClient, body: dict[str, Any], status: int, words: str) -> None:
    r = client.post("/v1/completions", json={"model": "base", **body})
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]


def test_rows_sharing_a_prefix_score_as_rows_alone(tiny_engine: LocalEngine) -> None:
    prompt = tiny_engine.tokenize(tiny_engine.render([{"role": "user", "content": PROMPT}]))
    rows = [[*prompt, t] for t in (5, 17, 300)] + [[*prompt, 40, 41, 42], [*prompt, 40], tiny_engine.tokenize("Hi")]
    assert shared_prefixes(rows) == [([0, 1, 2, 3, 4], len(prompt)), ([5], 0)]
    together = tiny_engine.submit_prompt_logprobs(rows, model="alpha", top_k=3).result()
    for row, scored in zip(rows, together, strict=True):
        (alone,) = tiny_engine.submit_prompt_logprobs([row], model="alpha", top_k=3).result()
        assert scored.token_ids == row and scored.positions[0] is None
        for a, b in zip(alone.positions[1:], scored.positions[1:], strict=True):
            assert a is not None and b is not None
            assert b.token.logprob == pytest.approx(a.token.logprob, abs=1e-4) and b.token.rank == a.token.rank
            assert [t.token_id for t in b.top] == [t.token_id for t in a.top]
