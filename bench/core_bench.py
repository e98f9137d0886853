"""Core benchmark: our engine and a plain baseline, side by side, in one process, on the real base.

    .venv/bin/python bench/core_bench.py            # full run (about 10 minutes on 2 CPU cores)
    .venv/bin/python bench/core_bench.py --quick    # smaller sizes (about 3 minutes)
    .venv/bin/python bench/core_bench.py --quick --device cuda

Each measurement runs our code (``core.engine.Engine``) and a baseline that a practitioner would
write without it (plain PEFT / plain transformers, one request at a time), on the same inputs, and
reports the ratio. Timed runs are repeated and the median is reported; the spread is in the JSON.
Throughput does not depend on training, so the three LoRA adapters are random (rank 16, all seven
projection modules), built fresh in a temporary folder.

Sections (the acceptance list of the issue):
  1. mixed-adapter micro-batching vs one-at-a-time with adapter switching (generate and classify)
  2. LoRA overhead: the engine's mixed-adapter batch (core's stacked LoRA, ``core.lora_stack``) vs
     the same batch on an engine with no PEFT wrapper, and a per-decode-step diagnosis (PEFT's
     per-adapter loop vs core's stacked LoRA)
  3. label scoring vs classifying by generation (batched by the engine, and one request at a time
     with plain ``generate``): speed and agreement
  4. shared-prefix continuation scoring vs independent forward passes: speed and agreement
  5. int8 dynamic quantisation vs fp32: speed and accuracy, with and without adapters

Real texts come from ../shared/data (never copied into the repo); when a file is missing the
bench says so and falls back to short built-in texts.

One thread does all the torch work. torch's CPU build uses GNU OpenMP, which gives every thread
that runs a parallel op its own worker team; once the teams hold more threads than there are
cores, libgomp stops spin-waiting between parallel regions and every op pays a futex wake-up. On
2 cores that made PEFT's many-small-op mixed-adapter forward 2-2.5x slower. So the baselines run
on the engine's own worker thread (through its batcher, as a solo job), one engine is alive at a
time, "no PEFT wrapper" is that engine with its adapters unloaded, and the little torch work the
main thread must do (building adapters, loading the baseline models) runs in a thread that exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import metrics  # noqa: E402
from core.config import Settings  # noqa: E402
from core.decoding import output_cache  # noqa: E402
from core.engine import LocalEngine  # noqa: E402
from core.lora_stack import LoraRouter  # noqa: E402
from core.model_store import is_prepared, prepare_default_model  # noqa: E402
from core.prompts import classification_prompt  # noqa: E402
from core.sampling import SamplingParams  # noqa: E402
from core.scoring import label_first_tokens  # noqa: E402
from core.tiny import build_random_lora  # noqa: E402

LABELS = ["negative", "neutral", "positive"]
ADAPTERS = ["adapter0", "adapter1", "adapter2"]
FALLBACK_SENTENCES = [
    "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007.",
    "The company said it would cut 150 jobs as demand for its paper products keeps falling.",
    "Net sales were unchanged at EUR 58 million compared with the previous quarter.",
    "Shares of the bank jumped 12 percent after it agreed to be acquired by a larger rival.",
    "The board proposes a dividend of EUR 0.50 per share for the financial year.",
    "Quarterly loss widened to $40 million as fuel costs soared and bookings slumped.",
    "The contract is worth about EUR 3 million and deliveries start in the second half of the year.",
    "Analysts expect revenue growth to slow next year as the main market matures.",
]
QUESTIONS = [
    "How do I reset my online banking password?",
    "What does a rising bond yield usually mean for stocks?",
    "Suggest a thriller movie for a rainy evening.",
    "My parcel arrived damaged. What should I do?",
    "Explain what an earnings per share figure tells an investor.",
    "Which board game is good for four players who like strategy?",
    "Can I change the delivery address after ordering?",
    "Summarise why central banks raise interest rates.",
]


# ---- small helpers ---------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    _sync(device)
    started = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - started, out


@dataclass
class Timing:
    """Seconds of each repeat of one timed run; ``median`` is what the tables report."""

    runs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def describe(self) -> dict[str, Any]:
        return {"median_s": self.median, "min_s": min(self.runs), "max_s": max(self.runs), "runs_s": self.runs}


def repeat(fn: Callable[[], Any], repeats: int, device: str) -> tuple[Timing, Any]:
    timing, out = Timing(), None
    for _ in range(repeats):
        seconds, out = timed(fn, device)
        timing.runs.append(seconds)
    return timing, out


def in_fresh_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a thread that then exits, taking its OpenMP team with it (see the docstring)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name="bench-setup")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def on_worker(engine: LocalEngine, fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    """Time ``fn`` on the engine's worker thread, as a solo job between its batches. The bench
    reaches into the engine's batcher here only so that baselines share the engine's thread."""
    return engine._batcher.submit_solo(lambda: timed(fn, device)).result()


def set_adapters(ctx: Context, engine: LocalEngine, loaded: bool) -> None:
    """Unload every adapter (the engine then runs the bare base model, no PEFT wrapper) or load them back."""
    for name in ADAPTERS:
        if loaded and not engine.has_model(name):
            engine.load_adapter(name, ctx.adapters_dir / name)
        elif not loaded and engine.has_model(name):
            engine.unload_adapter(name)


def router(engine: LocalEngine) -> LoraRouter:
    assert engine.lora is not None, "the engine is warmed up by make_engine"
    return engine.lora


def wait_all(futures: list[Future[Any]]) -> list[Any]:
    return [f.result() for f in futures]


def batch_stats(kind: str) -> tuple[float, float]:
    """(number of micro-batches, rows) the engine has run for ``kind`` so far, from its metrics."""
    count = total = 0.0
    for family in metrics.BATCH_SIZE.collect():
        for s in family.samples:
            if s.labels.get("kind") == kind and s.name.endswith("_count"):
                count = s.value
            elif s.labels.get("kind") == kind and s.name.endswith("_sum"):
                total = s.value
    return count, total


@contextmanager
def batches_seen(kind: str, into: dict[str, Any]) -> Iterator[None]:
    c0, r0 = batch_stats(kind)
    yield
    c1, r1 = batch_stats(kind)
    into["micro_batches"] = int(c1 - c0)
    into["rows_per_batch"] = (r1 - r0) / max(c1 - c0, 1)


@dataclass
class Row:
    """One line of the result table: ours vs baseline as a ratio, with its target."""

    section: str
    measurement: str
    ours: str
    baseline: str
    ratio: float | None
    target: str = ""
    met: bool | None = None
    note: str = ""


# ---- inputs ----------------------------------------------------------------------------------------


def fpb_rows(shared: Path, n: int) -> tuple[list[tuple[str, str]], str]:
    """(sentence, gold label) pairs from the Financial PhraseBank test split, or built-in sentences."""
    path = shared / "finance" / "finlora_test" / "fpb_test.jsonl"
    if not path.is_file():
        print(f"NOTE: {path} is missing; using {len(FALLBACK_SENTENCES)} built-in sentences (no gold labels)")
        return [(FALLBACK_SENTENCES[i % len(FALLBACK_SENTENCES)], "") for i in range(n)], "built-in sentences"
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            match = re.search(r"Input: (.*)\nAnswer:", item["context"], flags=re.S)
            if match and match.group(1).strip():
                rows.append((match.group(1).strip(), item["target"].strip().lower()))
            if len(rows) >= n:
                break
    return rows, str(path.relative_to(shared.parent))


def movie_history(shared: Path, tokenizer: Any, prefix_tokens: int, n_candidates: int) -> tuple[str, list[str], str]:
    """A TALLRec-style prompt prefix (one user's liked / disliked titles, about ``prefix_tokens``
    tokens) and ``n_candidates`` candidate continuations (a title with its first genre, ~15 tokens)."""
    folder = shared / "recsys" / "ml-latest-small"
    movies: dict[str, tuple[str, str]] = {}
    ratings: list[tuple[str, str, float, int]] = []
    if (folder / "movies.csv").is_file() and (folder / "ratings.csv").is_file():
        import csv

        with (folder / "movies.csv").open(encoding="utf-8") as f:
            for r in csv.DictReader(f):
                movies[r["movieId"]] = (r["title"], r["genres"].replace("|", ", "))
        with (folder / "ratings.csv").open(encoding="utf-8") as f:
            for r in csv.DictReader(f):
                ratings.append((r["userId"], r["movieId"], float(r["rating"]), int(r["timestamp"])))
        source = str(folder.relative_to(shared.parent))
    else:
        print(f"NOTE: {folder} is missing; using synthetic movie titles")
        for i in range(400):
            movies[str(i)] = (f"Synthetic Feature Film Number {i} ({1950 + i % 70})", "Drama, Comedy")
            ratings.append(("1", str(i), float(1 + i % 5), i))
        source = "synthetic titles"
    by_user: dict[str, list[tuple[int, str, float]]] = {}
    for user, movie, rating, ts in ratings:
        by_user.setdefault(user, []).append((ts, movie, rating))
    user = max(by_user, key=lambda u: len(by_user[u]))  # the longest history: enough of both kinds
    history = sorted(by_user[user])
    liked = [movies[m][0] for _, m, r in history if r >= 4.0 and m in movies]
    disliked = [movies[m][0] for _, m, r in history if r <= 2.0 and m in movies]
    head = (
        "Given the user's preference and unpreference, identify whether the user will like the "
        'target movie by answering "Yes" or "No".\n'
    )

    def render(n_like: int, n_dislike: int) -> str:
        likes = ", ".join(f'"{t}"' for t in liked[:n_like])
        dislikes = ", ".join(f'"{t}"' for t in disliked[:n_dislike])
        return f"{head}User Preference: {likes}\nUser Unpreference: {dislikes}\nWhether the user will like the target movie"

    n_like = n_dislike = 1
    while len(tokenizer.encode(render(n_like, n_dislike))) < prefix_tokens:
        if n_dislike < len(disliked) and n_dislike * 2 < n_like:
            n_dislike += 1
        elif n_like < len(liked):
            n_like += 1
        else:
            break
    prefix = render(n_like, n_dislike)
    seen = {m for _, m, _ in history}
    unseen = [m for m in movies if m not in seen]
    step = max(len(unseen) // n_candidates, 1)
    candidates = [f' "{movies[m][0]}" ({movies[m][1].split(",")[0]})?' for m in unseen[::step]]
    return prefix, candidates[:n_candidates], source


# ---- setup -----------------------------------------------------------------------------------------


def machine_info(device: str) -> dict[str, Any]:
    import peft
    import transformers

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu_model": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "loadavg_start": os.getloadavg(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def make_engine(base: Path, device: Any, *, adapters_dir: Path | None, quantization: Any = "none") -> LocalEngine:
    settings = Settings(
        base_model=str(base),
        adapters_dir=adapters_dir,
        load_adapters_on_start=adapters_dir is not None,
        quantization=quantization,
        device=device,
        max_batch_size=32,
        # 32 requests submitted in a loop take a few ms to render and tokenise; a 50 ms window makes
        # sure they meet in one micro-batch (the measured batch sizes are in the JSON).
        batch_wait_ms=50,
    )
    engine = LocalEngine(settings)
    # warm_up loads (and with int8 quantises) on the calling thread: keep that off the main thread
    in_fresh_thread(engine.warm_up)
    return engine


def load_plain(base: Path, device: str, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    return model.to(device).eval()


def load_peft(base: Path, adapters_dir: Path, device: str, dtype: torch.dtype) -> Any:
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_plain(base, device, dtype), str(adapters_dir / ADAPTERS[0]), ADAPTERS[0])
    for name in ADAPTERS[1:]:
        model.load_adapter(str(adapters_dir / name), adapter_name=name)
    return model.eval()


@dataclass(frozen=True)
class Sizes:
    requests: int = 32  # concurrent requests of a micro-batched run
    new_tokens: int = 64
    repeats: int = 3  # timed repeats per measurement; the median is reported
    baseline_requests: int = 6  # one-at-a-time generate is a per-request rate: a sample suffices
    score_texts: int = 64  # section 3
    continuation_baseline: int = 24  # section 4: baseline forwards sampled out of the 50
    fpb_rows: int = 256  # section 5: label agreement and scoring speed
    ppl_sentences: int = 200  # section 5: perplexity
    decode_steps: int = 8  # section 2: decode steps timed per variant and repeat


FULL = Sizes()
QUICK = Sizes(
    new_tokens=16,
    repeats=2,
    baseline_requests=2,
    score_texts=32,
    continuation_baseline=8,
    fpb_rows=32,
    ppl_sentences=32,
    decode_steps=4,
)


@dataclass
class Context:
    args: argparse.Namespace
    sizes: Sizes
    device: str
    dtype: torch.dtype
    base: Path
    adapters_dir: Path
    shared: Path
    results: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)


# ---- 1 + 2. mixed-adapter micro-batching vs one at a time; LoRA overhead --------------------------


def chat(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} (request {i})"}]


def engine_generate(engine: LocalEngine, models: list[str], new_tokens: int) -> list[Any]:
    """All requests submitted at once, as concurrent callers would; returns their completions."""
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    futures = [engine.submit_generate(chat(i), model=m, params=params) for i, m in enumerate(models)]
    return wait_all(futures)


@torch.inference_mode()
def peft_generate_one(
    peft_model: Any, ids: list[int], adapter: str, new_tokens: int, pad_id: int, device: str
) -> list[int]:
    """Baseline: switch the active adapter, then plain ``generate`` for one request."""
    peft_model.set_adapter(adapter)
    x = torch.tensor([ids], device=device)  # [1, seq]
    out = peft_model.generate(
        input_ids=x,
        attention_mask=torch.ones_like(x),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=pad_id,
    )
    return [int(t) for t in out[0, x.shape[1] :]]


def section_generate(ctx: Context, engine: LocalEngine, peft_model: Any) -> None:
    """Engine runs (mixed adapters; base rows through the PEFT wrapper; base with the adapters
    unloaded, i.e. no PEFT wrapper) and one-at-a-time PEFT requests, interleaved round by round so
    that machine noise hits all of them alike."""
    sz, res = ctx.sizes, ctx.results.setdefault("1_generate_mixed", {})
    n, new = sz.requests, sz.new_tokens
    mixed_models = [ADAPTERS[i % 3] for i in range(n)]
    variants = {
        "mixed_3_adapters": (True, mixed_models),
        "base_via_peft_engine": (True, ["base"] * n),
        "base_no_peft_engine": (False, ["base"] * n),
    }
    ids = [engine.tokenize(engine.render(chat(i))) for i in range(sz.baseline_requests)]
    pad = engine.tokenizer.pad_token_id

    def baseline(i: int, tokens: int = new) -> list[int]:
        return peft_generate_one(peft_model, ids[i], mixed_models[i], tokens, pad, ctx.device)

    engine_generate(engine, mixed_models[:3], new_tokens=4)  # warm-up
    on_worker(engine, lambda: baseline(0, 4), ctx.device)

    timings = {k: Timing() for k in variants}
    completions: dict[str, list[Any]] = {}
    one_at_a_time, baseline_out = Timing(), list[list[int]]()
    per_round = math.ceil(sz.baseline_requests / sz.repeats)
    c0, r0 = batch_stats("generate")
    paths0 = Counter(router(engine).paths)
    for _ in range(sz.repeats):
        for key, (loaded, models) in variants.items():
            set_adapters(ctx, engine, loaded)
            seconds, completions[key] = timed(partial(engine_generate, engine, models, new), ctx.device)
            timings[key].runs.append(seconds)
        set_adapters(ctx, engine, True)
        for i in range(len(baseline_out), min(len(baseline_out) + per_round, sz.baseline_requests)):
            seconds, out = on_worker(engine, partial(baseline, i), ctx.device)
            one_at_a_time.runs.append(seconds)
            baseline_out.append(out)
    c1, r1 = batch_stats("generate")
    paths = dict(router(engine).paths - paths0)

    tps = {k: n * new / t.median for k, t in timings.items()}
    baseline_tps = new / one_at_a_time.median  # one at a time: a per-request rate, so a sample suffices
    mixed = completions["mixed_3_adapters"]
    same = sum(out == mixed[i].token_ids for i, out in enumerate(baseline_out))
    common = [
        next((j for j, (a, b) in enumerate(zip(out, mixed[i].token_ids, strict=False)) if a != b), len(out))
        for i, out in enumerate(baseline_out)
    ]
    res.update(
        requests=n,
        new_tokens=new,
        micro_batches_per_run=(c1 - c0) / (len(variants) * sz.repeats),
        rows_per_micro_batch=(r1 - r0) / max(c1 - c0, 1),
        engine={k: t.describe() for k, t in timings.items()},
        engine_tokens_per_s=tps,
        baseline="PEFT: set_adapter(name) + generate(min_new_tokens=max_new_tokens, greedy), one request at a time",
        baseline_requests_sampled=len(baseline_out),
        baseline_per_request=one_at_a_time.describe(),
        baseline_tokens_per_s=baseline_tps,
        speedup=tps["mixed_3_adapters"] / baseline_tps,
        greedy_identical_to_baseline=f"{same}/{len(baseline_out)}",
        greedy_common_prefix_tokens=common,
    )
    speedup = res["speedup"]
    ctx.rows.append(
        Row(
            "1",
            f"generate: {n} concurrent, 3 adapters, {new} tok",
            f"{tps['mixed_3_adapters']:.1f} tok/s",
            f"{baseline_tps:.1f} tok/s",
            speedup,
            ">= 5x",
            speedup >= 5,
            f"baseline: PEFT set_adapter + generate, one at a time; greedy identical {same}/{len(baseline_out)}",
        )
    )
    overhead = tps["base_no_peft_engine"] / tps["mixed_3_adapters"] - 1  # extra wall time of the mixed batch
    wrapper = tps["base_no_peft_engine"] / tps["base_via_peft_engine"] - 1
    ctx.results["2_lora_overhead"] = {
        "baseline": f"the same {n} requests with model='base' on the engine with its adapters unloaded (no PEFT wrapper)",
        "lora_overhead": overhead,
        "peft_wrapper_overhead_base_rows": wrapper,
        "tokens_per_s": tps,
        "engine_lora_paths": paths,  # core.lora_stack.LoraRouter: batches per path during these runs
    }
    ctx.rows.append(
        Row(
            "2",
            "LoRA overhead: mixed 3-adapter batch vs no-PEFT engine",
            f"{tps['mixed_3_adapters']:.1f} tok/s",
            f"{tps['base_no_peft_engine']:.1f} tok/s",
            tps["mixed_3_adapters"] / tps["base_no_peft_engine"],
            "overhead < 30%",
            overhead < 0.30,
            f"overhead {overhead:+.0%}; model='base' rows through the PEFT engine: {wrapper:+.0%}; "
            f"engine LoRA paths {paths}",
        )
    )


@torch.inference_mode()
def peft_label_probs(model: Any, ids: list[int], label_tokens: list[list[int]], device: str) -> list[float]:
    """One forward of one prompt; label probabilities pooled over first-token variants, as the engine."""
    logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, -1].float()  # [vocab]
    logprobs = torch.log_softmax(logits, dim=-1)
    pooled = torch.stack([torch.logsumexp(logprobs[t], dim=0) for t in label_tokens])  # [labels]
    return torch.softmax(pooled, dim=0).tolist()


def section_classify(ctx: Context, engine: LocalEngine, peft_model: Any, texts: list[str]) -> None:
    n, res = 32, ctx.results.setdefault("1_classify_mixed", {})
    texts = texts[:n]
    models = [ADAPTERS[i % 3] for i in range(n)]

    def run() -> list[dict[str, float]]:
        futures = [engine.submit_score_labels([t], LABELS, model=m) for t, m in zip(texts, models, strict=True)]
        return [r[0] for r in wait_all(futures)]

    label_tokens = label_first_tokens(engine.tokenizer, LABELS)
    assert label_tokens is not None
    prompts = [engine.tokenize(classification_prompt(engine.tokenizer, t, LABELS)) for t in texts]

    def one(i: int) -> list[float]:
        peft_model.set_adapter(models[i])
        return peft_label_probs(peft_model, prompts[i], label_tokens, ctx.device)

    run()  # warm-up
    on_worker(engine, lambda: one(0), ctx.device)
    timing, per_item, baseline_probs = Timing(), Timing(), list[list[float]]()
    per_round = math.ceil(n / ctx.sizes.repeats)
    with batches_seen("labels", res):
        for _ in range(ctx.sizes.repeats):  # interleaved with the baseline
            seconds, scores = timed(run, ctx.device)
            timing.runs.append(seconds)
            for i in range(len(baseline_probs), min(len(baseline_probs) + per_round, n)):
                seconds, probs = on_worker(engine, partial(one, i), ctx.device)
                per_item.runs.append(seconds)
                baseline_probs.append(probs)
    ours = n / timing.median
    max_diff = max(
        abs(p - s[label])
        for b, s in zip(baseline_probs, scores, strict=True)
        for p, label in zip(b, LABELS, strict=True)
    )
    baseline = 1 / per_item.median
    res.update(
        texts=n,
        source=ctx.results["inputs"]["fpb"],
        engine=timing.describe(),
        engine_texts_per_s=ours,
        baseline_per_text=per_item.describe(),
        baseline_texts_per_s=baseline,
        speedup=ours / baseline,
        max_abs_prob_diff_vs_baseline=max_diff,
    )
    ctx.rows.append(
        Row(
            "1",
            "classify: 32 concurrent, 3 adapters",
            f"{ours:.1f} texts/s",
            f"{baseline:.1f} texts/s",
            ours / baseline,
            "report",
            None,
            f"baseline: set_adapter + one forward each; max |Δp| {max_diff:.1e}",
        )
    )


# ---- 2. diagnosis of the LoRA overhead -----------------------------------------------------------


@torch.inference_mode()
def decode_step_ms(model: Any, ids: torch.Tensor, kwargs: dict[str, Any], steps: int) -> float:
    """Median wall time of one decode step (one new token for every row) after a prefill of ``ids``."""
    out = model(input_ids=ids, use_cache=True, **kwargs)
    cache, token = output_cache(out), out.logits[:, -1].argmax(-1)[:, None]  # [batch, 1]
    times = []
    for _ in range(steps):
        seconds, out = timed(lambda: model(input_ids=token, cache=cache, use_cache=True, **kwargs), str(ids.device))
        times.append(seconds)
    return 1000 * statistics.median(times)


def section_lora_diagnosis(ctx: Context, engine: LocalEngine, plain: Any, peft_model: Any) -> None:
    """Per-decode-step cost at batch 32: where the LoRA overhead comes from, and what core does about
    it. PEFT's mixed-batch forward runs on the bench's own PEFT model; core's stacked LoRA on the
    engine's model, through the router the engine opens around every batch (same adapters, same base)."""
    res = ctx.results.setdefault("2_lora_decode_step_ms", {})
    set_adapters(ctx, engine, True)
    lora, registry = router(engine), engine.registry
    assert registry is not None
    batch, steps = 32, ctx.sizes.decode_steps
    ids = torch.randint(100, 5000, (batch, 16), generator=torch.Generator().manual_seed(0)).to(ctx.device)
    rows = [ADAPTERS[i % 3] for i in range(batch)]
    variants = ("no_peft", "peft_mixed", "peft_base_rows", "core_stacked", "core_base_rows")
    samples: dict[str, list[float]] = {k: [] for k in variants}

    def core(names: list[str], core_steps: int) -> Any:
        with lora.rows(names) as adapters:
            if core_steps:
                return decode_step_ms(registry.model, ids, adapters.kwargs, core_steps)
            with torch.inference_mode():
                return registry.model(input_ids=ids, **adapters.kwargs).logits.float()  # [batch, seq, vocab]

    def one_round() -> None:
        samples["no_peft"].append(decode_step_ms(plain, ids, {}, steps))
        samples["peft_mixed"].append(decode_step_ms(peft_model, ids, {"adapter_names": rows}, steps))
        samples["peft_base_rows"].append(
            decode_step_ms(peft_model, ids, {"adapter_names": ["__base__"] * batch}, steps)
        )
        samples["core_stacked"].append(core(rows, steps))
        samples["core_base_rows"].append(core(["base"] * batch, steps))

    for _ in range(ctx.sizes.repeats):  # interleaved, so that machine noise hits every variant alike
        on_worker(engine, one_round, ctx.device)

    @torch.inference_mode()
    def max_diff() -> float:  # core must give PEFT's numbers: compare one prefill's logits
        reference = peft_model(input_ids=ids, adapter_names=rows).logits.float()  # [batch, seq, vocab]
        return float((reference - core(rows, 0)).abs().max())

    _, core_diff = on_worker(engine, max_diff, ctx.device)
    medians = {k: statistics.median(v) for k, v in samples.items()}
    overhead = {k: medians[k] / medians["no_peft"] - 1 for k in variants if k != "no_peft"}
    res.update(
        batch=batch,
        ms=medians,
        runs=samples,
        overhead_vs_no_peft=overhead,
        core_stacked_max_abs_logit_diff_vs_peft=core_diff,
    )
    ctx.rows.append(
        Row(
            "2",
            "decode step, batch 32, 3 adapters: core stacked LoRA vs PEFT loop",
            f"{medians['core_stacked']:.0f} ms",
            f"{medians['peft_mixed']:.0f} ms",
            medians["peft_mixed"] / medians["core_stacked"],
            "diagnosis",
            None,
            f"no PEFT {medians['no_peft']:.0f} ms: overhead PEFT {overhead['peft_mixed']:+.0%}, "
            f"core {overhead['core_stacked']:+.0%}; base rows PEFT {overhead['peft_base_rows']:+.0%}, "
            f"core {overhead['core_base_rows']:+.0%}; max |Δ logit| {core_diff:.1e}",
        )
    )


