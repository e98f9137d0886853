"""``domainllm sentiment replay`` end to end: the CLI streams dated headlines into a real Redis, a
real Celery worker (the real base model with the sentiment adapter) enriches them and delivers the
alerts, and the chart is drawn. The project's sample feed must raise its one Globex alert; the gold
commodity news (read from the shared data at run time) must run through and draw its chart."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import PROJECT_ROOT, Settings
from tests.doubles.redis import RedisProcess

pytestmark = pytest.mark.integration

GOLD = Settings().shared_data_dir / "finance" / "gold_commodity_news" / "gold-dataset-sinha-khandait.tsv"


@pytest.fixture(scope="module")
def env(real_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("replay")
    redis = RedisProcess(tmp / "redis").start()
    env = {**os.environ, "DOMAINLLM_REDIS_URL": redis.url, "DOMAINLLM_BASE_MODEL": str(real_model_dir),
           "DOMAINLLM_ADAPTERS_DIR": str(PROJECT_ROOT / "data" / "adapters")}  # fmt: skip
    log = tmp / "worker.log"
    cmd = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "enrich,alerts", "-l", "INFO"]
    with log.open("wb") as out:
        worker = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while "worker engine ready" not in log.read_text():
            assert time.monotonic() < deadline and worker.poll() is None, log.read_text()[-3000:]
            time.sleep(0.3)
        yield env
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        redis.stop()


def replay(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "domainllm.cli", "sentiment", "replay", *args, "--timeout", "120"]
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, env={**env, "COLUMNS": "200"}, capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_sample_feed_replay_raises_the_globex_alert(env: dict[str, str], tmp_path: Path) -> None:
    chart = tmp_path / "sample.png"
    out = replay(env, str(PROJECT_ROOT / "data/samples/news/news.jsonl"), "--chart", str(chart)).stdout
    alerts = [line for line in out.splitlines() if " ALERT " in line]
    assert len(alerts) == 1 and "entity GLBX" in alerts[0], out
    assert "40 enriched, 1 alerts" in out
    assert chart.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.long  # 25-50 s of the suite for what the sample feed's replay shows too: `make bench` runs it
@pytest.mark.skipif(not GOLD.exists(), reason=f"gold commodity news not found at {GOLD}")
def test_gold_news_replay_runs_end_to_end(env: dict[str, str], tmp_path: Path) -> None:
    chart = tmp_path / "gold.png"
    out = replay(env, str(GOLD), "--since", "2017-03-01", "--limit", "40", "--chart", str(chart)).stdout
    assert "replaying 40 headlines" in out and "40 enriched" in out, out
    assert chart.stat().st_size > 10_000
