"""finetune.own: read, version, train, card, gate and promote, with a stand-in domain module (the
real domains' train_own/evaluate_own have their own tests; this checks what is the same for all)."""

from __future__ import annotations

import json
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from core.adapters import version_dir
from core.config import Settings
from core.jobs import TrainingJobs
from core.versions import AdapterVersions
from domains.records import DataFileError
from finetune import own


class StandIn(types.SimpleNamespace):
    """A domain module: rows are the file's lines; the candidate's score is set by the test."""

    def __init__(self) -> None:
        super().__init__(scores={"acme/sentiment@v1": 0.8}, default=0.7, guard=None, steps=3, step_s=0.0, trained=0)

    def read_own(self, files: list[Path]) -> list[str]:
        rows = []
        for path in files:
            for n, line in enumerate(path.read_text().splitlines(), start=1):
                if not line.strip():
                    raise DataFileError(f"{path.name} line {n}: empty row")
                rows.append(line)
        return rows

    def split_own(self, rows: list[str]) -> tuple[list[str], list[str]]:
        return rows[:-2], rows[-2:]

    def train_own(self, rows: list[str], out_dir: Path, settings: Settings, *, progress: Any = None) -> dict[str, Any]:
        self.trained += 1
        for step in range(1, self.steps + 1):
            time.sleep(self.step_s)
            if progress:
                progress(step, self.steps, 1.0 / step)
        (out_dir / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
        (out_dir / "adapter_model.safetensors").write_bytes(b"weights")
        return {"training": {"steps": self.steps, "rows": len(rows)}, "serving": {"labels": ["a", "b"]}}

    def evaluate_own(self, engine: Any, model: str, rows: list[str]) -> dict[str, float]:
        return {"score": self.scores.get(model, self.default)}

    def guard_rows(self, settings: Settings) -> list[str] | None:
        return self.guard


@pytest.fixture
def module(monkeypatch: pytest.MonkeyPatch) -> StandIn:
    stand_in = StandIn()
    monkeypatch.setattr(own, "domain_module", lambda domain: stand_in)
    return stand_in


@pytest.fixture
def stores(redis_url: str) -> Iterator[tuple[AdapterVersions, TrainingJobs]]:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    ns = f"t-{uuid.uuid4().hex[:8]}"
    yield AdapterVersions(r, f"{ns}:adapters"), TrainingJobs(r, f"{ns}:train")
    r.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        environment="test", data_dir=tmp_path / "data", adapters_dir=tmp_path / "adapters", admin_key="test-admin-key"
    )


