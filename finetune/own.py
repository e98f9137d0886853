"""Training on a tenant's own data: read, split, train ``tenant/domain@vN``, card it, gate it, promote it.

    run_training(TrainRequest(tenant, domain, files), settings, engine, versions, on_progress)

One function for every way in: the CLI (``domainllm train TASK --data FILE``), the Celery ``train``
queue (``POST /v1/tenants/{t}/adapters/{domain}/train``) and the tests. Each domain's module in
``finetune/tasks/`` supplies ``read_own``, ``split_own``, ``train_own``, ``evaluate_own`` and
``guard_rows``; this module owns what is the same for all three:

* a bad file is refused before anything is allocated or trained (the readers name the line);
* the version is written to a scratch folder and moved into the artefact store only when complete
  (``core.adapters.version_dir``), so no replica ever sees half an adapter;
* the card names the tenant, version, data hash, config, base model and metrics;
* the gate evaluates the new version and the model that serves the tenant now on the SAME held-out
  rows of the tenant's file (and both on a fixed public set against forgetting), and promotes the
  new one only if it is not worse beyond the tolerance; the report says why either way;
* a run past its time budget stops at the next step with ``TrainingBudgetError``; any failure
  marks the version failed with its reason and leaves what serves untouched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.adapters import version_dir, versioned_name
from core.config import Settings
from core.errors import DomainLLMError, InvalidRequestError
from core.interface import Engine
from core.jobs import TrainingJobs
from core.versions import AdapterVersions
from finetune.cards import data_hash

log = logging.getLogger(__name__)

DOMAINS = {
    "support": "finetune.tasks.support_own",
    "sentiment": "finetune.tasks.sentiment_own",
    "recommend": "finetune.tasks.recommend_own",
}

Progress = Callable[[int, int, float], None]


class TrainingSettings(BaseSettings):
    """``DOMAINLLM_TRAIN_*``: the budget and the gate of a tenant's training run."""

    model_config = SettingsConfigDict(env_prefix="DOMAINLLM_TRAIN_", extra="ignore")

    budget_s: float = Field(
        900.0, gt=0, le=6 * 3600, description="A run stops with an error past this many seconds of training."
    )
    gate_tolerance: float = Field(
        0.02, ge=0, le=1, description="The new version may score this much below the serving one on the held-out rows."
    )
    guard_tolerance: float = Field(
        0.05, ge=0, le=1, description="... and this much below it on the fixed public set (forgetting)."
    )


class TrainingBudgetError(DomainLLMError):
    error_type = "training_budget_exceeded"


@dataclass
class TrainRequest:
    tenant: str
    domain: str
    files: list[Path]
    budget_s: float | None = None
    job_id: str | None = None


@dataclass
class GateReport:
    passed: bool
    reason: str
    candidate: str
    current: str
    heldout: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> metrics
    guard: dict[str, dict[str, float]] | None = None
    heldout_rows: int = 0
    guard_rows: int = 0
    tolerance: float = 0.0
    guard_tolerance: float = 0.0
    heldout_fingerprint: str = ""  # what was evaluated: the same rows, the same fingerprint
    guard_fingerprint: str = ""
    reused: list[str] = field(default_factory=list)  # "heldout"/"guard": current's numbers taken from its own gate

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def fingerprint(rows: Any) -> str:
    """A digest of evaluation rows (a list of dataclasses, or a dataclass holding them): equal rows,
    equal digest, in any process (sets are sorted, so string hashing's per-process seed is moot)."""

    def other(value: Any) -> Any:  # what json cannot write: sets sorted, anything else as text
        return sorted(map(str, value)) if isinstance(value, (set, frozenset)) else str(value)

    def plain(value: Any) -> Any:
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value

    data = plain(rows) if not isinstance(rows, (list, tuple)) else [plain(r) for r in rows]
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=other).encode()).hexdigest()[:16]


def domain_module(domain: str) -> ModuleType:
    if domain not in DOMAINS:
        raise InvalidRequestError(f"unknown domain {domain!r}; choose one of {', '.join(DOMAINS)}")
    return importlib.import_module(DOMAINS[domain])


def read_and_split(domain: str, files: list[Path]) -> tuple[ModuleType, Any, Any]:
    """The domain's module and the file's (train, held-out) rows; raises naming a bad file's line."""
    module = domain_module(domain)
    if not files:
        raise InvalidRequestError(f"no data file given for {domain}")
    for path in files:
        if not path.is_file():
            raise InvalidRequestError(f"data file {path} does not exist")
    rows = module.read_own(files)
    train, heldout = module.split_own(rows)
    return module, train, heldout


