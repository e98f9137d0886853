"""Load test of the whole stack, one API + one worker against two API replicas + two workers sharing
one Redis: mixed support chat, news pushes, headline classification and recommendations.

    .venv/bin/python bench/load_test.py              # 50 clients, 120 s per configuration (~12 min)
    .venv/bin/python bench/load_test.py --quick      # 20 clients, 20 s per configuration (~5 min)
    .venv/bin/python bench/load_test.py --configs 2x2 --duration-s 60 --clients 30

What runs, per configuration: a ``domainllm.fleet.Fleet`` on loopback (one embedded Redis, N
``domainllm serve`` replicas, M Celery workers on ingest,enrich,alerts), the real base model and the
adapters in data/adapters, the sample catalogue, events and help centre loaded first as ``make run``
does (the Procfile's web line), in a temporary data folder. Each client gets its own server and widget
key (POST /v1/keys with the admin key), as a tenant's backends and widgets would. The per-address rate
limit is off (``--rate-limit-per-ip``): every client of this bench shares 127.0.0.1, where a
deployment sees one address per shopper; the per-key limit stays at its default.

The clients are asyncio + httpx in this process, closed-loop with no think time. There is no load
balancer: each request goes to the next replica URL in turn (round-robin), so a chat session started
on one replica continues on the other. Each request is one of (weights in MIX): a support message
(a session is created first and every ``SESSION_TURNS`` messages), one news item pushed to
/v1/sentiment/news (the workers enrich it), two headlines to /v1/sentiment/classify, and one user's
recommendations. Bounded: ``--duration-s`` of load (at most 600), ``--max-requests`` in all, every
request gives up after ``REQUEST_TIMEOUT_S``, and the run stops at a hard deadline after that.

Per endpoint: requests, throughput of answered requests (2xx per second), p50/p99 latency of those,
and every status. A violation is any other outcome than a 2xx or a 429/503 carrying ``Retry-After``:
a 5xx, a 429/503 without it, another 4xx, or no answer at all. The news the workers enriched during
the window is read from /v1/sentiment/stats. Writes bench/results/load_test.json
(load_test_quick.json with --quick); the table puts the configurations side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from abuse_bench import metric  # noqa: E402  (a sample of the Prometheus text: one reader for the benches)

from domainllm.fleet import SAMPLE_SETUP, Fleet  # noqa: E402
from tests.doubles.servers import answer_problem  # noqa: E402  (the answer rule the fault tests hold too)

RESULTS = ROOT / "bench" / "results"
SAMPLES = ROOT / "data" / "samples"
REQUEST_TIMEOUT_S = 60.0  # above the engine's deadline (25 s): the server answers 503 before this
READY_TIMEOUT_S = 600.0
SESSION_TURNS = 4
MAX_DURATION_S = 600.0
MIX = {"chat": 0.30, "news": 0.25, "classify": 0.20, "recommend": 0.25}
ENDPOINTS = ["support.session", "support.message", "sentiment.news", "sentiment.classify", "recommend"]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# ---- inputs -------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass(frozen=True)
class Inputs:
    questions: list[str]
    headlines: list[str]
    users: list[str]

    @classmethod
    def load(cls) -> Inputs:
        questions = [r["question"] for r in read_jsonl(SAMPLES / "support" / "eval" / "in_kb.jsonl")]
        headlines = [r["title"] for r in read_jsonl(SAMPLES / "news" / "news.jsonl")]
        users = sorted({r["user_id"] for r in read_jsonl(SAMPLES / "recommend" / "events.jsonl")})
        return cls(questions, headlines, users)


# ---- measuring --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    endpoint: str
    status: str  # "200", "429", ... or "error:ReadTimeout" when no answer came
    seconds: float
    retry_after: bool

    @property
    def ok(self) -> bool:
        return self.status.startswith("2")

    @property
    def violation(self) -> str | None:
        """Why this outcome breaks "every request succeeds or gets a 429/503 with Retry-After", or None."""
        if self.status.startswith("error:"):
            return f"no answer ({self.status[6:]})"
        return answer_problem(self.status, self.retry_after)


@dataclass
class Run:
    urls: list[str]
    deadline: float
    max_requests: int
    outcomes: list[Outcome] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)  # a few violations, with their bodies
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def next_url(self) -> str:
        return self.urls[next(self._turn) % len(self.urls)]

    def more(self) -> bool:
        return time.monotonic() < self.deadline and len(self.outcomes) < self.max_requests

    async def call(
        self, http: httpx.AsyncClient, endpoint: str, method: str, path: str, key: str, **kwargs: Any
    ) -> httpx.Response | None:
        url = self.next_url()
        started = time.perf_counter()
        try:
            r = await http.request(method, url + path, headers={"Authorization": f"Bearer {key}"}, **kwargs)
        except httpx.HTTPError as exc:
            self.outcomes.append(Outcome(endpoint, f"error:{type(exc).__name__}", time.perf_counter() - started, False))
            return None
        outcome = Outcome(endpoint, str(r.status_code), time.perf_counter() - started, "retry-after" in r.headers)
        self.outcomes.append(outcome)
        if outcome.violation and len(self.samples) < 20:
            self.samples.append({"endpoint": endpoint, "url": url, "status": r.status_code, "body": r.text[:500]})
        return r


@dataclass
class Client:
    """One simulated client: its keys, its chat session, and its own random stream of requests."""

    index: int
    server_key: str
    widget_key: str
    rng: random.Random
    session: str | None = None
    turns: int = 0
    pushed: int = 0

    async def step(self, run: Run, http: httpx.AsyncClient, inputs: Inputs, tag: str, kind: str = "") -> None:
        kind = kind or self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
        if kind == "chat":
            if self.session is None or self.turns >= SESSION_TURNS:
                r = await run.call(http, "support.session", "POST", "/v1/support/sessions", self.widget_key)
                if r is None or r.status_code != 201:
                    return
                self.session, self.turns = r.json()["session_id"], 0
            self.turns += 1
            body = {"message": self.rng.choice(inputs.questions)}
            path = f"/v1/support/sessions/{self.session}/messages"
            r = await run.call(http, "support.message", "POST", path, self.widget_key, json=body)
            if r is not None and r.status_code == 202:  # handed off: a person holds it now, so a new session
                self.session = None
        elif kind == "news":
            self.pushed += 1
            item = {
                "title": self.rng.choice(inputs.headlines),
                "url": f"https://loadtest.example/{tag}/{self.index}/{self.pushed}",  # a new item each time
                "source": "Load test",
                "published_at": time.time(),
            }
            await run.call(http, "sentiment.news", "POST", "/v1/sentiment/news", self.server_key, json=item)
        elif kind == "classify":
            texts = {"texts": self.rng.sample(inputs.headlines, 2)}
            await run.call(http, "sentiment.classify", "POST", "/v1/sentiment/classify", self.server_key, json=texts)
        else:
            path = f"/v1/recommend/{self.rng.choice(inputs.users)}?k=10"
            await run.call(http, "recommend", "GET", path, self.server_key)


async def make_clients(url: str, admin_key: str, n: int, seed: int) -> list[Client]:
    """A server key and a widget key per client, made through the API as a tenant's admin makes them."""
    async with httpx.AsyncClient(timeout=30, trust_env=False) as http:

        async def key(scope: str, label: str) -> str:
            r = await http.post(
                f"{url}/v1/keys",
                json={"scope": scope, "label": label},
                headers={"Authorization": f"Bearer {admin_key}"},
            )
            r.raise_for_status()
            return str(r.json()["key"])

        keys = await asyncio.gather(*(key(s, f"load-{i}-{s}") for i in range(n) for s in ("server", "widget")))
    return [Client(i, keys[2 * i], keys[2 * i + 1], random.Random(seed + i)) for i in range(n)]