# ---- 3. label scoring vs generation ----------------------------------------------------------------


def generated_label(text: str, *, strict: bool) -> str | None:
    """The label a generated answer names: its first word (strict), or the first label word in it."""
    words = re.findall(r"[a-z]+", text.lower())
    if strict:
        return words[0] if words and words[0] in LABELS else None
    return next((w for w in words if w in LABELS), None)


@torch.inference_mode()
def hf_generate_one(model: Any, ids: list[int], new_tokens: int, pad_id: int, device: str) -> list[int]:
    """Baseline: plain greedy ``generate`` for one prompt, stopping at EOS or ``new_tokens``."""
    x = torch.tensor([ids], device=device)  # [1, seq]
    out = model.generate(
        input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id
    )
    return [int(t) for t in out[0, x.shape[1] :]]


def section_score_vs_generate(ctx: Context, engine: LocalEngine, plain: Any, rows: list[tuple[str, str]]) -> None:
    """score_labels against two ways of classifying by generation: the engine's batched generate, and
    one request at a time with plain transformers ``generate`` (the code you would write without
    the engine). Both parse the label out of the generated text."""
    res = ctx.results.setdefault("3_score_vs_generate", {})
    texts = [t for t, _ in rows]
    prompts = [classification_prompt(engine.tokenizer, t, LABELS) for t in texts]
    prompt_ids = [engine.tokenize(p) for p in prompts]
    new = 4  # any label word, capitalised or not, after a newline: at most 3 SmolLM2 tokens
    params = SamplingParams(max_new_tokens=new)
    pad = engine.tokenizer.pad_token_id

    def score() -> list[dict[str, float]]:
        futures = [engine.submit_score_labels(texts[i : i + 32], LABELS) for i in range(0, len(texts), 32)]
        return [p for chunk in wait_all(futures) for p in chunk]

    def generate() -> list[Any]:
        return wait_all([engine.submit_generate(p, params=params) for p in prompts])

    def one(i: int) -> str:
        out = hf_generate_one(plain, prompt_ids[i], new, pad, ctx.device)
        return str(engine.tokenizer.decode(out, skip_special_tokens=True))

    score()  # warm-up
    on_worker(engine, lambda: one(0), ctx.device)
    t_score, t_gen, t_one, one_texts = Timing(), Timing(), Timing(), list[str]()
    per_round = math.ceil(len(texts) / ctx.sizes.repeats)
    for _ in range(ctx.sizes.repeats):  # interleaved
        seconds, probs = timed(score, ctx.device)
        t_score.runs.append(seconds)
        seconds, completions = timed(generate, ctx.device)
        t_gen.runs.append(seconds)
        for i in range(len(one_texts), min(len(one_texts) + per_round, len(texts))):
            seconds, text = on_worker(engine, partial(one, i), ctx.device)
            t_one.runs.append(seconds)
            one_texts.append(text)
    scored = [max(p, key=p.__getitem__) for p in probs]
    gen_texts = [c.text for c in completions]
    gold = [g for _, g in rows]

    def share(a: list[Any], b: list[Any]) -> float:
        return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)

    def parsed(generated: list[str]) -> dict[str, Any]:
        strict = [generated_label(t, strict=True) for t in generated]
        lenient = [generated_label(t, strict=False) for t in generated]
        return {
            "agreement_first_word": share(scored, strict),
            "agreement_any_label_word": share(scored, lenient),
            "unparsed_first_word": sum(g is None for g in strict) / len(texts),
            "unparsed_any_word": sum(g is None for g in lenient) / len(texts),
            "accuracy_vs_gold_first_word": share(strict, gold) if all(gold) else None,
            "examples": generated[:8],
        }

    ours_rate = len(texts) / t_score.median
    rates = {"batched": len(texts) / t_gen.median, "one_at_a_time": 1 / t_one.median}
    checks = {"batched": parsed(gen_texts), "one_at_a_time": parsed(one_texts)}
    res.update(
        texts=len(texts),
        model="base, on the engine without adapters; the one-at-a-time baseline on a plain transformers model",
        prompt_tokens_mean=sum(map(len, prompt_ids)) / len(prompts),
        max_new_tokens=new,
        score_labels=t_score.describe(),
        score_labels_texts_per_s=ours_rate,
        generate_batched=t_gen.describe(),
        generate_one_at_a_time_per_text=t_one.describe(),
        generate_texts_per_s=rates,
        speedup={k: ours_rate / r for k, r in rates.items()},
        parsed=checks,
        one_at_a_time_same_text_as_batched=share(one_texts, gen_texts),
        score_labels_accuracy_vs_gold=share(scored, gold) if all(gold) else None,
    )
    titles = {
        "batched": f"score_labels vs generate(max {new}) + parse, batched by the engine",
        "one_at_a_time": f"score_labels vs HF generate(max {new}) + parse, one text at a time",
    }
    for key, title in titles.items():
        c = checks[key]
        ctx.rows.append(
            Row(
                "3",
                f"{title}, {len(texts)} FPB texts",
                f"{ours_rate:.1f} texts/s",
                f"{rates[key]:.1f} texts/s",
                ours_rate / rates[key],
                ">= 10x",
                ours_rate / rates[key] >= 10,
                f"agreement {c['agreement_first_word']:.0%} (first word; {c['unparsed_first_word']:.0%} "
                f"unparsed), {c['agreement_any_label_word']:.0%} (any label word)",
            )
        )


