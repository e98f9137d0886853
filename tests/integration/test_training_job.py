"""Training as a job (issue 16, lines 1 and 7): the admin API queues a tenant's training on the Celery
``train`` queue, a real worker (a subprocess, ``-Q train -c 1``) runs it on the tiny random model,
the job's progress is polled, and the version it made serves as ``tenant/sentiment@vN``.

Bad input gets a clear error and changes nothing that serves: a malformed file (the job fails naming
the line), an unknown domain, a run over its time budget, promoting a version the gate refused or one
that does not exist.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from apps.server import create_app
from apps.settings import AppSettings
from apps.support.settings import SupportSettings
from core.config import Settings
from core.engine import LocalEngine
from tests.doubles.redis import RedisProcess
from tests.doubles.servers import bearer, start_process, stop_process

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]
OPERATOR = "train-job-operator"
SAMPLE = PROJECT_ROOT / "data" / "samples" / "train" / "sentiment_headlines.csv"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 180.0, every: float = 0.3) -> Any:
    give_up = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < give_up, f"timed out waiting for {what}"
        time.sleep(every)


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("train-job")
    redis = RedisProcess(tmp / "redis").start()
    run = uuid.uuid4().hex[:6]
    env = {
        **os.environ,
        "DOMAINLLM_ENVIRONMENT": "test",
        "DOMAINLLM_ADMIN_KEY": "train-job-admin-key",
        "DOMAINLLM_OPERATOR_KEY": OPERATOR,
        "DOMAINLLM_REDIS_URL": redis.url,
        "DOMAINLLM_BASE_MODEL": str(tiny_model_dir),
        "DOMAINLLM_DATA_DIR": str(tmp / "data"),
        "DOMAINLLM_ADAPTERS_DIR": str(tmp / "adapters"),
        "DOMAINLLM_TENANCY_NAMESPACE": f"train-{run}",
        "DOMAINLLM_SENTIMENT_NAMESPACE": f"train-sentiment-{run}",
        "DOMAINLLM_SHARED_DATA_DIR": str(tmp / "no-shared-data"),  # no public guard set: a quick gate
    }
    log = tmp / "worker.log"
    worker = start_process(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "train", "-c", "1",
         "-n", f"train-{run}@%h", "-l", "INFO"], env, log)  # fmt: skip
    core = Settings(
        environment="test",
        data_dir=tmp / "data",
        base_model=str(tiny_model_dir),
        adapters_dir=tmp / "adapters",
        admin_key="train-job-admin-key",
        redis_url=redis.url,
        shared_data_dir=tmp / "no-shared-data",
        batch_wait_ms=2,
    )
    settings = AppSettings.of(
        core,
        operator_key=SecretStr(OPERATOR),
        tenancy_namespace=f"train-{run}",
        support=SupportSettings(namespace=f"train-support-{run}", kb_dir=tmp / "kb"),
    )
    settings.sentiment.namespace = f"train-sentiment-{run}"
    settings.sentiment.inbox_dir = None
    settings.recommend.namespace = f"train-recommend-{run}"
    engine = LocalEngine(settings)
    try:
        with TestClient(create_app(settings, engine=engine)) as client:
            wait_for("the API", lambda: client.get("/readyz").status_code == 200, timeout=60)
            r = client.post("/v1/tenants", json={"id": f"shop-{run}"}, headers=bearer(OPERATOR))
            assert r.status_code == 201, r.text
            admin = bearer(r.json()["admin_key"]["key"])
            r = client.post("/v1/keys", json={"scope": "server"}, headers=admin)
            yield {
                "client": client,
                "tenant": f"shop-{run}",
                "admin": admin,
                "server": bearer(r.json()["key"]),
                "log": log,
            }
    finally:
        engine.close()
        stop_process(worker)
        redis.stop()
        assert "Traceback" not in log.read_text() or "TrainingBudgetError" in log.read_text(), log.read_text()[-4000:]


def train(stack: dict[str, Any], content: str, name: str = "headlines.csv", **extra: Any) -> dict[str, Any]:
    c: TestClient = stack["client"]
    url = f"/v1/tenants/{stack['tenant']}/adapters/sentiment/train"
    r = c.post(url, json={"files": [{"name": name, "content": content}], **extra}, headers=stack["admin"])
    assert r.status_code == 202, r.text
    status_url = r.json()["status_url"]
    seen: list[dict[str, Any]] = []

    def ended() -> dict[str, Any] | None:
        job = c.get(status_url, headers=stack["admin"]).json()
        seen.append(job)
        return job if job["state"] in ("done", "failed") else None

    job = wait_for("the training job", ended)
    job["seen"] = seen
    return job


def serving(stack: dict[str, Any]) -> str:
    c: TestClient = stack["client"]
    r = c.post("/v1/sentiment/classify", json={"texts": ["Globex shares plunge"]}, headers=stack["server"])
    assert r.status_code == 200, r.text
    return str(r.json()["model"])


def test_a_training_job_makes_a_version_that_serves_and_bad_input_changes_nothing(stack: dict[str, Any]) -> None:
    c: TestClient = stack["client"]
    tenant, admin = stack["tenant"], stack["admin"]
    versions_url = f"/v1/tenants/{tenant}/adapters/sentiment"
    before = serving(stack)

    # a malformed file: the job fails naming the line; nothing is allocated, nothing serves differently
    bad = SAMPLE.read_text(encoding="utf-8").splitlines()[:40]
    bad[7] = "Globex beats estimates,bullish,Globex"
    job = train(stack, "\n".join(bad) + "\n")
    assert job["state"] == "failed" and "line 8" in job["error"] and "bullish" in job["error"], job
    assert c.get(versions_url, headers=admin).json()["versions"] == []
    assert serving(stack) == before

    # a good file: progress is polled, v1 is made, gated (against what serves: the base here) and carded
    job = train(stack, SAMPLE.read_text(encoding="utf-8"))
    assert job["state"] == "done", job
    result = job["result"]
    assert result["model"] == f"{tenant}/sentiment@v1" and result["state"] in ("ready", "refused")
    assert result["gate"]["reason"]
    assert any(j.get("step") for j in job["seen"]) or job.get("step"), "no progress was ever reported"
    if result["state"] == "ready":
        assert serving(stack) == f"{tenant}/sentiment@v1"
    else:  # refused: promoting it needs force, and the error says why
        r = c.post(f"{versions_url}/promote", json={"version": 1}, headers=admin)
        assert r.status_code == 409 and "force=true" in r.json()["error"]["message"], r.text
        assert serving(stack) == before
        r = c.post(f"{versions_url}/promote", json={"version": 1, "force": True}, headers=admin)
        assert r.status_code == 200, r.text
    assert serving(stack) == f"{tenant}/sentiment@v1"

    # a run over its time budget: a clear failure, v1 keeps serving
    job = train(stack, SAMPLE.read_text(encoding="utf-8"), budget_s=0.001)
    assert job["state"] == "failed" and "time budget" in job["error"], job
    assert serving(stack) == f"{tenant}/sentiment@v1"
    state = c.get(versions_url, headers=admin).json()
    assert [v["state"] for v in state["versions"]][-1] == "failed"

    # promoting a version that does not exist; an unknown domain; another tenant's path
    r = c.post(f"{versions_url}/promote", json={"version": 42}, headers=admin)
    assert r.status_code == 404 and "@v42 does not exist" in r.json()["error"]["message"], r.text
    r = c.post(f"/v1/tenants/{tenant}/adapters/movies/train", json={"files": [{"name": "a.csv", "content": "x"}]},
               headers=admin)  # fmt: skip
    assert r.status_code == 422 and "movies" in r.text, r.text
    r = c.post("/v1/tenants/someone-else/adapters/sentiment/promote", json={"version": 1}, headers=admin)
    assert r.status_code == 403, r.text
    r = c.post(f"{versions_url}/promote", json={"version": 2}, headers=admin)  # v2 failed (over budget)
    assert r.status_code == 409 and "failed" in r.json()["error"]["message"], r.text
    assert serving(stack) == f"{tenant}/sentiment@v1"