def gate(
    module: ModuleType,
    engine: Engine,
    candidate: str,
    current: str,
    heldout: Any,
    guard: Any | None,
    tolerance: float,
    guard_tolerance: float,
    earlier: dict[str, Any] | None = None,
) -> GateReport:
    """Evaluate ``candidate`` and ``current`` on the same rows; pass unless the candidate is worse
    beyond the tolerance on the tenant's held-out rows or on the public guard set.

    ``earlier``: the gate report of ``current``'s own training, if it had one. Where it evaluated
    ``current`` on rows with the same fingerprint (the same files give the same split; the guard is
    fixed), its numbers are taken rather than computed again: a version is immutable and the
    evaluation deterministic, so the answer is the same, and a retrain on the same file costs one
    evaluation instead of two (a recommend gate is minutes of CPU)."""
    report = GateReport(
        passed=False,
        reason="",
        candidate=candidate,
        current=current,
        heldout_rows=len(heldout),
        tolerance=tolerance,
        guard_tolerance=guard_tolerance,
        heldout_fingerprint=fingerprint(heldout),
    )

    def current_on(part: str, rows: Any, digest: str) -> dict[str, float]:
        known = (earlier or {}).get(part) or {}
        if current in known and (earlier or {}).get(f"{part}_fingerprint") == digest:
            report.reused.append(part)
            return dict(known[current])
        return dict(module.evaluate_own(engine, current, rows))

    report.heldout = {candidate: module.evaluate_own(engine, candidate, heldout)}
    if current != candidate:
        report.heldout[current] = current_on("heldout", heldout, report.heldout_fingerprint)
    new, old = report.heldout[candidate]["score"], report.heldout[current]["score"]
    reasons = []
    ok = new >= old - tolerance
    reasons.append(
        f"held-out score {new:.4f} vs {old:.4f} for {current} ({len(heldout)} rows): "
        + ("not worse beyond" if ok else "worse beyond")
        + f" the tolerance {tolerance:g}"
    )
    if guard:
        report.guard_rows = len(guard)
        report.guard_fingerprint = fingerprint(guard)
        report.guard = {candidate: module.evaluate_own(engine, candidate, guard)}
        if current != candidate:
            report.guard[current] = current_on("guard", guard, report.guard_fingerprint)
        g_new, g_old = report.guard[candidate]["score"], report.guard[current]["score"]
        guard_ok = g_new >= g_old - guard_tolerance
        reasons.append(
            f"public guard score {g_new:.4f} vs {g_old:.4f} ({len(guard)} rows): "
            + ("no forgetting beyond" if guard_ok else "forgets beyond")
            + f" the tolerance {guard_tolerance:g}"
        )
        ok = ok and guard_ok
    else:
        reasons.append("no public guard for this domain (or the shared data folder is missing): guard skipped")
    if report.reused:
        reasons.append(f"{current}'s {' and '.join(report.reused)} numbers are its own gate's (the same rows)")
    report.passed = ok
    report.reason = ("passed: " if ok else "refused: ") + "; ".join(reasons)
    return report


def run_training(
    request: TrainRequest,
    settings: Settings,
    engine: Engine,
    versions: AdapterVersions,
    *,
    shared_model: str,
    on_progress: Progress | None = None,
    on_phase: Callable[[str, dict[str, Any]], None] | None = None,
    training: TrainingSettings | None = None,
) -> dict[str, Any]:
    """Train, card, gate and (if it passes and the route is not pinned) promote a new version.

    ``shared_model``: what serves the tenant in this domain when it has no version of its own.
    Returns the version's record (with its gate report). Raises on a bad file (nothing allocated)
    and on a failed run (the version is recorded as failed with the reason)."""
    knobs = training or TrainingSettings()
    budget = request.budget_s or knobs.budget_s
    phase = on_phase or (lambda _name, _fields: None)
    module, train_rows, heldout = read_and_split(request.domain, request.files)
    digest = data_hash(request.files)
    version = versions.allocate(
        request.tenant,
        request.domain,
        job_id=request.job_id,
        data={"files": [p.name for p in request.files], "sha256": digest},
    )
    name = versioned_name(request.tenant, request.domain, version)
    phase("training", {"version": version})
    final = version_dir(settings.adapters_path, request.tenant, request.domain, version)
    scratch = final.parent / f".{final.name}.partial"
    started = time.monotonic()

    def progress(step: int, total: int, loss: float) -> None:
        spent = time.monotonic() - started
        if spent > budget:
            raise TrainingBudgetError(
                f"training {name} ran past its time budget of {budget:g} s (step {step} of {total}); "
                "give it a larger budget or a smaller file",
                budget_s=budget,
            )
        if on_progress is not None:
            on_progress(step, total, loss)

    try:
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        result = module.train_own(train_rows, scratch, settings, progress=progress)
        seconds = time.monotonic() - started
        card = _write_card(scratch, request, version, digest, result, settings, budget, len(train_rows), len(heldout))
        if final.exists():  # a leftover of a run that died after the move: the version number is new
            shutil.rmtree(final)
        scratch.rename(final)
        phase("gating", {"version": version})
        route = versions.route(request.tenant, request.domain, shared_model)
        earlier = versions.get(request.tenant, request.domain, route.version) if route.version is not None else {}
        report = gate(
            module,
            engine,
            name,
            route.model,
            heldout,
            module.guard_rows(settings),
            knobs.gate_tolerance,
            knobs.guard_tolerance,
            earlier=earlier.get("gate"),
        )
        card["gate"] = report.as_dict()
        (final / "adapter_card.json").write_text(_json(card))
    except BaseException as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        reason = str(exc) if isinstance(exc, DomainLLMError) else f"{type(exc).__name__}: {exc}"
        versions.update(request.tenant, request.domain, version, state="failed", error=reason)
        raise
    state = "ready" if report.passed else "refused"
    record = versions.update(
        request.tenant,
        request.domain,
        version,
        state=state,
        gate=report.as_dict(),
        seconds=round(seconds, 1),
        metrics=report.heldout.get(name, {}),
    )
    if report.passed:
        old = versions.promote(request.tenant, request.domain, version, auto=True)
        record = versions.get(request.tenant, request.domain, version)
        record["promoted"] = versions.route_state(request.tenant, request.domain)["promoted"] == version
        record["replaced"] = old
    log.info("%s: %s", name, report.reason)
    return record