# ---- 4. shared-prefix continuation scoring ------------------------------------------------------


@torch.inference_mode()
def plain_continuation(model: Any, prefix: list[int], cont: list[int], answers: list[list[int]], device: str) -> Any:
    """Baseline: one full forward of prefix + continuation; the continuation's log-prob and P(answer)."""
    ids = torch.tensor([prefix + cont], device=device)  # [1, P + L]
    logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)  # [P + L, vocab]
    positions = torch.arange(len(prefix) - 1, len(prefix) + len(cont) - 1, device=device)
    total = float(logprobs[positions, torch.tensor(cont, device=device)].sum())
    pooled = torch.stack([torch.logsumexp(logprobs[-1, t], dim=0) for t in answers])
    return total, torch.softmax(pooled, dim=0)[0].item()


def section_shared_prefix(ctx: Context, engine: LocalEngine, plain: Any) -> None:
    res = ctx.results.setdefault("4_shared_prefix", {})
    prefix, candidates, source = movie_history(ctx.shared, engine.tokenizer, 558, 50)
    prefix_ids = engine.tokenize(prefix)
    cont_ids = [engine.tokenize(c) for c in candidates]
    answers = ["Yes", "No"]
    answer_tokens = label_first_tokens(engine.tokenizer, answers)
    assert answer_tokens is not None

    def ours() -> list[Any]:
        return engine.score_continuations(prefix, candidates, answer_labels=answers)

    ours()  # warm-up
    k, timing, per_item, d_lp, d_yes = ctx.sizes.continuation_baseline, Timing(), Timing(), 0.0, 0.0
    per_round = math.ceil(k / ctx.sizes.repeats)
    for _ in range(ctx.sizes.repeats):  # interleaved
        seconds, scores = timed(ours, ctx.device)
        timing.runs.append(seconds)
        for _ in range(per_round):
            i = len(per_item.runs)
            if i >= k:
                break
            seconds, (lp, p_yes) = on_worker(
                engine,
                partial(plain_continuation, plain, prefix_ids, cont_ids[i], answer_tokens, ctx.device),
                ctx.device,
            )
            per_item.runs.append(seconds)
            d_lp = max(d_lp, abs(lp - scores[i].logprob))
            d_yes = max(d_yes, abs(p_yes - (scores[i].next_label_probs or {}).get("Yes", math.nan)))
    ours_rate = len(candidates) / timing.median
    base_rate = 1 / per_item.median
    res.update(
        source=source,
        prefix_tokens=len(prefix_ids),
        continuations=len(candidates),
        continuation_tokens_mean=sum(map(len, cont_ids)) / len(cont_ids),
        engine=timing.describe(),
        engine_per_s=ours_rate,
        baseline="plain transformers forward of prefix + continuation, batch 1, one per continuation",
        baseline_items_sampled=len(per_item.runs),
        baseline_per_item=per_item.describe(),
        baseline_per_s=base_rate,
        speedup=ours_rate / base_rate,
        max_abs_logprob_diff=d_lp,
        max_abs_p_yes_diff=d_yes,
        example_continuation=candidates[0],
    )
    ctx.rows.append(
        Row(
            "4",
            f"score_continuations: {len(prefix_ids)}-tok prefix, {len(candidates)} conts",
            f"{ours_rate:.1f} conts/s",
            f"{base_rate:.1f} conts/s",
            ours_rate / base_rate,
            ">= 5x",
            ours_rate / base_rate >= 5,
            f"baseline: plain forward of prefix+cont, batch 1; max |Δ logprob| {d_lp:.1e}, |Δ P(Yes)| {d_yes:.1e}",
        )
    )


