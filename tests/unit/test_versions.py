"""Adapter versions per tenant (core.versions), training jobs (core.jobs) and the A/B statistics."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from apps.tenants.abtest import MIN_PER_ARM, ab_report, always_valid, compare, newcombe, wilson
from core.errors import ConflictError, InvalidRequestError, NotFoundError
from core.jobs import HEARTBEAT_GRACE_S, TrainingJobs
from core.versions import AdapterVersions, bucket


@pytest.fixture
def versions(redis_url: str) -> Iterator[AdapterVersions]:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    yield AdapterVersions(r, f"t-{uuid.uuid4().hex[:8]}:adapters")
    r.close()


@pytest.fixture
def jobs(redis_url: str) -> Iterator[TrainingJobs]:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    yield TrainingJobs(r, f"t-{uuid.uuid4().hex[:8]}:train")
    r.close()


def ready(v: AdapterVersions, tenant: str = "acme", name: str = "sentiment") -> int:
    n = v.allocate(tenant, name)
    v.update(tenant, name, n, state="ready")
    return n


def test_a_tenant_without_versions_is_served_by_the_shared_adapter(versions: AdapterVersions) -> None:
    route = versions.route("acme", "sentiment", "sentiment", "k")
    assert (route.model, route.version, route.arm) == ("sentiment", None, "shared")


def test_versions_count_up_per_tenant_and_name(versions: AdapterVersions) -> None:
    assert [versions.allocate("acme", "sentiment") for _ in range(3)] == [1, 2, 3]
    assert versions.allocate("acme", "support") == 1
    assert versions.allocate("globex", "sentiment") == 1
    assert [r["model"] for r in versions.records("acme", "sentiment")] == [
        "acme/sentiment@v1",
        "acme/sentiment@v2",
        "acme/sentiment@v3",
    ]


def test_promote_then_rollback_walks_the_history(versions: AdapterVersions) -> None:
    v1, v2, v3 = ready(versions), ready(versions), ready(versions)
    versions.promote("acme", "sentiment", v1)
    versions.promote("acme", "sentiment", v2)
    versions.promote("acme", "sentiment", v3)
    assert versions.route("acme", "sentiment", "sentiment").model == "acme/sentiment@v3"
    assert versions.rollback("acme", "sentiment") == v2
    assert versions.route("acme", "sentiment", "sentiment").model == "acme/sentiment@v2"
    assert versions.rollback("acme", "sentiment") == v1
    with pytest.raises(ConflictError, match="no earlier promoted version"):
        versions.rollback("acme", "sentiment")
    assert versions.route("acme", "sentiment", "sentiment").version == v1


def test_only_a_ready_version_is_promoted_and_the_error_says_why(versions: AdapterVersions) -> None:
    training = versions.allocate("acme", "sentiment")
    with pytest.raises(ConflictError, match="still training"):
        versions.promote("acme", "sentiment", training)
    refused = versions.allocate("acme", "sentiment")
    versions.update("acme", "sentiment", refused, state="refused", gate={"reason": "worse on held-out"})
    with pytest.raises(ConflictError, match=r"worse on held-out.*force=true"):
        versions.promote("acme", "sentiment", refused)
    failed = versions.allocate("acme", "sentiment")
    versions.update("acme", "sentiment", failed, state="failed", error="out of memory")
    with pytest.raises(ConflictError, match="out of memory"):
        versions.promote("acme", "sentiment", failed)
    with pytest.raises(
        NotFoundError, match=r"acme/sentiment@v9 does not exist \(versions of acme/sentiment: v1, v2, v3\)"
    ):
        versions.promote("acme", "sentiment", 9)
    assert versions.route("acme", "sentiment", "sentiment").arm == "shared"  # nothing changed
    versions.promote("acme", "sentiment", refused, force=True)
    assert versions.route("acme", "sentiment", "sentiment").version == refused


def test_a_pinned_route_ignores_automatic_promotion_but_not_an_explicit_one(versions: AdapterVersions) -> None:
    v1, v2 = ready(versions), ready(versions)
    with pytest.raises(ConflictError, match="nothing to pin"):
        versions.pin("acme", "sentiment")
    versions.pin("acme", "sentiment", v1)
    assert versions.promote("acme", "sentiment", v2, auto=True) is None
    assert versions.route("acme", "sentiment", "sentiment").version == v1
    assert versions.route_state("acme", "sentiment")["pinned"]
    versions.promote("acme", "sentiment", v2)  # an explicit promotion moves it (and unpins)
    assert versions.route("acme", "sentiment", "sentiment").version == v2
    assert not versions.route_state("acme", "sentiment")["pinned"]


def test_a_split_sends_a_sticky_share_of_keys_to_the_candidate(versions: AdapterVersions) -> None:
    v1, v2 = ready(versions), ready(versions)
    versions.promote("acme", "sentiment", v1)
    with pytest.raises(InvalidRequestError, match="share"):
        versions.split("acme", "sentiment", v2, 1.5)
    with pytest.raises(ConflictError, match="already serves"):
        versions.split("acme", "sentiment", v1, 0.5)
    versions.split("acme", "sentiment", v2, 0.25)
    arms = [versions.route("acme", "sentiment", "sentiment", f"user-{i}").version for i in range(2000)]
    share = arms.count(v2) / len(arms)
    assert 0.21 < share < 0.29
    again = [versions.route("acme", "sentiment", "sentiment", f"user-{i}").version for i in range(2000)]
    assert again == arms  # sticky
    assert versions.route("acme", "sentiment", "sentiment", None).version == v1  # no key: the promoted one
    versions.promote("acme", "sentiment", v2)  # promoting the candidate ends the split
    assert versions.route_state("acme", "sentiment")["candidate"] is None
    versions.end_split("acme", "sentiment")


def test_buckets_are_uniform_enough() -> None:
    values = [bucket(str(i)) for i in range(10_000)]
    assert all(0 <= v < 1 for v in values)
    assert abs(sum(v < 0.5 for v in values) / len(values) - 0.5) < 0.03


def test_outcomes_are_counted_per_version_and_the_shared_one_is_version_0(versions: AdapterVersions) -> None:
    versions.count("acme", "support", 2, "served", 3)
    versions.count("acme", "support", 2, "up")
    versions.count("acme", "support", None, "served")
    assert versions.outcomes("acme", "support") == {0: {"served": 1}, 2: {"served": 3, "up": 1}}
    assert versions.outcomes("globex", "support") == {}


def test_a_training_job_reports_progress_and_ends(jobs: TrainingJobs) -> None:
    job_id = jobs.create("acme", "sentiment", files=["a.csv"], budget_s=60)
    assert jobs.get(job_id)["state"] == "queued"
    with pytest.raises(NotFoundError):
        jobs.get(job_id, tenant="globex")  # another tenant's job reads as unknown
    jobs.start(job_id)
    jobs.progress(job_id, 3, 10, 0.5)
    job = jobs.get(job_id)
    assert (job["state"], job["step"], job["total"], job["attempts"]) == ("running", 3, 10, 1)
    jobs.finish(job_id, {"version": 1})
    assert jobs.get(job_id)["result"] == {"version": 1}
    assert [j["id"] for j in jobs.recent("acme")] == [job_id]
    assert jobs.reap() == []


def test_a_job_whose_worker_died_is_failed_with_the_reason(jobs: TrainingJobs) -> None:
    job_id = jobs.create("acme", "sentiment", files=["a.csv"], budget_s=60)
    jobs.start(job_id)
    beat = jobs.get(job_id)["heartbeat"]
    assert jobs.reap(now=beat + 10) == []
    assert jobs.reap(now=beat + HEARTBEAT_GRACE_S + 1) == [job_id]
    job = jobs.get(job_id)
    assert job["state"] == "failed" and "no heartbeat" in job["error"]


def test_wilson_and_newcombe_match_published_values() -> None:
    # Newcombe (1998), Table II, example (a): 56/70 vs 48/80 -> 0.2000, 95% CI 0.0524 to 0.3339
    d, lo, hi = newcombe(56, 70, 48, 80)
    assert (round(d, 4), round(lo, 4), round(hi, 4)) == (0.2, 0.0524, 0.3339)
    lo, hi = wilson(81, 263)  # Wilson interval for 81/263: 0.2553 to 0.3662 (Newcombe 1998, method 3)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)


def test_the_ab_verdict_needs_the_interval_to_exclude_zero() -> None:
    rng = random.Random(7)

    def counts(rate: float, n: int) -> dict[str, int]:
        clicks = sum(rng.random() < rate for _ in range(n))
        return {"served": n, "click": clicks}

    better = {1: counts(0.10, 4000), 2: counts(0.14, 4000)}
    assert compare("recommend", better, 2, 1)["verdict"] == "better"
    same = {1: counts(0.10, 4000), 2: counts(0.10, 4000)}
    assert compare("recommend", same, 2, 1)["verdict"] == "no difference"
    assert compare("recommend", {1: counts(0.1, 10)}, 2, 1)["verdict"] == "not enough data"
    report = ab_report("recommend", better, {"promoted": 1, "candidate": 2})
    assert [r["version"] for r in report["versions"]] == ["v1", "v2"]
    assert report["comparison"]["candidate"] == "v2"
    support = ab_report("support", {0: {"served": 10, "up": 3, "down": 1, "handoff": 2}}, {})
    row = support["versions"][0]
    assert (row["version"], row["n"], row["helpful_rate"], row["deflection_rate"]) == ("shared", 4, 0.75, 0.8)


def _wrong_calls(rule, rate_a: float, rate_b: float, *, runs: int = 300, n: int = 2000, every: int = 50) -> float:
    """The share of simulated A/B runs in which ``rule``'s interval excluded zero at any look (a
    reader who checks the report every ``every`` outcomes per arm, from ``MIN_PER_ARM`` on)."""
    rng = random.Random(11)
    called = 0
    for _ in range(runs):
        s1 = s2 = 0
        for i in range(1, n + 1):
            s1 += rng.random() < rate_a
            s2 += rng.random() < rate_b
            if i % every == 0 and i >= MIN_PER_ARM:
                _, lo, hi = rule(s1, i, s2, i)
                if lo > 0 or hi < 0:
                    called += 1
                    break
    return called / runs


def test_reading_the_report_at_every_look_calls_an_equal_pair_different_at_most_five_percent_of_the_time() -> None:
    # the fixed-n interval read 40 times over an A/A run calls it different in >20% of runs: the reason
    # the verdict uses the always-valid sequence
    assert _wrong_calls(newcombe, 0.2, 0.2) > 0.2
    assert _wrong_calls(always_valid, 0.2, 0.2) <= 0.06
    assert _wrong_calls(always_valid, 0.26, 0.2) >= 0.8  # and a 6-point lift is still found
    d, lo, hi = always_valid(80, 400, 80, 400)
    _, flo, fhi = newcombe(80, 400, 80, 400)
    assert d == 0 and lo < flo < 0 < fhi < hi  # wider than the single-look interval, around the same centre
    assert always_valid(0, 150, 0, 150)[1:] != (0.0, 0.0)  # an arm at 0% still has an interval
    thin = {1: {"served": MIN_PER_ARM - 1, "click": 60}, 2: {"served": 400, "click": 10}}
    assert compare("recommend", thin, 2, 1)["verdict"] == "not enough data"  # a huge gap, too few outcomes


def test_a_retracted_rating_is_taken_back_without_an_error(versions: AdapterVersions) -> None:
    from types import SimpleNamespace

    from apps.tenants.models import ModelRouter

    engine = SimpleNamespace(has_model=lambda name: True)
    router = ModelRouter(versions, engine, "acme", "support", "support")  # type: ignore[arg-type]
    router.outcome("acme/support@v2", "up")
    router.outcome("acme/support@v2", "down")
    router.outcome("acme/support@v2", "up", -1)  # the customer changed their mind: up, then down
    assert versions.outcomes("acme", "support") == {2: {"up": 0, "down": 1}}


def test_the_cli_shows_and_changes_what_serves_without_loading_a_model(
    versions: AdapterVersions, tiny_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``domainllm adapters versions|promote|rollback`` build services whose engine is never loaded
    (asking it anything raises "still loading"): what serves comes from the route alone."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    import domainllm.adapters
    from apps.tenants.models import ModelRouter
    from core.engine import LocalEngine
    from domainllm.cli import app

    engine = LocalEngine(tiny_settings)  # not warmed up, as in the CLI
    svc = SimpleNamespace(
        versions=versions,
        shared_adapter=lambda d: "sentiment",
        model_router=lambda t, d: ModelRouter(versions, engine, t, d, "sentiment"),  # what serving asks: not this
    )
    monkeypatch.setattr(domainllm.adapters, "services", lambda: svc)
    runner = CliRunner()
    shown = runner.invoke(app, ["adapters", "versions", "sentiment", "--tenant", "acme"])
    assert shown.exit_code == 0 and "acme/sentiment: serving sentiment" in shown.output, shown.output
    ready(versions)
    ready(versions)
    assert runner.invoke(app, ["adapters", "promote", "sentiment", "1", "--tenant", "acme"]).exit_code == 0
    promoted = runner.invoke(app, ["adapters", "promote", "sentiment", "2", "--tenant", "acme"])
    assert promoted.exit_code == 0 and "now serves acme/sentiment@v2" in promoted.output, promoted.output
    back = runner.invoke(app, ["adapters", "rollback", "sentiment", "--tenant", "acme"])
    assert back.exit_code == 0 and "now serves acme/sentiment@v1" in back.output, back.output
    shown = runner.invoke(app, ["adapters", "versions", "sentiment", "--tenant", "acme"])
    assert "serving acme/sentiment@v1" in shown.output and "v1 (promoted)" in shown.output, shown.output