def _json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, default=str)


def _write_card(
    folder: Path,
    request: TrainRequest,
    version: int,
    digest: str,
    result: dict[str, Any],
    settings: Settings,
    budget: float,
    train_rows: int,
    heldout_rows: int,
) -> dict[str, Any]:
    import platform

    import torch

    card = {
        "name": versioned_name(request.tenant, request.domain, version),
        "tenant": request.tenant,
        "task": request.domain,
        "version": version,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base_model": settings.base_model_path.name,
        "data": {
            "files": [p.name for p in request.files],
            "sha256": digest,
            "train_rows": train_rows,
            "heldout_rows": heldout_rows,
        },
        "config": {"budget_s": budget, **(result.get("config") or {})},
        "training": result.get("training", {}),
        "metrics": result.get("metrics", {}),
        "serving": result.get("serving", {}),
        "machine": {"python": platform.python_version(), "torch": torch.__version__},
    }
    (folder / "adapter_card.json").write_text(_json(card))
    return card


def run_job(
    job_id: str,
    *,
    settings: Settings,
    engine: Engine,
    versions: AdapterVersions,
    jobs: TrainingJobs,
    shared_adapter: str,
) -> dict[str, Any] | None:
    """Run one queued training job (the ``train`` queue's task); its outcome is on the job record.

    A job found running was taken by a worker that died (the task is acknowledged on receipt, so
    Celery never runs it twice by itself): it is failed with that reason, never left running."""
    job = jobs.get(job_id)
    if job["state"] == "running":
        jobs.fail(job_id, "the worker running it stopped before it ended; start a new job")
        return None
    if job["state"] != "queued":
        return None
    jobs.start(job_id)
    request = TrainRequest(
        tenant=job["tenant"],
        domain=job["domain"],
        files=[Path(f) for f in job.get("files") or []],
        budget_s=float(job.get("budget_s") or 0) or None,
        job_id=job_id,
    )
    shared = shared_adapter if engine.has_model(shared_adapter) else "base"
    try:
        record = run_training(
            request,
            settings,
            engine,
            versions,
            shared_model=shared,
            on_progress=lambda step, total, loss: jobs.progress(job_id, step, total, loss),
            on_phase=lambda name, fields: jobs.note(job_id, phase=name, **fields),
        )
    except DomainLLMError as exc:
        jobs.fail(job_id, exc.message)
        return None
    except Exception as exc:  # out of memory, a full disk, the task's time limit: said on the job
        log.exception("training job %s failed", job_id)
        jobs.fail(job_id, f"{type(exc).__name__}: {exc}")
        return None
    jobs.finish(job_id, record)
    return record


def reap_jobs(jobs: TrainingJobs, versions: AdapterVersions) -> list[str]:
    """Fail the jobs whose worker died, and the versions they were training."""
    reaped = jobs.reap()
    for job_id in reaped:
        job = jobs.get(job_id)
        if job.get("version"):
            try:
                record = versions.get(job["tenant"], job["domain"], int(job["version"]))
            except DomainLLMError:
                continue
            if record.get("state") == "training":
                versions.update(
                    job["tenant"], job["domain"], int(job["version"]), state="failed", error=job.get("error")
                )
    return reaped
