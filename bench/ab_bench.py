"""A/B of a tenant's adapter versions through the served stack (issue 16, line 4).

    .venv/bin/python bench/ab_bench.py            # ~15 min on 2 CPU cores (two trainings, 2 x 800 requests)
    .venv/bin/python bench/ab_bench.py --texts 300

What runs: the real base model, the API in this process (FastAPI's TestClient: the same routes,
auth and routing as uvicorn), a real redis-server, a temporary artefact store. Two tenants:

* "better": v1 a fresh LoRA trained on the first 30 rows of the sample headline file (a tenant with
  little data and no shared adapter to start from: the bench turns ``start_from_shared`` off for it),
  v2 trained on the whole file from the shared adapter, as a tenant's training does
  (finetune.own.run_training, the code the train queue runs). v1 is promoted, v2 gets 50% of the
  traffic (PUT .../split). Simulated analysts classify the FPB test headlines one request each and
  post the right label to /v1/sentiment/feedback with the model the response named: each verdict
  counts for the version that gave the label. The A/B report must say "better".
* "same": v1 as above (a fresh LoRA on 30 rows), and v2 an exact copy of it; the report must say
  "no difference".

Next to each report: each version's true accuracy on the same texts (every text through every
version), so the A/B estimate can be checked against the truth. One served run is one draw; from the
per-text verdicts of every version the bench then replays ``--replays`` A/B runs offline (a fresh
random 50/50 split and order of the same texts each time, the report read every 25 outcomes per arm)
and counts how often the verdict rule called each pair "better" at any look: the always-valid rule
the report uses, next to a fixed-n 95% interval read the same way. Writes bench/results/ab.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from apps.server import create_app  # noqa: E402
from apps.settings import AppSettings  # noqa: E402
from apps.support.settings import SupportSettings  # noqa: E402
from apps.tenants.abtest import MIN_PER_ARM, always_valid, newcombe  # noqa: E402
from core.adapters import version_dir  # noqa: E402
from core.config import get_settings  # noqa: E402
from core.engine import LocalEngine  # noqa: E402
from domains.sentiment import read_fpb_test  # noqa: E402
from finetune.own import TrainRequest, run_training  # noqa: E402
from finetune.tasks import sentiment_own  # noqa: E402
from tests.doubles.redis import RedisProcess  # noqa: E402

OUT = ROOT / "bench" / "results" / "ab.json"
SAMPLE = ROOT / "data" / "samples" / "train" / "sentiment_headlines.csv"
OPERATOR = "ab-bench-operator"
SMALL_ROWS = 30


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def tenant_keys(client: TestClient, tenant: str) -> dict[str, dict[str, str]]:
    op = bearer(OPERATOR)
    r = client.post("/v1/tenants", json={"id": tenant}, headers=op)
    r.raise_for_status()
    keys = {"admin": bearer(r.json()["admin_key"]["key"])}
    r = client.post("/v1/keys", json={"scope": "server"}, headers=keys["admin"])
    r.raise_for_status()
    keys["server"] = bearer(r.json()["key"])
    return keys


def run_arm(client: TestClient, keys: dict[str, dict[str, str]], texts: list[tuple[str, str]]) -> dict[str, Any]:
    """Each text classified once (the route sends it to an arm), then the analyst's verdict posted."""
    served: dict[str, int] = {}
    started = time.perf_counter()
    for text, gold in texts:
        r = client.post("/v1/sentiment/classify", json={"texts": [text]}, headers=keys["server"])
        r.raise_for_status()
        result = r.json()["results"][0]
        served[result["model"]] = served.get(result["model"], 0) + 1
        fb = {"text": text, "model": result["model"], "given": result["label"], "label": gold}
        client.post("/v1/sentiment/feedback", json=fb, headers=keys["server"]).raise_for_status()
    return {"served": served, "seconds": round(time.perf_counter() - started, 1)}