# ---- 5. int8 -------------------------------------------------------------------------------------


def score_one_each(engine: LocalEngine, pairs: list[tuple[str, str]]) -> list[dict[str, float]]:
    """One concurrent request per (text, model): they meet in one mixed-adapter micro-batch."""
    futures = [engine.submit_score_labels([t], LABELS, model=m) for t, m in pairs]
    return [r[0] for r in wait_all(futures)]


def label_chunks(
    engine: LocalEngine, texts: list[str], device: str, models: list[str] | None = None
) -> tuple[float, Any]:
    """Label probabilities of ``texts`` in chunks of 32 (one micro-batch each); texts/s from the
    median chunk time, so the chunks double as repeats. ``models``: one per text (one request per
    text, so that they mix), else every text on the base in one request per chunk."""
    probs: list[dict[str, float]] = []
    timing = Timing()
    for i in range(0, len(texts), 32):
        chunk = texts[i : i + 32]
        if models is None:
            seconds, out = timed(partial(engine.score_labels, chunk, LABELS), device)
        else:
            pairs = list(zip(chunk, models[i : i + 32], strict=True))
            seconds, out = timed(partial(score_one_each, engine, pairs), device)
        if len(chunk) == 32:
            timing.runs.append(seconds)
        probs += out
    return 32 / timing.median if timing.runs else float("nan"), probs