async def drive(urls: list[str], clients: list[Client], inputs: Inputs, duration_s: float, max_requests: int) -> Run:
    """``clients`` in a closed loop for ``duration_s``; in-flight requests finish (each within its
    timeout), and the whole run is cut at a hard deadline after that."""
    run = Run(urls, time.monotonic() + duration_s, max_requests)
    tag = uuid.uuid4().hex[:8]
    limits = httpx.Limits(max_connections=len(clients) * 2, max_keepalive_connections=len(clients) * 2)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits, trust_env=False) as http:

        async def loop(client: Client) -> None:
            while run.more():
                await client.step(run, http, inputs, tag)

        tasks = [asyncio.create_task(loop(c)) for c in clients]
        _, late = await asyncio.wait(tasks, timeout=duration_s + REQUEST_TIMEOUT_S * 2 + 10)
        for task in late:  # past the hard deadline: cut, and say so with the samples
            task.cancel()
        if late:
            run.samples.append({"clients_cut_at_hard_deadline": len(late)})
    return run


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summarise(run: Run, window_s: float) -> dict[str, Any]:
    endpoints: dict[str, Any] = {}
    for name in [*ENDPOINTS, "all"]:
        rows = [o for o in run.outcomes if name in ("all", o.endpoint)]
        ok = [o.seconds for o in rows if o.ok]
        refused = [o.seconds for o in rows if o.status in {"429", "503"}]
        endpoints[name] = {
            "requests": len(rows),
            "ok": len(ok),
            "ok_per_s": round(len(ok) / window_s, 2),
            "requests_per_s": round(len(rows) / window_s, 2),
            "p50_ms": _ms(percentile(ok, 0.50)),
            "p99_ms": _ms(percentile(ok, 0.99)),
            "refused_p50_ms": _ms(percentile(refused, 0.50)),  # how fast a 429/503 comes back
            "statuses": dict(sorted(Counter(o.status for o in rows).items())),
            "violations": dict(Counter(v for o in rows if (v := o.violation))),
        }
    return endpoints


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


