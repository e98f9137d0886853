"""Abuse figures on the running stack: rate limits, a classify flood, 50 mixed clients, a 2 MB body,
and a burst of clients who give up.

    .venv/bin/python bench/abuse_bench.py             # ~4 min on 2 CPU cores (the mixed phase runs 60 s)
    .venv/bin/python bench/abuse_bench.py --quick     # the mixed phase 20 s, smaller flood and burst

What runs: a real redis-server (the embedded one) and the API under uvicorn in a subprocess, as
`make run` starts it (the real base model and the adapters in data/adapters; the sample help centre
ingested and the sample catalogue loaded first, into a temporary knowledge base and namespaces of
this run's own Redis). The clients are asyncio + httpx in this process, on the same machine.

* (a) rate limits: its own server, with DOMAINLLM_RATE_LIMIT_PER_KEY=20/minute. Tenant A's key asks
  30 times in a row; then tenant B's key and the default tenant's. A: 20 answers, then 429 with
  Retry-After; the others are unaffected (the per-address limit is set high here: every client of
  this bench shares 127.0.0.1).
* (b)-(e) run on a second server with the rate limits off, so that the engine's own bounds show
  (DOMAINLLM_ENGINE_MAX_QUEUE_S and DOMAINLLM_ENGINE_DEADLINE_S at their defaults):
  (b) 500 concurrent one-text /v1/classify requests at once: statuses (every 503 must carry
      Retry-After), latency, the engine's queue wait (its histogram), and /healthz polled every
      100 ms throughout (from a process of its own); (c) 50 clients, 10 per kind (chat, classify,
      recommend, support, news), for 60 s: each waits 1 s after an answer before its next request,
      Retry-After after a 429/503, and gives up on a request after 30 s; (d) a 2 MB body, declared and chunked, and a 1.9 MB one holding one text: how fast
      the 413 comes; (e) 200 clients (100 chat with 64 new tokens, 100 classify) that give up after
      1 s: seconds from the last give-up until the engine is idle (queue empty, no batch running, as
      /metrics says), and a fresh classify's latency right after.

Writes bench/results/abuse.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.doubles.redis import RedisProcess, free_port  # noqa: E402

OUT = ROOT / "bench" / "results" / "abuse.json"
ADMIN_KEY = "bench-admin-key"
OPERATOR_KEY = "bench-operator-key"
ADMIN = {"X-Api-Key": ADMIN_KEY}
STARTUP_TIMEOUT_S = 240
CLIENT_TIMEOUT_S = 30.0
THINK_S = 1.0  # a mixed client's pause between two answers (a person, a storefront page, a feed poller)
HEADLINES = [
    "Globex shares plunge 18% after regulator opens accounting fraud probe",
    "Initech raises full-year guidance as cloud revenue jumps",
    "Central bank holds rates steady, signals cuts later this year",
    "Umbrella Corp recalls 2 million devices over battery fires",
]
QUESTIONS = ["How do I reset my password?", "Where is my order?", "Can I return a damaged item?", "Do you ship abroad?"]
USERS = ["u0124", "u0077", "u0113", "u0001", "u0050"]


# ---- the stack ---------------------------------------------------------------------------------


def run_env(redis_url: str, tmp: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DOMAINLLM_ENVIRONMENT": "test",
        "DOMAINLLM_ADMIN_KEY": ADMIN_KEY,
        "DOMAINLLM_OPERATOR_KEY": OPERATOR_KEY,
        "DOMAINLLM_REDIS_URL": redis_url,
        "DOMAINLLM_SUPPORT_KB_DIR": str(tmp / "kb"),
        "DOMAINLLM_SENTIMENT_INBOX_DIR": str(tmp / "inbox"),
        "DOMAINLLM_LOG_LEVEL": "WARNING",
        **extra,
    }


def prepare_data(env: dict[str, str], log: Path) -> None:
    """The sample help centre and catalogue, as the Procfile loads them for `make run`."""
    cli = [str(Path(sys.executable).parent / "domainllm")]
    for args in (
        ["support", "ingest", "data/samples/support/articles"],
        ["support", "ingest", "data/samples/support/faq.csv"],
        ["recommend", "load", "--samples", "--shift-to-now"],
    ):
        with log.open("ab") as out:
            subprocess.run([*cli, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)


class Server:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "uvicorn", "apps.server:create_app", "--factory", "--host", "127.0.0.1"]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*cmd, "--port", str(self.port), "--log-level", "warning"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self) -> float:
        started = time.monotonic()
        while time.monotonic() - started < STARTUP_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server was not ready in {STARTUP_TIMEOUT_S} s:\n{self.log.read_text()[-3000:]}")

    def wait_idle(self, quiet_s: float = 3.0) -> float:
        """Seconds until the engine has been idle for ``quiet_s`` (the support bot embeds its knowledge
        base on the engine after /readyz turns 200)."""
        started = time.monotonic()
        quiet_since = None
        while time.monotonic() - started < STARTUP_TIMEOUT_S:
            text = httpx.get(f"{self.base}/metrics", timeout=10).text
            idle = metric(text, "domainllm_queue_depth") == 0 and metric(text, "domainllm_engine_running_rows") == 0
            now = time.monotonic()
            quiet_since = (quiet_since or now) if idle else None
            if quiet_since is not None and now - quiet_since >= quiet_s:
                return quiet_since - started
            time.sleep(0.1)
        raise RuntimeError("the engine did not go idle")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---- measuring ---------------------------------------------------------------------------------


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text (summed over series whose labels include ``labels``)."""
    total = 0.0
    for line in text.splitlines():
        series = line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " ")
        if series and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_buckets(text: str, kind: str) -> dict[float, float]:
    """The queue-wait histogram of ``kind``: {upper bound: cumulative count}."""
    out = {}
    pattern = re.compile(r'domainllm_queue_wait_seconds_bucket\{kind="' + re.escape(kind) + r'",le="([^"]+)"\} (\S+)')
    for m in pattern.finditer(text):
        out[float(m.group(1))] = float(m.group(2))
    return out


