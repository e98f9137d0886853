"""Stateless replicas (issue 17): two real API replicas (``domainllm serve`` processes, ``Fleet``) on one
Redis and one data folder, the tiny random model. What changes through replica A is in force on
replica B within 5 s: a knowledge-base upload, an adapter promotion, a key revocation, a newly trained
ranker, and an adapter loaded (then unloaded) at run time. Each is timed from A's answer (or the
writer's return) to B's first answer that shows it; the times are printed.

B is polled with calls that change nothing, and each is checked to show the old state first, so a
change that never reaches B fails rather than passing by luck.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from apps.recommend.service import RecommendService
from apps.recommend.settings import RecommendSettings
from core.adapters import version_dir
from core.tiny import build_random_lora
from core.versions import AdapterVersions
from domainllm.fleet import Fleet
from domains.recommend.ranking import Rankers, fallback_blender
from tests.doubles.recommend import HashEmbedder

pytestmark = pytest.mark.integration

IN_FORCE_S = 5.0  # the bound
OPERATOR = "replicas-operator-key"
PROPAGATION: dict[str, float] = {}  # what -> seconds until B showed it


@dataclasses.dataclass
class Replicas:
    a: httpx.Client
    b: httpx.Client
    fleet: Fleet
    redis: redis.Redis
    namespaces: dict[str, str]
    adapters: Path
    ranker: Path


@pytest.fixture(scope="module")
def replicas(tiny_model_dir: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    root = tmp_path_factory.mktemp("replicas")
    run = uuid.uuid4().hex[:8]
    ns = {app: f"rep-{app}-{run}" for app in ("tenancy", "support", "sentiment", "recommend", "ops")}
    adapters = root / "adapters"
    adapters.mkdir()
    ranker = root / "data" / "recommend" / "ranker.json"
    env = {
        "DOMAINLLM_OPERATOR_KEY": OPERATOR,
        "DOMAINLLM_TENANCY_NAMESPACE": ns["tenancy"],
        "DOMAINLLM_SUPPORT_NAMESPACE": ns["support"],
        "DOMAINLLM_SENTIMENT_NAMESPACE": ns["sentiment"],
        "DOMAINLLM_RECOMMEND_NAMESPACE": ns["recommend"],
        "DOMAINLLM_RECOMMEND_RANKER_PATH": str(ranker),
        "DOMAINLLM_OPS_NAMESPACE": ns["ops"],
        "DOMAINLLM_BATCH_WAIT_MS": "2",
    }
    fleet = Fleet(
        api=2,
        workers=0,
        base_model=tiny_model_dir,
        adapters_dir=adapters,
        data_dir=root / "data",
        redis_url=redis_url,
        env=env,
        ready_timeout_s=75,
    )
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    with (
        fleet,
        httpx.Client(base_url=fleet.urls[0], timeout=30) as a,
        httpx.Client(base_url=fleet.urls[1], timeout=30) as b,
    ):
        yield Replicas(a, b, fleet, client, ns, adapters, ranker)
    client.close()
    print("\npropagation A -> B: " + ", ".join(f"{k} {v:.2f}s" for k, v in PROPAGATION.items()))


def in_force_on_b(what: str, shown: Callable[[], bool], since: float) -> float:
    """Poll B until ``shown``; the seconds since ``since`` (A's answer), asserted under IN_FORCE_S."""
    while not shown():
        assert time.monotonic() - since < IN_FORCE_S, f"{what}: not in force on replica B after {IN_FORCE_S}s"
        time.sleep(0.05)
    took = time.monotonic() - since
    PROPAGATION[what] = took
    assert took < IN_FORCE_S, f"{what}: in force on B after {took:.2f}s"
    return took


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def tenant(replicas: Replicas) -> dict[str, Any]:
    """A tenant made through A, with an admin and a server key."""
    name = f"rep-{uuid.uuid4().hex[:6]}"
    r = replicas.a.post("/v1/tenants", json={"id": name}, headers=bearer(OPERATOR))
    assert r.status_code == 201, r.text
    admin = bearer(r.json()["admin_key"]["key"])
    r = replicas.a.post("/v1/keys", json={"scope": "server"}, headers=admin)
    assert r.status_code == 201, r.text
    return {"id": name, "admin": admin, "server": bearer(r.json()["key"])}


def test_a_kb_upload_on_a_is_searched_on_b(replicas: Replicas, tenant: dict[str, Any]) -> None:
    def found_on_b() -> bool:  # BM25 only: the question embeds nothing, so B's embedder load is not timed
        r = replicas.b.get("/v1/support/kb/search", params={"q": "voucher", "mode": "bm25"}, headers=tenant["admin"])
        assert r.status_code == 200, r.text
        return any(h["doc_id"] == "vouchers" for h in r.json())

    assert not found_on_b()
    doc = {"doc_id": "vouchers", "title": "Vouchers", "text": "A voucher is valid for two years after purchase."}
    r = replicas.a.post("/v1/support/kb/documents", json={"documents": [doc]}, headers=tenant["admin"])
    assert r.status_code == 200 and r.json()["results"][0]["status"] == "added", r.text
    in_force_on_b("kb upload", found_on_b, time.monotonic())
    # the tenant's own KB: the default tenant's (the operator acts for it) does not hold it
    r = replicas.b.get("/v1/support/kb/search", params={"q": "voucher", "mode": "bm25"}, headers=bearer(OPERATOR))
    assert r.status_code == 200 and not r.json(), r.text


def test_an_adapter_promotion_on_a_serves_on_b(
    replicas: Replicas, tenant: dict[str, Any], tiny_model_dir: Path
) -> None:
    versions = AdapterVersions(replicas.redis, f"{replicas.namespaces['tenancy']}:adapters")
    for n, seed in ((1, 11), (2, 22)):  # two trained versions in the store, as a training job leaves them
        build_random_lora(
            tiny_model_dir, version_dir(replicas.adapters, tenant["id"], "sentiment", n), rank=4, seed=seed
        )
        assert versions.allocate(tenant["id"], "sentiment") == n
        versions.update(tenant["id"], "sentiment", n, state="ready")
    promote = f"/v1/tenants/{tenant['id']}/adapters/sentiment/promote"
    v1, v2 = (f"{tenant['id']}/sentiment@v{n}" for n in (1, 2))

    def served_by_b() -> str:
        r = replicas.b.post(
            "/v1/sentiment/classify", json={"texts": ["Acme beats estimates"]}, headers=tenant["server"]
        )
        assert r.status_code == 200, r.text
        return str(r.json()["model"])

    assert replicas.a.post(promote, json={"version": 1}, headers=tenant["admin"]).status_code == 200
    assert served_by_b() == v1
    r = replicas.a.post(promote, json={"version": 2}, headers=tenant["admin"])
    assert r.status_code == 200 and r.json()["serving"] == v2, r.text
    in_force_on_b("adapter promotion", lambda: served_by_b() == v2, time.monotonic())


def test_a_key_revoked_on_a_is_refused_on_b(replicas: Replicas, tenant: dict[str, Any]) -> None:
    r = replicas.a.post("/v1/keys", json={"scope": "server", "label": "to revoke"}, headers=tenant["admin"])
    assert r.status_code == 201, r.text
    key_id, key = r.json()["id"], bearer(r.json()["key"])

    def refused_on_b() -> bool:
        status = replicas.b.get("/v1/recommend/anyone", headers=key).status_code
        assert status in (200, 401), status
        return status == 401

    assert not refused_on_b()
    r = replicas.a.delete(f"/v1/keys/{key_id}", headers=tenant["admin"])
    assert r.status_code == 200, r.text
    in_force_on_b("key revocation", refused_on_b, time.monotonic())


def test_a_newly_trained_ranker_serves_on_b(replicas: Replicas, tenant: dict[str, Any]) -> None:
    def ranker_on_b() -> str:
        r = replicas.b.get("/v1/recommend/someone", headers=tenant["server"])
        assert r.status_code == 200, r.text
        return str(r.json()["ranker"])

    assert ranker_on_b() == "fallback"
    # what `domainllm recommend train-ranker` does once fitted: save to the shared store, bump the version
    trainer = RecommendService(
        RecommendSettings(namespace=replicas.namespaces["recommend"], ranker_path=replicas.ranker),
        redis.Redis.from_url(replicas.fleet.redis_url),
        HashEmbedder(),
    )
    trained = Rankers(
        dataclasses.replace(fallback_blender(True), kind="trained"),
        dataclasses.replace(fallback_blender(False), kind="trained"),
    )
    trainer.save_rankers(trained)
    in_force_on_b("ranker", lambda: ranker_on_b() == "trained", time.monotonic())


def test_an_adapter_loaded_on_a_at_run_time_is_served_by_b_and_unloaded_with_it(
    replicas: Replicas, tiny_model_dir: Path
) -> None:
    admin = bearer(replicas.fleet.admin_key)
    build_random_lora(tiny_model_dir, replicas.adapters / "gamma", rank=4, seed=3)  # after start: not found then

    def listed_on_b() -> bool:
        r = replicas.b.get("/v1/adapters", headers=admin)
        assert r.status_code == 200, r.text
        return "gamma" in {a["id"] for a in r.json()["data"]}

    assert not listed_on_b()
    r = replicas.a.post("/v1/adapters", json={"name": "gamma"}, headers=admin)
    assert r.status_code == 201, r.text
    in_force_on_b("adapter load", listed_on_b, time.monotonic())
    body = {"model": "gamma", "prompt": "Hello", "max_tokens": 2}
    assert replicas.b.post("/v1/completions", json=body, headers=admin).status_code == 200
    r = replicas.a.delete("/v1/adapters/gamma", headers=admin)
    assert r.status_code == 200, r.text
    in_force_on_b("adapter unload", lambda: not listed_on_b(), time.monotonic())
    assert replicas.b.post("/v1/completions", json=body, headers=admin).status_code == 404