def perplexity(engine: LocalEngine, sentences: list[str]) -> float:
    """Token-level perplexity of the sentences after a short fixed prefix (engine's shared-prefix path)."""
    scores = engine.score_continuations("Financial news:\n", sentences)
    return math.exp(-sum(s.logprob for s in scores) / sum(s.n_tokens for s in scores))


def precision_run(ctx: Context, engine: LocalEngine, texts: list[str], sentences: list[str]) -> dict[str, Any]:
    """On the base model: generation speed at batch 1 and batch ``requests``, label scoring speed and
    label probabilities, perplexity."""
    sz = ctx.sizes
    engine_generate(engine, ["base"], 4)  # warm-up
    solo, full = Timing(), Timing()
    for _ in range(sz.repeats):
        solo.runs.append(timed(lambda: engine_generate(engine, ["base"], sz.new_tokens), ctx.device)[0])
        full.runs.append(timed(lambda: engine_generate(engine, ["base"] * sz.requests, sz.new_tokens), ctx.device)[0])
    rate, probs = label_chunks(engine, texts, ctx.device)
    # batch invariance: the first 32 texts again, each alone (a batch of one)
    alone = [engine.score_labels([t], LABELS)[0] for t in texts[:32]]
    same, _ = compare_probs(alone, probs[:32])
    return {
        "alone_vs_batched_agreement": same,
        "alone_vs_batched_max_abs_dp": max(
            abs(a[k] - b[k]) for a, b in zip(alone, probs, strict=False) for k in LABELS
        ),
        "gen_batch1_tok_s": sz.new_tokens / solo.median,
        "gen_batchN_tok_s": sz.requests * sz.new_tokens / full.median,
        "labels_texts_s": rate,
        "perplexity": perplexity(engine, sentences),
        "runs": {"batch1": solo.describe(), "batchN": full.describe()},
        "probs": probs,
    }