def max_wait_bucket(before: str, after: str, kind: str) -> float | None:
    """The smallest histogram bound that every job of ``kind`` between the two scrapes waited less than."""
    b, a = wait_buckets(before, kind), wait_buckets(after, kind)
    total = a.get(float("inf"), 0) - b.get(float("inf"), 0)
    if total == 0:
        return None
    for bound in sorted(a):
        if a[bound] - b.get(bound, 0) >= total:
            return bound
    return None


def server_durations(before: str, after: str, route: str) -> dict[str, int]:
    """How many requests to ``route`` the server answered within each bound, between two scrapes (its
    own latency histogram: what the clients saw, less their own queueing)."""
    pattern = re.compile(
        r'domainllm_http_request_duration_seconds_bucket\{adapter="[^"]*",le="([^"]+)",method="POST",route="'
        + re.escape(route)
        + r'"\} (\S+)'
    )

    def buckets(text: str) -> Counter[str]:
        out: Counter[str] = Counter()
        for m in pattern.finditer(text):
            out[m.group(1)] += int(float(m.group(2)))
        return out

    b, a = buckets(before), buckets(after)
    return {f"le_{le}s": int(a[le] - b[le]) for le in ("0.1", "0.5", "1.0", "2.5", "5.0", "10.0", "30.0", "+Inf")}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))], 3)


def summary(latencies: list[float]) -> dict[str, Any]:
    return {"n": len(latencies), "p50_s": pct(latencies, 50), "p95_s": pct(latencies, 95), "max_s": pct(latencies, 100)}


class Outcome:
    def __init__(self, kind: str, status: int | str, seconds: float, retry_after: str | None) -> None:
        self.kind, self.status, self.seconds, self.retry_after = kind, status, seconds, retry_after


