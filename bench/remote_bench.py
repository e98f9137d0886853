"""The remote engine's overhead against the local engine, for the same requests (issue 17).

    .venv/bin/python bench/remote_bench.py                    # 2 rounds, full sizes
    .venv/bin/python bench/remote_bench.py --quick --rounds 2 # what bench/results/remote.json holds

What runs: the real base model (SmolLM2-135M-Instruct, fp32 on CPU) and the suite's adapters
(data/adapters), twice: a ``LocalEngine`` in this process, and a second instance of this project's
server (uvicorn in a subprocess on a loopback port, the same model files) behind a ``RemoteEngine``.
Every call runs on both engines one right after the other (which goes first alternates), so load
from elsewhere on the machine hits both alike; answers are compared (greedy tokens identical, label
probabilities and continuation scores within float tolerance). Writes bench/results/remote.json
(every call's seconds, the remote traffic) and prints a table.

What the ratios hold. Transport: HTTP and JSON on loopback, a second process, and, for concurrent
generations, requests that reach the remote's micro-batcher spread out rather than at once. Protocol:
vLLM's ``prompt_logprobs`` return every prompt position, so a scoring answer repeats the prompt's
log-probabilities once per row (a label's 18 candidate first tokens are 18 rows; continuation
scoring with Yes/No answers, 12 rows per candidate); this server computes each shared prompt once
(``core.logprobs``), so the model work is about the local engine's and the rest is serialisation.
On vLLM the rows are batched on a GPU without its prefix cache (vLLM skips it for requests with
prompt log-probabilities): that cost is not measured here (no GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import wait
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
from core_bench import fpb_rows, movie_history  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from core.config import Settings, get_settings  # noqa: E402
from core.engine import LocalEngine  # noqa: E402
from core.interface import Engine  # noqa: E402
from core.remote_client import RemoteSettings  # noqa: E402
from core.remote_engine import RemoteEngine  # noqa: E402
from core.sampling import SamplingParams  # noqa: E402

OUT = ROOT / "bench" / "results" / "remote.json"
KEY = "remote-bench-key"
QUESTIONS = [
    "Where is my order? It was due on Monday.",
    "How do I reset my password?",
    "I want a refund for the damaged item.",
    "Can I change the delivery address after ordering?",
    "Why was my card declined?",
    "Do you ship to Canada?",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def start_remote(settings: Settings, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """This project's server on the same model files, on a free loopback port; waits for /readyz."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {
        **os.environ,
        "DOMAINLLM_ENVIRONMENT": "test",
        "DOMAINLLM_ADMIN_KEY": KEY,
        "DOMAINLLM_BASE_MODEL": str(settings.base_model_path),
        "DOMAINLLM_ADAPTERS_DIR": str(settings.adapters_path),
        "DOMAINLLM_DATA_DIR": str(log.parent / "data"),
        "DOMAINLLM_RATE_LIMIT_PER_KEY": "",
        "DOMAINLLM_RATE_LIMIT_PER_IP": "",
        "DOMAINLLM_ENGINE_DEADLINE_S": "600",
        "DOMAINLLM_ENGINE_MAX_QUEUE_S": "600",  # as the local engine here: a burst is queued, not refused
    }
    cmd = [sys.executable, "-m", "uvicorn", "apps.server:create_app", "--factory", "--port", str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen([*cmd, "--host", "127.0.0.1"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the remote server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"the remote server was not ready in 300 s:\n{log.read_text()[-3000:]}")


class Counter:
    """Bytes and requests sent to and received from the remote (an httpx event hook)."""

    def __init__(self) -> None:
        self.requests = 0
        self.sent = 0
        self.received = 0

    def on_request(self, request: httpx.Request) -> None:
        self.requests += 1
        self.sent += len(request.content)

    def on_response(self, response: httpx.Response) -> None:
        response.read()
        self.received += len(response.content)


Call = Callable[[Engine], Any]


def workloads(w: dict[str, Any]) -> dict[str, list[Call]]:
    """Per workload, its calls (each one request, or one batch); every call runs on both engines."""
    one = SamplingParams(max_new_tokens=1)
    gen = SamplingParams(max_new_tokens=w["gen_tokens"], ignore_eos=True)
    chats = [[{"role": "user", "content": q}] for q in w["questions"]]
    models = ["support", "sentiment", "recommend"]
    labels, instruction = w["labels"], w["instruction"]

    def generate(prompt: Any, params: SamplingParams, engine: Engine) -> list[int]:
        return engine.generate(prompt, model="support", params=params).token_ids

    def concurrent(engine: Engine) -> list[list[int]]:
        futures = [
            engine.submit_generate(chats[i % len(chats)], model=models[i % 3], params=gen)
            for i in range(w["concurrent"])
        ]
        wait(futures)
        return [f.result().token_ids for f in futures]

    def classify(texts: list[str], engine: Engine) -> list[dict[str, float]]:
        return engine.score_labels(texts, labels, model="sentiment", instruction=instruction)

    def continuations(engine: Engine) -> list[tuple[float, float]]:
        scores = engine.score_continuations(
            w["prefix"], w["candidates"], model="recommend", answer_labels=["Yes", "No"]
        )
        return [(s.logprob, (s.next_label_probs or {})["Yes"]) for s in scores]

    return {
        "ping": [partial(generate, q, one) for q in w["questions"]],
        "gen_seq": [partial(generate, c, gen) for c in chats],
        "labels_seq": [partial(classify, [t]) for t in w["texts"]],
        "conts": [continuations] * w["cont_calls"],
        "gen_conc": [concurrent],
        "labels_batch": [partial(classify, w["batch"])],
    }


def run(
    engines: dict[str, Engine], calls: dict[str, list[Call]], rounds: int
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, list[Any]]]]:
    """Every call on both engines, one right after the other (which goes first alternates), so a burst
    of load from elsewhere hits both. Seconds per call, and the first round's answers."""
    times: dict[str, dict[str, list[float]]] = {name: {side: [] for side in engines} for name in calls}
    answers: dict[str, dict[str, list[Any]]] = {name: {side: [] for side in engines} for name in calls}
    for r in range(rounds):
        for name, fns in calls.items():
            print(f"round {r + 1}/{rounds}: {name} ({len(fns)} calls on each engine)", flush=True)
            for k, fn in enumerate(fns):
                order = list(engines) if (k + r) % 2 == 0 else list(engines)[::-1]
                for side in order:
                    started = time.perf_counter()
                    out = fn(engines[side])
                    times[name][side].append(time.perf_counter() - started)
                    if r == 0:
                        answers[name][side].append(out)
    return times, answers