def precision_run_lora(ctx: Context, engine: LocalEngine, texts: list[str]) -> dict[str, Any]:
    """With the three adapters loaded: mixed-adapter label scoring and mixed generation."""
    sz = ctx.sizes
    mixed = [ADAPTERS[i % 3] for i in range(sz.requests)]
    rate, probs = label_chunks(engine, texts[: sz.requests], ctx.device, models=mixed)
    engine_generate(engine, mixed[:3], 4)  # warm-up
    timing, _ = repeat(lambda: engine_generate(engine, mixed, sz.new_tokens), sz.repeats, ctx.device)
    return {"labels_texts_s": rate, "gen_mixed_tok_s": sz.requests * sz.new_tokens / timing.median, "probs": probs}


def compare_probs(a: list[dict[str, float]], b: list[dict[str, float]]) -> tuple[float, float]:
    """(argmax agreement, mean |Δp| over every label of every row)."""
    agree = sum(max(x, key=x.__getitem__) == max(y, key=y.__getitem__) for x, y in zip(a, b, strict=True))
    diffs = [abs(x[k] - y[k]) for x, y in zip(a, b, strict=True) for k in LABELS]
    return agree / len(a), sum(diffs) / len(diffs)


def accuracy(probs: list[dict[str, float]], gold: list[str]) -> float | None:
    if not all(gold):
        return None
    return sum(max(p, key=p.__getitem__) == g for p, g in zip(probs, gold, strict=True)) / len(gold)