async def call(
    client: httpx.AsyncClient, kind: str, method: str, url: str, *, timeout: float = CLIENT_TIMEOUT_S, **kw: Any
) -> Outcome:
    started = time.perf_counter()
    try:
        r = await client.request(method, url, timeout=timeout, **kw)
        return Outcome(kind, r.status_code, time.perf_counter() - started, r.headers.get("retry-after"))
    except httpx.TimeoutException:
        return Outcome(kind, "timeout", time.perf_counter() - started, None)
    except httpx.TransportError as exc:
        return Outcome(kind, type(exc).__name__, time.perf_counter() - started, None)


class Watcher:
    """Polls /healthz every 100 ms (its latency) and /metrics every 500 ms (the engine's queue), in a
    process of its own: the clients' event loop, busy with hundreds of requests, would delay it."""

    def __init__(self, base: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._results = ctx.Queue()
        self._proc = ctx.Process(target=_watch, args=(base, self._stop, self._results), daemon=True)

    def __enter__(self) -> Watcher:
        self._proc.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()

    def report(self) -> dict[str, Any]:
        self._stop.set()
        health, failures, depth, seconds = self._results.get(timeout=60)
        self._proc.join(timeout=30)
        return {
            "healthz": {**summary(health), "failures": failures},
            "queue_depth_max": max(depth, default=None),
            "queue_seconds_max": round(max(seconds, default=0.0), 2),
        }


def _watch(base: str, stop: Any, results: Any) -> None:
    health: list[float] = []
    depth: list[float] = []
    seconds: list[float] = []
    failures = 0
    with httpx.Client(base_url=base, timeout=10) as http:
        tick = 0
        while not stop.is_set():
            started = time.perf_counter()
            try:
                failures += http.get("/healthz").status_code != 200
            except httpx.TransportError:
                failures += 1
            health.append(time.perf_counter() - started)
            if tick % 5 == 0:
                try:
                    text = http.get("/metrics").text
                    depth.append(metric(text, "domainllm_queue_depth"))
                    seconds.append(metric(text, "domainllm_queue_seconds"))
                except httpx.TransportError:
                    pass
            tick += 1
            time.sleep(max(0.0, 0.1 - (time.perf_counter() - started)))
    results.put((health, failures, depth, seconds))


def statuses(outcomes: list[Outcome]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(str(o.status) for o in outcomes).items())}


def refusals_without_retry_after(outcomes: list[Outcome]) -> int:
    return sum(1 for o in outcomes if o.status in (429, 503) and not o.retry_after)


def client(base: str, headers: dict[str, str] | None = None, connections: int = 100) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=base, headers=headers or ADMIN, limits=limits, timeout=CLIENT_TIMEOUT_S)


def classify_body(n: int = 1, i: int = 0) -> dict[str, Any]:
    texts = [HEADLINES[(i + j) % len(HEADLINES)] for j in range(n)]
    return {"model": "sentiment", "texts": texts, "labels": ["negative", "neutral", "positive"]}


def chat_body(i: int, max_tokens: int = 32) -> dict[str, Any]:
    return {"model": "base", "messages": [{"role": "user", "content": QUESTIONS[i % 4]}], "max_tokens": max_tokens}


# ---- (a) rate limits ---------------------------------------------------------------------------


async def rate_limits(base: str) -> dict[str, Any]:
    async with client(base, {"X-Api-Key": OPERATOR_KEY}) as op:
        keys = {}
        for tenant in ("bench-a", "bench-b"):
            r = await op.post("/v1/tenants", json={"id": tenant})
            r.raise_for_status()
            keys[tenant] = r.json()["admin_key"]["key"]
    out: dict[str, Any] = {"limit_per_key": "20/minute", "route": "GET /v1/keys (each tenant's own keys)"}
    async with client(base) as http:
        a = [await call(http, "a", "GET", "/v1/keys", headers={"X-Api-Key": keys["bench-a"]}) for _ in range(30)]
        b = [await call(http, "b", "GET", "/v1/keys", headers={"X-Api-Key": keys["bench-b"]}) for _ in range(5)]
        default = [await call(http, "default", "POST", "/v1/classify", json=classify_body()) for _ in range(3)]
    first_429 = next((i for i, o in enumerate(a) if o.status == 429), None)
    out["tenant_a"] = {
        "statuses": statuses(a),
        "first_429_at_request": None if first_429 is None else first_429 + 1,
        "retry_after_s": sorted({int(o.retry_after) for o in a if o.status == 429 and o.retry_after}),
        "refusals_without_retry_after": refusals_without_retry_after(a),
        "refusal_latency": summary([o.seconds for o in a if o.status == 429]),
    }
    out["tenant_b_after_a_was_limited"] = {"statuses": statuses(b)}
    out["default_tenant_classify"] = {"statuses": statuses(default)}
    return out


