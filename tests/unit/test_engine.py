"""The engine on a tiny random Llama: decoding modes, streaming, label and continuation scoring."""

from __future__ import annotations

import pytest
import torch

from core.engine import LocalEngine
from core.errors import AdapterNotFoundError, InputTooLargeError, InvalidRequestError
from core.sampling import SamplingParams

pytestmark = pytest.mark.unit

CHAT = [{"role": "user", "content": "Where is my order?"}]


def test_greedy_is_deterministic_and_respects_max_tokens(tiny_engine: LocalEngine) -> None:
    params = SamplingParams(max_new_tokens=7, ignore_eos=True)
    a = tiny_engine.generate(CHAT, params=params)
    b = tiny_engine.generate(CHAT, params=params)
    assert a.token_ids == b.token_ids
    assert a.completion_tokens == 7
    assert a.finish_reason == "length"
    assert a.prompt_tokens == len(tiny_engine.tokenize(tiny_engine.render(CHAT)))


def test_greedy_matches_a_plain_forward_loop(tiny_engine: LocalEngine) -> None:
    """Our KV-cached decode loop picks the same tokens as recomputing the whole sequence each step."""
    model = tiny_engine.registry.base_model  # no adapter: plain base
    ids = tiny_engine.tokenize(tiny_engine.render(CHAT))
    expected = []
    with torch.inference_mode():
        seq = torch.tensor([ids])
        for _ in range(6):
            nxt = int(model(input_ids=seq).logits[0, -1].argmax())
            expected.append(nxt)
            seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
    got = tiny_engine.generate(CHAT, params=SamplingParams(max_new_tokens=6, ignore_eos=True))
    assert got.token_ids == expected


def test_sampling_with_a_seed_is_reproducible(tiny_engine: LocalEngine) -> None:
    params = SamplingParams(max_new_tokens=12, temperature=1.5, top_p=0.95, seed=42, ignore_eos=True)
    runs = [tiny_engine.generate(CHAT, params=params).token_ids for _ in range(2)]
    other = tiny_engine.generate(CHAT, params=SamplingParams(**{**params.__dict__, "seed": 7})).token_ids
    assert runs[0] == runs[1]
    assert other != runs[0]


def test_beam_search_runs_per_adapter(tiny_engine: LocalEngine) -> None:
    params = SamplingParams(max_new_tokens=6, num_beams=3)
    out = {m: tiny_engine.generate(CHAT, model=m, params=params) for m in ("base", "alpha")}
    assert all(c.completion_tokens >= 1 for c in out.values())


def test_streaming_deltas_concatenate_to_the_text(tiny_engine: LocalEngine) -> None:
    deltas: list[str] = []
    params = SamplingParams(max_new_tokens=16, ignore_eos=True)
    final = tiny_engine.generate(CHAT, model="beta", params=params, on_delta=deltas.append)
    assert len(deltas) > 1
    assert "".join(deltas) == final.text


def test_stop_string_truncates_and_is_never_streamed(tiny_engine: LocalEngine) -> None:
    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    full = tiny_engine.generate(CHAT, params=params).text
    assert len(full) > 6
    stop = full[3:6]
    deltas: list[str] = []
    got = tiny_engine.generate(
        CHAT, params=SamplingParams(max_new_tokens=24, ignore_eos=True, stop=(stop,)), on_delta=deltas.append
    )
    assert got.finish_reason == "stop"
    assert got.text == full[: full.find(stop)]
    assert "".join(deltas) == got.text


def test_adapters_change_outputs(tiny_engine: LocalEngine) -> None:
    texts = ["the market fell sharply", "shares rose on merger news"]
    labels = ["negative", "neutral", "positive"]
    probs = {m: tiny_engine.score_labels(texts, labels, model=m) for m in ("base", "alpha", "beta")}
    assert probs["alpha"] != probs["base"]
    assert probs["beta"] != probs["alpha"]
    for rows in probs.values():
        for row in rows:
            assert set(row) == set(labels)
            assert sum(row.values()) == pytest.approx(1.0, abs=1e-5)