def section_int8(ctx: Context, fp32: LocalEngine, rows: list[tuple[str, str]], sentences: list[str]) -> None:
    """fp32 on the running engine (adapters unloaded, then loaded back), which is then closed; int8
    on a fresh engine without adapters, then on one with the adapters loaded at start. One engine
    at a time (see the module docstring), so fp32 and int8 run one after the other."""
    from core.quantize import KEEP_FLOAT

    res = ctx.results.setdefault("5_int8", {})
    if ctx.device != "cpu":
        res["skipped"] = "int8 dynamic quantisation runs on CPU only"
        return
    texts, gold, n = [t for t, _ in rows], [g for _, g in rows], ctx.sizes.requests
    set_adapters(ctx, fp32, False)
    f = precision_run(ctx, fp32, texts, sentences)
    set_adapters(ctx, fp32, True)
    f_lora = precision_run_lora(ctx, fp32, texts)
    fp32.close()

    started = time.perf_counter()
    q = make_engine(ctx.base, ctx.device, adapters_dir=None, quantization="int8")
    load_s = time.perf_counter() - started
    i8 = precision_run(ctx, q, texts, sentences)
    q.close()
    qa = make_engine(ctx.base, ctx.device, adapters_dir=ctx.adapters_dir, quantization="int8")
    i8_lora = precision_run_lora(ctx, qa, texts)
    qa.close()

    acc = {"fp32": accuracy(f["probs"], gold), "int8": accuracy(i8["probs"], gold)}
    agree, mean_dp = compare_probs(f.pop("probs"), i8.pop("probs"))
    lora_agree, lora_dp = compare_probs(f_lora.pop("probs"), i8_lora.pop("probs"))
    res.update(
        scheme=(
            "torch.ao dynamic int8: per-channel int8 weights, per-tensor dynamic activations, every base "
            f"nn.Linear incl. lm_head; kept float: {', '.join(KEEP_FLOAT)}, LoRA A/B"
        ),
        int8_load_s=load_s,
        texts=len(texts),
        perplexity_sentences=len(sentences),
        fp32=f,
        int8=i8,
        accuracy_vs_gold=acc,
        label_agreement=agree,
        mean_abs_prob_diff=mean_dp,
        with_adapters={"fp32": f_lora, "int8": i8_lora, "label_agreement": lora_agree, "mean_abs_prob_diff": lora_dp},
    )
    vs, bn = "int8 vs fp32", f"generate batch {n}"
    ctx.rows += [
        Row("5", f"{vs}: generate batch 1", f"{i8['gen_batch1_tok_s']:.1f} tok/s", f"{f['gen_batch1_tok_s']:.1f} tok/s", i8["gen_batch1_tok_s"] / f["gen_batch1_tok_s"], "report"),
        Row("5", f"{vs}: {bn}", f"{i8['gen_batchN_tok_s']:.1f} tok/s", f"{f['gen_batchN_tok_s']:.1f} tok/s", i8["gen_batchN_tok_s"] / f["gen_batchN_tok_s"], "report"),
        Row("5", f"{vs}: score_labels (batches of 32)", f"{i8['labels_texts_s']:.1f} texts/s", f"{f['labels_texts_s']:.1f} texts/s", i8["labels_texts_s"] / f["labels_texts_s"], "report"),
        Row("5", f"{vs}: zero-shot labels, {len(texts)} FPB rows", f"agree {agree:.0%}", "fp32 labels", None, "report", None, f"mean |Δp| {mean_dp:.3f}" + (f"; accuracy vs gold int8 {acc['int8']:.1%}, fp32 {acc['fp32']:.1%}" if acc["fp32"] is not None else "")),
        Row(
            "5",
            "batch invariance: same text alone vs in a batch of 32 (labels)",
            f"int8 agree {i8['alone_vs_batched_agreement']:.0%}",
            f"fp32 agree {f['alone_vs_batched_agreement']:.0%}",
            None,
            "report",
            None,
            f"max |Δp| int8 {i8['alone_vs_batched_max_abs_dp']:.3f}, fp32 {f['alone_vs_batched_max_abs_dp']:.1e}: "
            "int8 activation scales span the batch",
        ),
        Row("5", f"{vs}: perplexity, {len(sentences)} FPB sentences", f"{i8['perplexity']:.1f}", f"{f['perplexity']:.1f}", i8["perplexity"] / f["perplexity"], "report", None, "ratio > 1: int8 is worse"),
        Row(
            "5",
            f"{vs} with 3 adapters loaded at start: mixed {bn}",
            f"{i8_lora['gen_mixed_tok_s']:.1f} tok/s",
            f"{f_lora['gen_mixed_tok_s']:.1f} tok/s",
            i8_lora["gen_mixed_tok_s"] / f_lora["gen_mixed_tok_s"],
            "report",
            None,
            f"adapter labels agree {lora_agree:.0%}, mean |Δp| {lora_dp:.3f}; "
            f"mixed scoring {i8_lora['labels_texts_s'] / f_lora['labels_texts_s']:.2f}x",
        ),
    ]  # fmt: skip


