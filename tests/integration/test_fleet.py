"""The local fleet launcher itself (``domainllm.fleet``): real processes on loopback, the tiny random
model. Two API replicas and a worker come up on one Redis and both replicas answer; one replica
killed with SIGKILL leaves the other answering and comes back on its port; Redis restarts with its
data; and nothing outlives the block."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest
import redis

from domainllm.fleet import Fleet, FleetError

pytestmark = pytest.mark.integration

CLASSIFY = {"model": "base", "texts": ["Profit fell on weak demand."], "labels": ["negative", "positive"]}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_replicas_answer_and_one_survives_the_other_killed(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "adapters").mkdir()
    fleet = Fleet(
        api=2, workers=1, base_model=tiny_model_dir, adapters_dir=tmp_path / "adapters", data_dir=tmp_path / "fleet"
    )
    with fleet, httpx.Client(timeout=30, headers={"Authorization": f"Bearer {fleet.admin_key}"}) as http:
        assert len(set(fleet.urls)) == 2
        for url in fleet.urls:  # both replicas, one engine each, the same admin key
            r = http.post(f"{url}/v1/classify", json=CLASSIFY)
            assert r.status_code == 200, r.text
            assert set(r.json()["results"][0]["scores"]) == {"negative", "positive"}
        pids = [m.pid for m in [*fleet.apis, *fleet.workers]] + [fleet.redis.pid if fleet.redis else None]
        assert all(pids)

        fleet.kill(0, signal.SIGKILL)
        assert not fleet.apis[0].running()
        with pytest.raises(httpx.TransportError):
            http.get(f"{fleet.urls[0]}/healthz")
        assert http.post(f"{fleet.urls[1]}/v1/classify", json=CLASSIFY).status_code == 200

        fleet.restart(0)  # on its old port
        assert http.get(f"{fleet.urls[0]}/readyz").status_code == 200

        client = redis.Redis.from_url(fleet.redis_url)
        client.set("fleet-test", "kept")
        fleet.restart_redis()
        assert client.get("fleet-test") == b"kept"  # the append-only file, read back on start
        client.close()
    assert not [pid for pid in pids if pid is not None and alive(pid)]  # no orphans
    assert (tmp_path / "fleet" / "logs" / "api-1.log").exists()


def test_a_replica_that_cannot_start_fails_with_its_log_and_leaves_nothing(tmp_path: Path) -> None:
    fleet = Fleet(api=1, workers=0, base_model=tmp_path / "no-model", data_dir=tmp_path / "fleet", ready_timeout_s=20)
    with pytest.raises(FleetError, match="api-0"):
        fleet.start()
    assert fleet.redis is not None and not fleet.redis.running()
    assert not fleet.apis[0].running()