def test_unknown_adapter_is_an_error_not_a_fallback(tiny_engine: LocalEngine) -> None:
    with pytest.raises(AdapterNotFoundError, match="available: base, alpha, beta"):
        tiny_engine.generate(CHAT, model="nope")
    with pytest.raises(AdapterNotFoundError):
        tiny_engine.score_labels(["x"], ["a", "b"], model="nope")


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda e: e.generate([]), InvalidRequestError),
        (lambda e: e.generate([{"role": "user", "content": "   "}]), InvalidRequestError),
        (lambda e: e.generate([{"role": "wizard", "content": "hi"}]), InvalidRequestError),
        (lambda e: e.generate("x" * 1_000_000), InputTooLargeError),
        (lambda e: e.generate("hi", params=SamplingParams(max_new_tokens=5000)), InvalidRequestError),
        (lambda e: e.score_labels([], ["a", "b"]), InvalidRequestError),
        (lambda e: e.score_labels(["x"], ["only"]), InvalidRequestError),
        (lambda e: e.score_labels(["x"], ["a", "a"]), InvalidRequestError),
        (lambda e: e.score_labels(["x"] * 1000, ["a", "b"]), InputTooLargeError),
        (lambda e: e.score_continuations("prefix", []), InvalidRequestError),
        (lambda e: e.score_continuations("prefix", ["ok"], answer_labels=["Yes"]), InvalidRequestError),
    ],
)
def test_bad_input_raises_clear_errors(tiny_engine: LocalEngine, call, error) -> None:
    with pytest.raises(error):
        call(tiny_engine)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_new_tokens": 0},
        {"temperature": -1},
        {"temperature": 9},
        {"top_p": 0},
        {"num_beams": 2, "temperature": 0.5},
        {"stop": ("",)},
        {"stop": tuple("abcdefghij")},
    ],
)
def test_sampling_params_reject_nonsense(kwargs) -> None:
    with pytest.raises(InvalidRequestError):
        SamplingParams(**kwargs)


def test_labels_sharing_a_first_token_fall_back_to_full_likelihood(tiny_engine: LocalEngine) -> None:
    labels = ["market up", "market down"]
    [probs] = tiny_engine.score_labels(["shares rose"], labels)
    assert set(probs) == set(labels)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)


def test_score_continuations_match_independent_forward_passes(tiny_engine: LocalEngine) -> None:
    prefix = "Customers who liked this movie also liked"
    conts = [" the market", " a refund for the damaged item", " Yes"]
    scores = tiny_engine.score_continuations(prefix, conts, model="alpha", answer_labels=["Yes", "No"])
    registry = tiny_engine.registry
    p_ids = tiny_engine.tokenize(prefix)
    with torch.inference_mode():
        for cont, score in zip(conts, scores, strict=True):
            c_ids = tiny_engine.tokenize(cont)
            ids = torch.tensor([p_ids + c_ids])
            logits = registry.model(input_ids=ids, adapter_names=[registry.resolve("alpha")]).logits[0]
            logp = torch.log_softmax(logits.float(), dim=-1)  # [seq, vocab]
            expected = sum(float(logp[len(p_ids) - 1 + j, t]) for j, t in enumerate(c_ids))
            assert score.logprob == pytest.approx(expected, abs=1e-3)
            assert score.n_tokens == len(c_ids)
            assert sum(score.next_label_probs.values()) == pytest.approx(1.0, abs=1e-5)


def test_embeddings_are_unit_vectors_and_semantic(tiny_engine: LocalEngine) -> None:
    vecs = tiny_engine.embed(["refund my order", "I want my money back", "the stock market crashed"])
    assert vecs.shape == (3, 384)
    assert abs(float((vecs**2).sum(axis=1).mean()) - 1.0) < 1e-4
    sims = vecs @ vecs.T
    assert sims[0, 1] > sims[0, 2]


def test_a_row_whose_client_went_away_stops_early(tiny_engine: LocalEngine) -> None:
    seen: list[str] = []
    out = tiny_engine.generate(
        CHAT,
        params=SamplingParams(max_new_tokens=50, ignore_eos=True),
        on_delta=seen.append,
        should_stop=lambda: len(seen) >= 3,
    )
    assert out.finish_reason == "cancelled"
    assert out.completion_tokens < 50


def test_odd_but_valid_sampling_values_never_break_a_batch(tiny_engine: LocalEngine) -> None:
    tiny = SamplingParams(max_new_tokens=4, temperature=1e-40, top_p=1e-300, seed=2**62, ignore_eos=True)
    assert tiny_engine.generate(CHAT, params=tiny).completion_tokens == 4
    with pytest.raises(InvalidRequestError, match="seed"):
        SamplingParams(seed=10**30)


def test_lone_surrogates_are_a_clear_error(tiny_engine: LocalEngine) -> None:
    with pytest.raises(InvalidRequestError, match="Unicode"):
        tiny_engine.generate([{"role": "user", "content": "hi \ud800"}])
    with pytest.raises(InvalidRequestError, match="Unicode"):
        tiny_engine.score_labels(["x"], ["a", "b\udfff"])


def test_a_message_that_is_not_an_object_is_a_clear_error(tiny_engine: LocalEngine) -> None:
    with pytest.raises(InvalidRequestError, match="each message must be an object"):
        tiny_engine.generate(["hello"])  # type: ignore[list-item]