# ---- report --------------------------------------------------------------------------------------


def speed_index_ms() -> float:
    """A fixed CPU matmul workload (median of 5), run in a thread that exits; when it rises, the
    machine was busier (another tenant on the host)."""

    def work() -> float:
        x, w = torch.randn(32, 576), torch.randn(576, 1536)
        times = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(50):
                x @ w
            times.append(time.perf_counter() - started)
        return round(1000 * statistics.median(times), 2)

    return float(in_fresh_thread(work))


def print_table(rows: list[Row], info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f"core bench — {info['cpu_model']} ({info['cpu_cores']} cores), {info['device']}, {info['date']}"
    table = Table(title=title)
    for col in ("#", "measurement", "ours", "baseline", "ratio", "target", "met", "note"):
        table.add_column(col, overflow="fold")
    for r in rows:
        met = "" if r.met is None else ("[green]yes[/]" if r.met else "[red]no[/]")
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
        table.add_row(r.section, r.measurement, r.ours, r.baseline, ratio, r.target, met, r.note)
    Console(width=220).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about 3 minutes on 2 CPU cores)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 3, quick 2)")
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/core_bench[_quick].json")
    parser.add_argument("--only", default="12345", help="sections to run, e.g. 45")
    args = parser.parse_args(argv)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # PEFT reads a transformers property that transformers 5 marks deprecated; not ours to fix.
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
    torch.manual_seed(0)

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    settings = Settings()
    base = settings.base_model_path
    if not is_prepared(base):
        print(f"preparing the base model in {base} (one time)")
        prepare_default_model(base)
    dtype = getattr(torch, settings.resolved_dtype(device))
    sizes = QUICK if args.quick else FULL
    if args.repeats:
        sizes = dataclasses.replace(sizes, repeats=args.repeats)
    out_path = args.out or ROOT / "bench" / "results" / ("core_bench_quick.json" if args.quick else "core_bench.json")
    info = machine_info(device)
    info.update(quick=args.quick, sizes=asdict(sizes), speed_index_ms={"start": speed_index_ms()})
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="domainllm-bench-") as tmp:
        adapters_dir = Path(tmp) / "adapters"
        in_fresh_thread(
            lambda: [build_random_lora(base, adapters_dir / n, rank=16, seed=i) for i, n in enumerate(ADAPTERS)]
        )
        ctx = Context(args, sizes, device, dtype, base, adapters_dir, settings.shared_data_dir)
        fpb, fpb_source = fpb_rows(ctx.shared, max(sizes.fpb_rows, sizes.ppl_sentences, sizes.score_texts))
        texts = [t for t, _ in fpb]
        ctx.results["inputs"] = {"fpb": fpb_source, "base_model": base.name, "dtype": str(dtype)}

        engine = make_engine(base, device, adapters_dir=adapters_dir)
        peft_model, plain = in_fresh_thread(
            lambda: (load_peft(base, adapters_dir, device, dtype), load_plain(base, device, dtype))
        )

        def s1() -> None:
            section_generate(ctx, engine, peft_model)
            section_classify(ctx, engine, peft_model, texts)

        def s3() -> None:
            set_adapters(ctx, engine, False)
            section_score_vs_generate(ctx, engine, plain, fpb[: sizes.score_texts])

        def s4() -> None:
            set_adapters(ctx, engine, False)
            section_shared_prefix(ctx, engine, plain)

        sections: dict[str, Callable[[], None]] = {
            "1": s1,
            "2": partial(section_lora_diagnosis, ctx, engine, plain, peft_model),
            "3": s3,
            "4": s4,
            "5": partial(section_int8, ctx, engine, fpb[: sizes.fpb_rows], texts[: sizes.ppl_sentences]),
        }
        for key, run in sections.items():
            if key not in args.only:
                continue
            t0 = time.perf_counter()
            info["speed_index_ms"][f"before_{key}"] = speed_index_ms()
            print(f"section {key} ...", flush=True)
            run()
            ctx.results.setdefault("section_seconds", {})[key] = round(time.perf_counter() - t0, 1)
        engine.close()

    info["speed_index_ms"]["end"] = speed_index_ms()
    info["loadavg_end"] = os.getloadavg()
    info["total_seconds"] = round(time.perf_counter() - started, 1)
    print_table(ctx.rows, info)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": info, "table": [asdict(r) for r in ctx.rows], "results": ctx.results}
    out_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    shown = out_path.relative_to(ROOT) if out_path.is_relative_to(ROOT) else out_path
    print(f"wrote {shown}; {info['total_seconds']}s; speed index (ms, lower is faster) {info['speed_index_ms']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