def verdicts(engine: LocalEngine, model: str, texts: list[tuple[str, str]]) -> list[bool]:
    """Whether ``model`` labels each text right (every text through the model)."""
    from domains.sentiment import read_serving

    serving = read_serving(engine.serving_config(model))
    right: list[bool] = []
    for i in range(0, len(texts), 32):
        part = texts[i : i + 32]
        scores = engine.score_labels(
            [t for t, _ in part], list(serving.labels), model=model, instruction=serving.instruction
        )
        right += [max(s, key=s.__getitem__) == gold for s, (_, gold) in zip(scores, part, strict=True)]
    return right


def replay(v1: list[bool], v2: list[bool], runs: int, every: int = 25, seed: int = 0) -> dict[str, float]:
    """Offline A/B runs on the same texts: per run a random 50/50 split and order; the share of runs
    in which each rule's interval excluded zero at some look, and in which it said "better" at the end."""
    rng = random.Random(seed)
    out = {"always_valid_any_look": 0, "always_valid_at_end": 0, "fixed_n_any_look": 0, "fixed_n_at_end": 0}
    for _ in range(runs):
        order = list(range(len(v1)))
        rng.shuffle(order)
        s, n = [0, 0], [0, 0]
        called = {"always_valid": False, "fixed_n": False}
        for i in order:
            arm = rng.random() < 0.5  # True: the candidate v2
            n[arm] += 1
            s[arm] += (v2 if arm else v1)[i]
            if min(n) >= MIN_PER_ARM and n[arm] % every == 0:
                for name, rule in (("always_valid", always_valid), ("fixed_n", newcombe)):
                    _, lo, hi = rule(s[1], n[1], s[0], n[0])
                    called[name] |= lo > 0 or hi < 0
        for name, rule in (("always_valid", always_valid), ("fixed_n", newcombe)):
            out[f"{name}_any_look"] += called[name]
            out[f"{name}_at_end"] += rule(s[1], n[1], s[0], n[0])[1] > 0
    return {k: round(v / runs, 4) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=800, help="FPB test headlines per scenario")
    parser.add_argument("--replays", type=int, default=1000, help="offline A/B runs per scenario")
    args = parser.parse_args()
    base = get_settings()
    fpb = base.shared_data_dir / "finance" / "finlora_test" / "fpb_test.jsonl"
    if not fpb.is_file():
        raise SystemExit(f"the FPB test split is missing ({fpb}): this bench needs ../shared/data")
    texts = [(r.text, r.label) for r in read_fpb_test(fpb)][: args.texts]
    tmp = Path(tempfile.mkdtemp(prefix="ab-bench-"))
    redis = RedisProcess(tmp / "redis").start()
    run = uuid.uuid4().hex[:6]
    core = base.model_copy(
        update={
            "redis_url": redis.url,
            "data_dir": tmp / "data",
            "adapters_dir": tmp / "adapters",
            # batch work (the gate's evaluation, 800 texts twice): not the API's 25 s per request
            "engine_deadline_s": 3600.0,
            "engine_max_queue_s": 3600.0,
        }
    )
    # the shared adapters stay where they are: copy the one this bench compares against
    shutil.copytree(base.adapters_path / "sentiment", tmp / "adapters" / "sentiment")
    settings = AppSettings.of(
        core,
        operator_key=SecretStr(OPERATOR),
        tenancy_namespace=f"ab-{run}",
        support=SupportSettings(namespace=f"ab-support-{run}", kb_dir=tmp / "kb"),
    )
    settings.sentiment.namespace = f"ab-sentiment-{run}"
    settings.sentiment.inbox_dir = None
    settings.recommend.namespace = f"ab-recommend-{run}"
    engine = LocalEngine(settings)
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()}
    }
    try:
        with TestClient(create_app(settings, engine=engine)) as client:
            deadline = time.monotonic() + 300
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the server was not ready"
                time.sleep(0.5)
            services = client.app.state.services  # type: ignore[attr-defined]
            small = tmp / "sentiment_small.csv"
            lines = SAMPLE.read_text(encoding="utf-8").splitlines()
            small.write_text("\n".join(lines[: SMALL_ROWS + 1]) + "\n", encoding="utf-8")

            def train(tenant: str, path: Path, *, fresh: bool = False) -> dict[str, Any]:
                t0 = time.perf_counter()
                options = sentiment_own.OwnSentimentOptions
                if fresh:  # a LoRA of its own, not started from the shared adapter
                    sentiment_own.OwnSentimentOptions = functools.partial(options, start_from_shared=False)  # type: ignore[assignment,misc]
                try:
                    record = run_training(TrainRequest(tenant, "sentiment", [path]), settings, engine, services.versions,
                                          shared_model="sentiment")  # fmt: skip
                finally:
                    sentiment_own.OwnSentimentOptions = options  # type: ignore[misc]
                print(
                    f"{record['model']}: {record['state']} in {time.perf_counter() - t0:.0f} s; {record['gate']['reason']}"
                )
                return record

            scenarios: dict[str, Any] = {}
            for name in ("better", "same"):
                tenant = f"ab-{name}-{run}"
                keys = tenant_keys(client, tenant)
                train(tenant, small, fresh=True)
                if name == "better":
                    train(tenant, SAMPLE)
                else:  # v2 = v1's files exactly, recorded as a version that passed
                    v2 = services.versions.allocate(tenant, "sentiment")
                    shutil.copytree(
                        version_dir(settings.adapters_path, tenant, "sentiment", 1),
                        version_dir(settings.adapters_path, tenant, "sentiment", v2),
                    )
                    services.versions.update(tenant, "sentiment", v2, state="ready")
                admin = f"/v1/tenants/{tenant}/adapters/sentiment"
                client.post(
                    f"{admin}/promote", json={"version": 1, "force": True}, headers=keys["admin"]
                ).raise_for_status()
                r = client.put(
                    f"{admin}/split", json={"version": 2, "share": 0.5, "force": True}, headers=keys["admin"]
                )
                r.raise_for_status()
                arm = run_arm(client, keys, texts)
                ab = client.get(f"{admin}/ab", headers=keys["admin"]).json()
                right = {v: verdicts(engine, f"{tenant}/sentiment@{v}", texts) for v in ("v1", "v2")}
                truth = {v: round(sum(r) / len(r), 4) for v, r in right.items()}
                replays = replay(right["v1"], right["v2"], args.replays)
                scenarios[name] = {"traffic": arm, "report": ab, "true_accuracy": truth, "replays": replays}
                comp = ab["comparison"]
                print(f"{name}: v2 - v1 = {comp['difference']:+.4f} (95% CI {comp['ci95']}) -> {comp['verdict']}; "
                      f"true accuracy v1 {truth['v1']:.4f}, v2 {truth['v2']:.4f}; {args.replays} replays: {replays}")  # fmt: skip
            report["scenarios"] = scenarios
            report["texts"] = len(texts)
            report["replays"] = args.replays
    finally:
        engine.close()
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    OUT.write_text(json.dumps(report, indent=2))
    print("| scenario | v1 accuracy (A/B) | v2 accuracy (A/B) | v2 - v1 [always-valid 95% CI] | verdict | true v1 | true v2 "
          "| replays called better: always-valid (any look) | fixed-n 95% (any look) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, sc in report["scenarios"].items():
        rows = {r["version"]: r for r in sc["report"]["versions"]}
        comp = sc["report"]["comparison"]
        print(
            f"| {name} | {rows['v1']['accuracy']:.3f} (n={rows['v1']['n']}) | {rows['v2']['accuracy']:.3f} (n={rows['v2']['n']}) "
            f"| {comp['difference']:+.3f} [{comp['ci95'][0]:+.3f}, {comp['ci95'][1]:+.3f}] | {comp['verdict']} "
            f"| {sc['true_accuracy']['v1']:.3f} | {sc['true_accuracy']['v2']:.3f} "
            f"| {sc['replays']['always_valid_any_look']:.3f} | {sc['replays']['fixed_n_any_look']:.3f} |"
        )


if __name__ == "__main__":
    main()