# ---- the stack -------------------------------------------------------------------------------------


def wait_idle(urls: list[str], quiet_s: float = 3.0, timeout_s: float = 300.0) -> float:
    """Seconds until every replica's engine has been idle for ``quiet_s`` (after /readyz the support bot
    embeds its knowledge base on the engine)."""
    started, quiet_since = time.monotonic(), None
    with httpx.Client(timeout=10, trust_env=False) as http:
        while time.monotonic() - started < timeout_s:
            texts = [http.get(f"{u}/metrics").text for u in urls]
            idle = all(
                metric(t, "domainllm_queue_depth") == 0 and metric(t, "domainllm_engine_running_rows") == 0
                for t in texts
            )
            now = time.monotonic()
            quiet_since = (quiet_since or now) if idle else None
            if quiet_since is not None and now - quiet_since >= quiet_s:
                return quiet_since - started
            time.sleep(0.2)
    raise RuntimeError("the engines did not go idle")


async def warm_up(urls: list[str], client: Client, inputs: Inputs) -> list[str]:
    """One request of each kind on each replica, not counted: first calls load lazily (the KB index)."""
    done: list[str] = []
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S * 2, trust_env=False) as http:
        for url in urls:
            run = Run([url], time.monotonic() + 300, 10_000)
            client.session = None
            for kind in MIX:
                await client.step(run, http, inputs, "warm-up", kind)
            done += [f"{url} {o.endpoint} {o.status} {o.seconds:.1f}s" for o in run.outcomes]
    return done


def sentiment_stats(url: str, key: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/v1/sentiment/stats", headers={"Authorization": f"Bearer {key}"}, timeout=30, trust_env=False)
    r.raise_for_status()
    stats: dict[str, Any] = r.json()
    return stats


def log_findings(log_dir: Path) -> dict[str, Any]:
    """Tracebacks in the fleet's logs, and the exception lines they ended with."""
    found: dict[str, Any] = {}
    for path in sorted(log_dir.glob("*.log")):
        text = path.read_text(encoding="utf-8", errors="replace")
        errors = Counter(re.findall(r"^\w[\w.]*(?:Error|Exception)\b.*$", text, re.M))
        if text.count("Traceback") or errors:
            found[path.name] = {"tracebacks": text.count("Traceback"), "errors": dict(errors.most_common(10))}
    return found


def run_config(api: int, workers: int, args: argparse.Namespace, inputs: Inputs) -> dict[str, Any]:
    print(f"== {api} API + {workers} workers: starting the fleet (loads the samples first) ...", flush=True)
    env = {"DOMAINLLM_RATE_LIMIT_PER_IP": args.rate_limit_per_ip}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="domainllm-load-") as tmp:
        fleet = Fleet(api, workers, data_dir=Path(tmp), setup=SAMPLE_SETUP, env=env, ready_timeout_s=READY_TIMEOUT_S)
        try:
            result = measure(fleet, args, inputs, started)
        finally:
            findings = log_findings(fleet.log_dir)  # after the fleet stopped: shutdown errors count too
            if args.logs is not None:
                shutil.copytree(fleet.log_dir, args.logs / f"{api}x{workers}", dirs_exist_ok=True)
    return {**result, "log_findings": findings}


def measure(fleet: Fleet, args: argparse.Namespace, inputs: Inputs, started: float) -> dict[str, Any]:
    with fleet:
        urls = fleet.urls
        if any(urlsplit(u).hostname not in LOOPBACK for u in urls):
            raise SystemExit(f"refusing to load anything but loopback: {urls}")
        startup_s = time.monotonic() - started
        idle_s = wait_idle(urls)
        clients = asyncio.run(make_clients(urls[0], fleet.admin_key, args.clients, args.seed))
        warm = asyncio.run(warm_up(urls, clients[0], inputs))
        wait_idle(urls, quiet_s=1.0)
        before = sentiment_stats(urls[0], fleet.admin_key)
        load_before = os.getloadavg()[0]
        print(f"   up in {startup_s:.0f} s; {args.clients} clients for {args.duration_s:g} s on {urls}", flush=True)
        t0 = time.monotonic()
        run = asyncio.run(drive(urls, clients, inputs, args.duration_s, args.max_requests))
        wall_s = time.monotonic() - t0
        after = sentiment_stats(urls[0], fleet.admin_key)
        result = {
            "api_replicas": fleet.n_api,
            "workers": fleet.n_workers,
            "urls": urls,
            "routing": "round-robin per request over the replica URLs, from the client (no load balancer)",
            "startup_s": round(startup_s, 1),
            "engine_busy_after_ready_s": round(idle_s, 1),
            "warm_up": warm,
            "window_s": args.duration_s,
            "wall_s": round(wall_s, 1),
            "load_average": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
            "endpoints": summarise(run, args.duration_s),
            "news_enriched_in_window": after.get("enriched", 0) - before.get("enriched", 0),
            "news_enriched_per_s": round((after.get("enriched", 0) - before.get("enriched", 0)) / wall_s, 2),
            "news_pending_after": after.get("pending"),
            "violation_samples": run.samples,
        }
    return result