# ---- (b) classify flood ------------------------------------------------------------------------


async def flood(base: str, n: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base, timeout=10) as m:
        before = (await m.get("/metrics")).text
    with Watcher(base) as watcher:
        await asyncio.sleep(1.0)
        started = time.perf_counter()
        async with client(base, connections=n + 10) as http:
            outcomes = await asyncio.gather(
                *(
                    call(http, "classify", "POST", "/v1/classify", json=classify_body(1, i), timeout=90)
                    for i in range(n)
                )
            )
        wall = time.perf_counter() - started
        await asyncio.sleep(0.5)
        watched = watcher.report()
    async with httpx.AsyncClient(base_url=base, timeout=10) as m:
        after = (await m.get("/metrics")).text
    ok = [o.seconds for o in outcomes if o.status == 200]
    refused = [o.seconds for o in outcomes if o.status == 503]
    return {
        "requests": n,
        "statuses": statuses(outcomes),
        "refusals_without_retry_after": refusals_without_retry_after(outcomes),
        "retry_after_s": sorted({int(o.retry_after) for o in outcomes if o.retry_after}),
        "latency_200": summary(ok),
        "latency_503": summary(refused),
        "engine_queue_wait_max_below_s": max_wait_bucket(before, after, "labels"),
        "server_side_durations": server_durations(before, after, "/v1/classify"),
        "wall_s": round(wall, 2),
        **watched,
    }


# ---- (c) 50 mixed clients ----------------------------------------------------------------------