def data_file(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / f"data-{uuid.uuid4().hex[:6]}.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def train(settings: Settings, versions: AdapterVersions, path: Path, **kw: Any) -> dict[str, Any]:
    request = own.TrainRequest("acme", "sentiment", [path], budget_s=kw.pop("budget_s", None))
    return own.run_training(request, settings, None, versions, shared_model="sentiment", **kw)  # type: ignore[arg-type]


def test_a_version_that_passes_the_gate_is_carded_and_promoted(
    module: StandIn, stores: tuple[AdapterVersions, TrainingJobs], settings: Settings, tmp_path: Path
) -> None:
    versions, _ = stores
    seen: list[tuple[int, int, float]] = []
    record = train(
        settings, versions, data_file(tmp_path, ["r1", "r2", "r3", "r4"]), on_progress=lambda *a: seen.append(a)
    )
    assert record["state"] == "ready" and record["promoted"] and record["model"] == "acme/sentiment@v1"
    assert "passed" in record["gate"]["reason"] and "0.8000 vs 0.7000 for sentiment" in record["gate"]["reason"]
    assert seen == [(1, 3, 1.0), (2, 3, 0.5), (3, 3, 1 / 3)]
    folder = version_dir(settings.adapters_path, "acme", "sentiment", 1)
    card = json.loads((folder / "adapter_card.json").read_text())
    assert card["name"] == "acme/sentiment@v1" and card["tenant"] == "acme" and card["version"] == 1
    assert len(card["data"]["sha256"]) == 64 and card["data"]["train_rows"] == 2 and card["data"]["heldout_rows"] == 2
    assert card["gate"]["passed"] and card["base_model"] and card["serving"] == {"labels": ["a", "b"]}
    assert not list(folder.parent.glob(".*partial"))
    assert versions.route("acme", "sentiment", "sentiment").model == "acme/sentiment@v1"


def test_a_version_worse_than_the_serving_one_is_refused_and_nothing_changes(
    module: StandIn, stores: tuple[AdapterVersions, TrainingJobs], settings: Settings, tmp_path: Path
) -> None:
    versions, _ = stores
    train(settings, versions, data_file(tmp_path, ["a", "b", "c", "d"]))
    module.scores["acme/sentiment@v2"] = 0.5  # v2 scores 0.5 where v1 (serving) scores 0.8
    record = train(settings, versions, data_file(tmp_path, ["a", "b", "c", "e"]))
    assert record["state"] == "refused" and not record.get("promoted")
    assert record["gate"]["reason"].startswith("refused: held-out score 0.5000 vs 0.8000 for acme/sentiment@v1")
    assert versions.route("acme", "sentiment", "sentiment").model == "acme/sentiment@v1"


def test_the_public_guard_refuses_a_version_that_forgets(
    module: StandIn, stores: tuple[AdapterVersions, TrainingJobs], settings: Settings, tmp_path: Path
) -> None:
    versions, _ = stores
    module.guard = ["g1", "g2"]

    def scores(engine: Any, model: str, rows: list[str]) -> dict[str, float]:
        return {"score": (0.4 if "@v" in model else 0.9) if rows == module.guard else 0.8}

    module.evaluate_own = scores
    record = train(settings, versions, data_file(tmp_path, ["a", "b", "c", "d"]))
    assert record["state"] == "refused" and "forgets beyond" in record["gate"]["reason"]


def test_a_retrain_takes_the_serving_versions_numbers_from_its_own_gate_where_the_rows_are_the_same(
    module: StandIn, stores: tuple[AdapterVersions, TrainingJobs], settings: Settings, tmp_path: Path
) -> None:
    versions, _ = stores
    module.guard = ["g1", "g2"]
    calls: list[tuple[str, tuple[str, ...]]] = []

    def scores(engine: Any, model: str, rows: list[str]) -> dict[str, float]:
        calls.append((model, tuple(rows)))
        return {"score": 0.8}

    module.evaluate_own = scores
    same = data_file(tmp_path, ["a", "b", "c", "d"])
    train(settings, versions, same)  # v1 against the shared model: four evaluations
    assert len(calls) == 4
    calls.clear()
    record = train(settings, versions, same)  # v2, on the same file: v1's numbers are its own gate's
    assert calls == [("acme/sentiment@v2", ("c", "d")), ("acme/sentiment@v2", ("g1", "g2"))]
    assert record["gate"]["reused"] == ["heldout", "guard"] and "its own gate's" in record["gate"]["reason"]
    assert record["gate"]["heldout"]["acme/sentiment@v1"] == {"score": 0.8}
    calls.clear()
    record = train(settings, versions, data_file(tmp_path, ["a", "b", "c", "e"]))  # other held-out rows
    assert ("acme/sentiment@v2", ("c", "e")) in calls and record["gate"]["reused"] == ["guard"]
    assert own.fingerprint(["c", "d"]) == own.fingerprint(("c", "d")) != own.fingerprint(["c", "e"])


def test_a_bad_file_is_refused_before_any_version_or_training(
    module: StandIn, stores: tuple[AdapterVersions, TrainingJobs], settings: Settings, tmp_path: Path
) -> None:
    versions, _ = stores
    with pytest.raises(DataFileError, match="line 2: empty row"):
        train(settings, versions, data_file(tmp_path, ["a", " ", "c"]))
    with pytest.raises(Exception, match="does not exist"):
        train(settings, versions, tmp_path / "missing.csv")
    assert versions.records("acme", "sentiment") == [] and module.trained == 0


def test_an_unknown_domain_is_named() -> None:
    with pytest.raises(
        own.InvalidRequestError, match="unknown domain 'movies'; choose one of support, sentiment, recommend"
    ):
        own.domain_module("movies")


def test_a_run_past_its_budget_fails_with_the_reason_and_leaves_no_files(
    module: StandIn, stores: tuple[AdapterVersions, TrainingJobs], settings: Settings, tmp_path: Path
) -> None:
    versions, _ = stores
    module.steps, module.step_s = 50, 0.02
    with pytest.raises(own.TrainingBudgetError, match=r"ran past its time budget of 0\.05 s"):
        train(settings, versions, data_file(tmp_path, ["a", "b", "c", "d"]), budget_s=0.05)
    (record,) = versions.records("acme", "sentiment")
    assert record["state"] == "failed" and "time budget" in record["error"]
    root = settings.adapters_path / "tenants" / "acme" / "sentiment"
    assert not any(root.iterdir())
    assert versions.route("acme", "sentiment", "sentiment").arm == "shared"


def test_a_pinned_route_keeps_serving_and_the_new_version_waits(
    module: StandIn, stores: tuple[AdapterVersions, TrainingJobs], settings: Settings, tmp_path: Path
) -> None:
    versions, _ = stores
    train(settings, versions, data_file(tmp_path, ["a", "b", "c", "d"]))
    versions.pin("acme", "sentiment")
    module.scores["acme/sentiment@v2"] = 0.9
    record = train(settings, versions, data_file(tmp_path, ["a", "b", "c", "f"]))
    assert record["state"] == "ready" and not record["promoted"]
    assert versions.route("acme", "sentiment", "sentiment").version == 1


def test_a_queued_job_runs_once_and_records_its_outcome(
    module: StandIn, stores: tuple[AdapterVersions, TrainingJobs], settings: Settings, tmp_path: Path
) -> None:
    versions, jobs = stores
    path = data_file(tmp_path, ["a", "b", "c", "d"])
    job_id = jobs.create("acme", "sentiment", files=[str(path)], budget_s=0)
    engine = types.SimpleNamespace(has_model=lambda name: True)
    kwargs = {"settings": settings, "engine": engine, "versions": versions, "jobs": jobs, "shared_adapter": "sentiment"}
    record = own.run_job(job_id, **kwargs)  # type: ignore[arg-type]
    assert record is not None and record["model"] == "acme/sentiment@v1"
    job = jobs.get(job_id)
    assert job["state"] == "done" and job["step"] == 3 and job["result"]["state"] == "ready"
    assert own.run_job(job_id, **kwargs) is None  # a second delivery changes nothing  # type: ignore[arg-type]
    assert module.trained == 1
    bad = data_file(tmp_path, ["a", "", "c"])
    failed = jobs.create("acme", "sentiment", files=[str(bad)], budget_s=0)
    assert own.run_job(failed, **kwargs) is None  # type: ignore[arg-type]
    assert "line 2: empty row" in jobs.get(failed)["error"]