# ---- the report ----------------------------------------------------------------------------------


def fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:g}{unit}"


def table(configs: list[dict[str, Any]]) -> str:
    names = [f"{c['api_replicas']} API + {c['workers']} workers" for c in configs]
    head = "| endpoint | " + " | ".join(f"{n}: ok/s, p50, p99 ms, statuses" for n in names)
    head += " | ratio ok/s |" if len(configs) == 2 else " |"
    lines = [head, "|" + "---|" * (1 + len(configs) + (1 if len(configs) == 2 else 0))]
    for name in [*ENDPOINTS, "all"]:
        cells = []
        for c in configs:
            e = c["endpoints"][name]
            statuses = " ".join(f"{s}:{n}" for s, n in e["statuses"].items())
            if e["refused_p50_ms"] is not None:
                statuses += f"; 429/503 in {e['refused_p50_ms']:g} ms p50"
            cells.append(f"{e['ok_per_s']:g}, {fmt(e['p50_ms'])}, {fmt(e['p99_ms'])} ({statuses or 'none'})")
        row = f"| {name} | " + " | ".join(cells)
        if len(configs) == 2:
            a, b = (c["endpoints"][name]["ok_per_s"] for c in configs)
            row += f" | {b / a:.2f}x" if a else " | -"
        lines.append(row + " |")
    lines.append(
        "| news enriched by workers/s | "
        + " | ".join(f"{c['news_enriched_per_s']:g} (pending after: {c['news_pending_after']})" for c in configs)
        + (" | |" if len(configs) == 2 else " |")
    )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def code_version() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if git("status", "--porcelain") else "")


def parse_configs(text: str) -> list[tuple[int, int]]:
    configs = []
    for part in text.split(","):
        api, _, workers = part.strip().partition("x")
        configs.append((int(api), int(workers)))
    if not configs or any(not 1 <= a <= 8 or not 0 <= w <= 8 for a, w in configs):
        raise argparse.ArgumentTypeError("configurations look like 1x1,2x2 (API replicas x workers, 1-8 x 0-8)")
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 clients, 20 s per configuration")
    parser.add_argument("--clients", type=int, default=None, help="concurrent clients (default 50; 20 with --quick)")
    parser.add_argument("--duration-s", type=float, default=None, help="load per configuration (default 120; 20)")
    parser.add_argument("--max-requests", type=int, default=200_000, help="a hard cap on requests per configuration")
    parser.add_argument("--configs", type=parse_configs, default=[(1, 1), (2, 2)], help="API x workers, e.g. 1x1,2x2")
    parser.add_argument("--rate-limit-per-ip", default="", help="DOMAINLLM_RATE_LIMIT_PER_IP (default: off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--logs", type=Path, default=None, help="copy each fleet's process logs under this folder")
    args = parser.parse_args()
    args.clients = args.clients or (20 if args.quick else 50)
    args.duration_s = min(MAX_DURATION_S, args.duration_s or (20.0 if args.quick else 120.0))
    if not 1 <= args.clients <= 500:
        parser.error("--clients: 1 to 500")
    out = args.out or RESULTS / ("load_test_quick.json" if args.quick else "load_test.json")

    inputs = Inputs.load()
    report: dict[str, Any] = {
        "machine": machine(),
        "code": code_version(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "args": {
            "quick": args.quick,
            "clients": args.clients,
            "duration_s": args.duration_s,
            "max_requests": args.max_requests,
            "rate_limit_per_ip": args.rate_limit_per_ip or "off",
            "mix": MIX,
            "request_timeout_s": REQUEST_TIMEOUT_S,
        },
        "configs": [run_config(api, workers, args, inputs) for api, workers in args.configs],
    }
    configs = report["configs"]
    report["violations"] = sum(sum(c["endpoints"]["all"]["violations"].values()) for c in configs)
    report["table"] = table(configs)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(f"{args.clients} clients, {args.duration_s:g} s each; no load balancer: requests round-robin over the URLs")
    print(report["table"])
    print(f"violations (5xx, 429/503 without Retry-After, other 4xx, no answer): {report['violations']}")
    print(f"wrote {out}")
    if report["violations"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