async def mixed(base: str, clients: int, seconds: float, think_s: float) -> dict[str, Any]:
    kinds = ["chat", "classify", "recommend", "support", "news"]
    outcomes: list[Outcome] = []
    end = time.perf_counter() + seconds

    async def one(i: int, http: httpx.AsyncClient) -> None:
        kind = kinds[i % len(kinds)]
        session = None
        n = 0
        while time.perf_counter() < end:
            n += 1
            if kind == "chat":
                o = await call(http, kind, "POST", "/v1/chat/completions", json=chat_body(i + n))
            elif kind == "classify":
                o = await call(http, kind, "POST", "/v1/classify", json=classify_body(2, i + n))
            elif kind == "recommend":
                o = await call(http, kind, "GET", f"/v1/recommend/{USERS[(i + n) % len(USERS)]}", params={"k": 10})
            elif kind == "support":
                if session is None:
                    try:
                        r = await http.post("/v1/support/sessions", json={})
                        session = r.json()["session_id"] if r.status_code == 201 else None
                    except httpx.HTTPError:
                        session = None
                    if session is None:
                        await asyncio.sleep(1)
                        continue
                body = {"message": QUESTIONS[(i + n) % 4], "stream": False}
                o = await call(http, kind, "POST", f"/v1/support/sessions/{session}/messages", json=body)
            else:
                item = {"title": f"{HEADLINES[n % 4]} ({i}-{n})", "url": f"https://bench.example/{i}/{n}/{time.time()}"}
                item["published_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                o = await call(http, kind, "POST", "/v1/sentiment/news", json={"items": [item]})
            outcomes.append(o)
            pause = float(o.retry_after) if o.status in (429, 503) and o.retry_after else think_s
            await asyncio.sleep(min(pause, max(0.0, end - time.perf_counter())))

    with Watcher(base) as watcher:
        async with client(base, connections=clients + 10) as http:
            await asyncio.gather(*(one(i, http) for i in range(clients)))
        watched = watcher.report()
    per_kind = {}
    for kind in kinds:
        mine = [o for o in outcomes if o.kind == kind]
        per_kind[kind] = {
            "statuses": statuses(mine),
            "latency": summary([o.seconds for o in mine]),
            "latency_2xx": summary([o.seconds for o in mine if isinstance(o.status, int) and o.status < 300]),
        }
    return {
        "clients": clients,
        "seconds": seconds,
        "think_s": think_s,
        "client_timeout_s": CLIENT_TIMEOUT_S,
        "requests": len(outcomes),
        "statuses": statuses(outcomes),
        "timeouts": sum(1 for o in outcomes if o.status == "timeout"),
        "refusals_without_retry_after": refusals_without_retry_after(outcomes),
        "server_errors": sum(1 for o in outcomes if isinstance(o.status, int) and o.status >= 500 and o.status != 503),
        "per_kind": per_kind,
        **watched,
    }


# ---- (d) a 2 MB body ---------------------------------------------------------------------------


async def halves(body: bytes) -> AsyncIterator[bytes]:
    yield body[: len(body) // 2]
    yield body[len(body) // 2 :]


async def big_bodies(base: str, tries: int = 5) -> dict[str, Any]:
    two_mb = json.dumps({**classify_body(), "texts": ["y" * (2 * 1024 * 1024)]}).encode()
    under_limit = json.dumps({**classify_body(), "texts": ["y" * 1_900_000]}).encode()
    headers = {**ADMIN, "Content-Type": "application/json"}
    out = {}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
        for name, make in (
            ("2MB_declared_length", lambda: two_mb),
            ("2MB_chunked", lambda: halves(two_mb)),  # no Content-Length: the server has to count
            ("1.9MB_one_text", lambda: under_limit),
        ):
            results = []
            for _ in range(tries):
                results.append(await call(http, name, "POST", "/v1/classify", content=make()))
            out[name] = {"statuses": statuses(results), "latency": summary([o.seconds for o in results])}
    return out


# ---- (e) a burst of clients who give up ----------------------------------------------------------


async def burst(base: str, n: int) -> dict[str, Any]:
    async def scrape(m: httpx.AsyncClient) -> tuple[float, float, float]:
        text = (await m.get("/metrics")).text
        return (
            metric(text, "domainllm_queue_depth"),
            metric(text, "domainllm_engine_running_rows"),
            metric(text, "domainllm_http_requests_in_flight"),
        )

    async with client(base, connections=n + 10) as http:
        half = n // 2
        outcomes = await asyncio.gather(
            *(
                call(http, "chat", "POST", "/v1/chat/completions", json=chat_body(i, 64), timeout=1.0)
                for i in range(half)
            ),
            *(
                call(http, "classify", "POST", "/v1/classify", json=classify_body(1, i), timeout=1.0)
                for i in range(half)
            ),
        )
    gave_up = time.perf_counter()
    samples = []
    idle_after = None
    async with httpx.AsyncClient(base_url=base, timeout=30) as m:
        while time.perf_counter() - gave_up < 600:
            depth, running, in_flight = await scrape(m)
            samples.append((round(time.perf_counter() - gave_up, 2), depth, running, in_flight))
            if depth == 0 and running == 0 and in_flight <= 1:  # the scrape itself is in flight
                idle_after = time.perf_counter() - gave_up
                break
            await asyncio.sleep(0.05)
        fresh = await call(m, "classify", "POST", "/v1/classify", json=classify_body(), headers=ADMIN)
    return {
        "clients": n,
        "client_timeout_s": 1.0,
        "statuses": statuses(list(outcomes)),
        "idle_after_s": None if idle_after is None else round(idle_after, 2),
        "queue_at_give_up": {"depth": samples[0][1], "running_rows": samples[0][2], "in_flight": samples[0][3]}
        if samples
        else None,
        "fresh_classify": {"status": fresh.status, "seconds": round(fresh.seconds, 3)},
    }


# ---- main --------------------------------------------------------------------------------------


async def warm(base: str) -> dict[str, Any]:
    """One request of each kind, so the first measured ones do not pay one-off costs: (status, seconds)."""
    async with client(base) as http:
        out = [
            await call(http, "classify", "POST", "/v1/classify", json=classify_body(4), timeout=120),
            await call(http, "chat", "POST", "/v1/chat/completions", json=chat_body(0), timeout=120),
            await call(http, "recommend", "GET", f"/v1/recommend/{USERS[0]}", params={"k": 10}, timeout=120),
        ]
        session = (await http.post("/v1/support/sessions", json={})).json()["session_id"]
        body = {"message": QUESTIONS[0]}
        out.append(
            await call(http, "support", "POST", f"/v1/support/sessions/{session}/messages", json=body, timeout=120)
        )
    return {o.kind: {"status": o.status, "seconds": round(o.seconds, 2)} for o in out}


def code_version() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if git("status", "--porcelain") else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 s of mixed load, a 200-request flood, a 100 burst")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    flood_n, mixed_s, burst_n = (200, 20.0, 100) if args.quick else (500, 60.0, 200)
    report: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "gpu": "none",
        },
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "args": {"quick": args.quick},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "code": code_version(),
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="abuse-bench-") as tmp_name:
        tmp = Path(tmp_name)
        redis = RedisProcess(tmp / "redis").start()
        log = tmp / "server.log"
        try:
            limited = run_env(
                redis.url, tmp, DOMAINLLM_RATE_LIMIT_PER_KEY="20/minute", DOMAINLLM_RATE_LIMIT_PER_IP="100000/minute"
            )
            print("preparing the sample KB and catalogue ...", flush=True)
            prepare_data(limited, log)
            server = Server(limited, log)
            try:
                report["startup_s"] = round(server.wait_ready(), 1)
                report["busy_after_ready_s"] = round(server.wait_idle(), 1)
                print("(a) rate limits ...", flush=True)
                report["a_rate_limits"] = asyncio.run(rate_limits(server.base))
            finally:
                server.stop()
            server = Server(
                run_env(redis.url, tmp, DOMAINLLM_RATE_LIMIT_PER_KEY="", DOMAINLLM_RATE_LIMIT_PER_IP=""), log
            )
            try:
                server.wait_ready()
                server.wait_idle()
                report["warm_up_requests"] = asyncio.run(warm(server.base))
                print(f"warm-up requests: {report['warm_up_requests']}", flush=True)
                print(f"(b) a flood of {flood_n} classify requests ...", flush=True)
                report["b_classify_flood"] = {
                    "load_average": os.getloadavg()[0],
                    **asyncio.run(flood(server.base, flood_n)),
                }
                server.wait_idle(1.0)
                print(f"(c) 50 mixed clients for {mixed_s:g} s ...", flush=True)
                report["c_mixed_clients"] = {
                    "load_average": os.getloadavg()[0],
                    **asyncio.run(mixed(server.base, 50, mixed_s, THINK_S)),
                }
                server.wait_idle(1.0)
                print("(d) 2 MB bodies ...", flush=True)
                report["d_big_bodies"] = asyncio.run(big_bodies(server.base))
                print(f"(e) a burst of {burst_n} clients who give up after 1 s ...", flush=True)
                server.wait_idle(1.0)
                report["e_burst_give_up"] = {
                    "load_average": os.getloadavg()[0],
                    **asyncio.run(burst(server.base, burst_n)),
                }
            finally:
                server.stop()
            text = log.read_text()
            report["server_log_tracebacks"] = text.count("Traceback")
            report["server_log_errors"] = sorted(  # what each traceback ended with, and how often
                {
                    line: text.count(line) for line in re.findall(r"^\w[\w.]*(?:Error|Exception)\b.*$", text, re.M)
                }.items()
            )[:20]
        finally:
            redis.stop()
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