def summarise(times: dict[str, dict[str, list[float]]], w: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, what, unit_count in [
        ("ping", "generate 1 token (transport overhead)", 1),
        ("gen_seq", f"generate {w['gen_tokens']} tokens, one request at a time (support)", w["gen_tokens"]),
        ("labels_seq", "score_labels, 1 FPB text per request (sentiment)", 1),
        (
            "conts",
            f"score_continuations, {w['prefix_tokens']}-token prefix, {len(w['candidates'])} candidates, "
            "Yes/No (recommend)",
            len(w["candidates"]),
        ),
    ]:
        a, b = times[key]["local"], times[key]["remote"]
        rows.append(
            {
                "workload": what,
                "local_p50_ms": 1000 * statistics.median(a),
                "local_p95_ms": 1000 * percentile(a, 0.95),
                "remote_p50_ms": 1000 * statistics.median(b),
                "remote_p95_ms": 1000 * percentile(b, 0.95),
                "p50_ratio": statistics.median(b) / statistics.median(a),
                "p95_ratio": percentile(b, 0.95) / percentile(a, 0.95),
                "overhead_p50_ms": 1000 * (statistics.median(b) - statistics.median(a)),
                "local_per_s": unit_count / statistics.median(a),
                "remote_per_s": unit_count / statistics.median(b),
                "throughput_ratio": statistics.median(a) / statistics.median(b),
                "calls_per_engine": len(a),
            }
        )
    for key, what, count, unit in [
        (
            "gen_conc",
            f"generate {w['concurrent']} at once, 3 adapters, {w['gen_tokens']} tokens each",
            w["concurrent"] * w["gen_tokens"],
            "tok/s",
        ),
        ("labels_batch", f"score_labels, {len(w['batch'])} FPB texts in one call", len(w["batch"]), "texts/s"),
    ]:
        wall_a, wall_b = statistics.median(times[key]["local"]), statistics.median(times[key]["remote"])
        rows.append(
            {
                "workload": what,
                "local_wall_s": wall_a,
                "remote_wall_s": wall_b,
                "local_per_s": count / wall_a,
                "remote_per_s": count / wall_b,
                "unit": unit,
                "throughput_ratio": wall_a / wall_b,
            }
        )
    return rows


def checks(answers: dict[str, dict[str, list[Any]]]) -> dict[str, Any]:
    def pairs(name: str) -> list[tuple[Any, Any]]:
        return list(zip(answers[name]["local"], answers[name]["remote"], strict=True))

    same_seq = sum(a == b for a, b in pairs("gen_seq"))
    ((conc_local, conc_remote),) = pairs("gen_conc")
    same_conc = sum(a == b for a, b in zip(conc_local, conc_remote, strict=True))
    dp = [
        abs(x[k] - y[k])
        for name in ("labels_seq", "labels_batch")
        for a, b in pairs(name)
        for x, y in zip(a, b, strict=True)
        for k in x
    ]
    conts = [(x, y) for a, b in pairs("conts") for x, y in zip(a, b, strict=True)]
    return {
        "greedy_identical": f"{same_seq}/{len(pairs('gen_seq'))} sequential, {same_conc}/{len(conc_local)} concurrent",
        "labels_max_abs_dp": max(dp),
        "conts_max_abs_dlogprob": max(abs(x[0] - y[0]) for x, y in conts),
        "conts_max_abs_dp_yes": max(abs(x[1] - y[1]) for x, y in conts),
    }


def table(rows: list[dict[str, Any]], check: dict[str, Any]) -> str:
    lines = [
        "| workload | local | remote | remote / local | overhead |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if "local_p50_ms" in r:
            lines.append(
                f"| {r['workload']} | p50 {r['local_p50_ms']:.0f} ms, p95 {r['local_p95_ms']:.0f} ms "
                f"| p50 {r['remote_p50_ms']:.0f} ms, p95 {r['remote_p95_ms']:.0f} ms "
                f"| p50 {r['p50_ratio']:.2f}x, p95 {r['p95_ratio']:.2f}x | {r['overhead_p50_ms']:+.0f} ms (p50) |"
            )
        else:
            lines.append(
                f"| {r['workload']} | {r['local_per_s']:.1f} {r['unit']} | {r['remote_per_s']:.1f} {r['unit']} "
                f"| throughput {r['throughput_ratio']:.2f}x | |"
            )
    lines.append("")
    lines.append(
        f"Checks: greedy tokens identical {check['greedy_identical']}; label probabilities max |Δp| "
        f"{check['labels_max_abs_dp']:.1e}; continuations max |Δ logprob| {check['conts_max_abs_dlogprob']:.1e}, "
        f"max |Δ P(Yes)| {check['conts_max_abs_dp_yes']:.1e}."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests and one round")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds per engine (default 2; 1 quick)")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="the tiny random Llama (core.tiny) with random adapters named as the suite's: the model work is "
        "milliseconds, so what is left is the transport (writes remote_tiny.json)",
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 2)
    started = time.time()
    base = get_settings()
    model_path, adapters_path = base.base_model_path, base.adapters_path
    out = OUT
    if args.tiny:
        from core.tiny import build_random_lora, build_tiny_model

        scratch = Path(tempfile.mkdtemp(prefix="remote-bench-tiny-"))
        model_path, adapters_path = build_tiny_model(scratch / "model"), scratch / "adapters"
        for seed, name in enumerate(["support", "sentiment", "recommend"], start=1):
            build_random_lora(model_path, adapters_path / name, rank=8, seed=seed)
        out = OUT.with_name("remote_tiny.json")
    settings = Settings(
        environment="test",
        base_model=str(model_path),
        adapters_dir=adapters_path,
        data_dir=Path(tempfile.mkdtemp(prefix="remote-bench-")) / "data",
        admin_key=KEY,
        engine_deadline_s=600,
        engine_max_queue_s=600,
    )
    log = Path(tempfile.mkdtemp(prefix="remote-bench-server-")) / "server.log"
    print(f"starting the remote server (log: {log}) ...", flush=True)
    proc, url = start_remote(settings, log)
    local = LocalEngine(settings)
    counter = Counter()
    http = httpx.Client(
        base_url=url,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=600,
        event_hooks={"request": [counter.on_request], "response": [counter.on_response]},
    )
    remote = RemoteEngine(settings, RemoteSettings(url=url, api_key=SecretStr(KEY), timeout_s=600), http=http)
    try:
        local.warm_up()
        remote.warm_up()
        fpb, fpb_source = fpb_rows(settings.shared_data_dir, 48)
        texts = [t for t, _ in fpb]
        n_seq = 3 if args.quick else 6
        prefix_tokens = 200
        prefix_text, candidates, movies_source = movie_history(
            settings.shared_data_dir, local.tokenizer, prefix_tokens, 8
        )
        serving = local.serving_config("sentiment")
        w = {
            "questions": QUESTIONS[:n_seq],
            "gen_tokens": 16 if args.quick else 32,
            "concurrent": 6 if args.quick else 12,
            "texts": texts[:n_seq],
            "batch": texts[n_seq : n_seq + (8 if args.quick else 16)],
            "labels": list(serving.get("labels") or ["negative", "neutral", "positive"]),
            "instruction": serving.get("instruction"),
            "prefix": prefix_text,
            "prefix_tokens": len(local.tokenize(prefix_text)),
            "candidates": candidates,
            "cont_calls": 2 if args.quick else 3,
        }
        before = (counter.requests, counter.sent, counter.received)
        times, answers = run({"local": local, "remote": remote}, workloads(w), rounds)
        traffic = {
            "requests": counter.requests - before[0],
            "sent_bytes": counter.sent - before[1],
            "received_bytes": counter.received - before[2],
        }
        rows = summarise(times, w)
        check = checks(answers)
        text = table(rows, check)
        print()
        print(text)
        result = {
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
            "seconds": round(time.time() - started, 1),
            "machine": {
                "cpus": os.cpu_count(),
                "load_average_at_end": os.getloadavg(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "setup": {
                "base_model": settings.base_model_path.name,
                "adapters": [a.name for a in local.adapters()],
                "remote": "this project's server (uvicorn, 1 process) on loopback",
                "rounds": rounds,
                "inputs": {"fpb": fpb_source, "movies": movies_source},
                "workloads": {k: v for k, v in w.items() if k not in ("prefix",)},
            },
            "rows": rows,
            "checks": check,
            "remote_traffic": traffic,
            "seconds_per_call": times,
            "table": text,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str))
        print(f"\nwrote {out.relative_to(ROOT)} in {result['seconds']:.0f} s")
    finally:
        remote.close()
        http.close()
        local.close()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
