"""The CLI for a tenant's own adapters: train on its data, watch a job, list, promote, roll back,
pin, split traffic and read the A/B report.

    domainllm train sentiment --data headlines.csv --tenant acme        # here, with a progress bar
    domainllm train sentiment --data headlines.csv --tenant acme --queue  # on the train queue, watched
    domainllm adapters versions sentiment --tenant acme
    domainllm adapters promote sentiment 3 --tenant acme
    domainllm ab report sentiment --tenant acme
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from apps.tenants.abtest import ab_report
from apps.tenants.store import DEFAULT_TENANT, check_tenant_id
from core.errors import DomainLLMError, InvalidRequestError
from domainllm.common import console, fail, fail_run, services

adapters_app = typer.Typer(
    help="A tenant's adapter versions: list, promote, roll back, pin, split.", no_args_is_help=True
)
ab_app = typer.Typer(help="A/B reports of a tenant's adapter versions.", no_args_is_help=True)

DOMAINS = ("support", "sentiment", "recommend")
TenantOpt = Annotated[str, typer.Option(help="The tenant whose adapter this is.")]


def _domain(domain: str) -> str:
    if domain not in DOMAINS:
        fail(InvalidRequestError(f"unknown domain {domain!r}; choose one of {', '.join(DOMAINS)}"))
    return domain


def _tenant(tenant: str) -> str:
    try:
        return check_tenant_id(tenant)
    except DomainLLMError as exc:
        fail(exc)


SAMPLES = {  # the documented formats, as the repo ships them (docs/data-formats.md)
    "support": [Path("data/samples/train/support_faq.csv")],
    "sentiment": [Path("data/samples/train/sentiment_headlines.csv")],
    "recommend": [Path("data/samples/recommend/catalogue.jsonl"), Path("data/samples/recommend/events.jsonl")],
}


def train_samples(tenant: str, rounds: int, domains: list[str]) -> None:
    """``domainllm train-samples``: each domain's sample file trained ``rounds`` times for ``tenant``
    (@v1, then @v2 which the gate promotes or refuses), starting the embedded Redis if none runs."""
    from core.config import get_settings
    from core.redis_server import start_background

    settings = get_settings()
    redis_proc = None
    if not settings.redis_url and not _answers(settings.redis_port):
        console.print(f"starting the embedded Redis on port {settings.redis_port} for this run")
        redis_proc = start_background(
            settings.redis_port,
            settings.data_dir / "redis",
            password=settings.effective_redis_password,
            maxmemory=settings.redis_maxmemory,
        )
    try:
        svc = services()
        for domain in domains:
            for _ in range(rounds):
                train_own(domain, SAMPLES[_domain(domain)], tenant, queue=False, budget_s=None, svc=svc)
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=30)


def _answers(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def train_own(
    domain: str, data: list[Path], tenant: str, *, queue: bool, budget_s: float | None, svc: Any = None
) -> None:
    """``domainllm train DOMAIN --data FILE``: a new version of the tenant's adapter from its files."""
    from finetune.own import read_and_split

    _domain(domain)
    tenant = _tenant(tenant)
    try:  # a bad file is refused here, before anything is queued, allocated or trained
        _, train_rows, heldout = read_and_split(domain, data)
    except DomainLLMError as exc:
        fail(exc)
    console.print(
        f"{', '.join(str(p) for p in data)}: {len(train_rows)} rows to train on, {len(heldout)} held out for the gate"
    )
    svc = services()
    if svc.tenants.get_tenant(tenant) is None and tenant != DEFAULT_TENANT:
        fail(InvalidRequestError(f"no tenant {tenant!r}: create it first (domainllm tenants create {tenant})"))
    if queue:
        from apps.tenants.training import DataFile, save_training_files

        files = [DataFile(name=p.name, content=p.read_text(encoding="utf-8")) for p in data]
        paths = save_training_files(svc.training_dir, tenant, files)
        job_id = svc.jobs.create(tenant, domain, files=[str(p) for p in paths], budget_s=budget_s or 0)
        svc.queue_training(job_id)
        console.print(f"queued {job_id} on the train queue")
        watch_job(job_id)
        return
    _train_here(svc, domain, data, tenant, budget_s)


def _train_here(svc: Any, domain: str, data: list[Path], tenant: str, budget_s: float | None) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from finetune.own import TrainRequest, run_training

    with console.status("loading the base model for the gate"):
        svc.engine.warm_up()
    shared = svc.shared_adapter(domain)
    shared = shared if svc.engine.has_model(shared) else "base"
    with Progress(
        TextColumn(f"training {tenant}/{domain}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps  loss {task.fields[loss]:.4f}  {task.fields[phase]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("train", total=None, loss=0.0, phase="")
        try:
            record = run_training(
                TrainRequest(tenant, domain, data, budget_s=budget_s),
                svc.settings,
                svc.engine,
                svc.versions,
                shared_model=shared,
                on_progress=lambda s, t, loss: progress.update(bar, completed=s, total=t, loss=loss),
                on_phase=lambda name, _f: progress.update(bar, phase=name),
            )
        except KeyboardInterrupt:
            raise
        except DomainLLMError as exc:
            fail(exc)
        except Exception as exc:
            fail_run(f"training {tenant}/{domain}", exc)
    _print_record(record)


def _print_record(record: dict[str, Any]) -> None:
    gate = record.get("gate") or {}
    state = record.get("state")
    console.print(f"{record['model']}: {state}" + (" and promoted" if record.get("promoted") else ""))
    if gate:
        console.print(f"gate: {gate.get('reason')}")
    if state == "ready" and not record.get("promoted"):
        console.print("not promoted: the route is pinned (domainllm adapters promote … to serve it)")


def watch_job(job_id: str, poll_s: float = 1.0) -> None:
    """Follow a training job with a progress bar until it ends."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    svc = services()
    with Progress(
        TextColumn(f"{job_id}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps  loss {task.fields[loss]:.4f}  {task.fields[state]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("job", total=None, loss=0.0, state="queued")
        while True:
            job = svc.jobs.get(job_id)
            progress.update(
                bar,
                completed=job.get("step", 0),
                total=job.get("total") or None,
                loss=float(job.get("loss") or 0.0),
                state=job.get("phase") or job["state"] if job["state"] == "running" else job["state"],
            )
            if job["state"] in ("done", "failed"):
                break
            time.sleep(poll_s)
    if job["state"] == "failed":
        fail(DomainLLMError(f"training job {job_id} failed: {job.get('error')}"))
    _print_record(job.get("result") or {})


@adapters_app.command("versions")
def versions(
    domain: str, tenant: TenantOpt = DEFAULT_TENANT, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """The tenant's versions of an adapter, their gate results, and what serves."""
    domain, tenant = _domain(domain), _tenant(tenant)
    svc = services()
    state = svc.versions.route_state(tenant, domain)
    rows = svc.versions.records(tenant, domain)
    if as_json:
        console.print_json(json.dumps({"route": state, "versions": rows}, default=str))
        return
    table = Table(title=f"{tenant}/{domain}: serving {_serving(svc, tenant, domain)}")
    for col in ("version", "state", "score", "gate", "created"):
        table.add_column(col)
    for r in rows:
        marks = [
            m
            for m, on in (
                ("promoted", state["promoted"] == r["version"]),
                ("candidate", state["candidate"] == r["version"]),
            )
            if on
        ]
        score = (r.get("metrics") or {}).get("score")
        table.add_row(
            f"v{r['version']}" + (f" ({', '.join(marks)})" if marks else ""),
            str(r.get("state")),
            f"{score:.4f}" if isinstance(score, float) else "",
            str((r.get("gate") or {}).get("reason", r.get("error", "")))[:120],
            time.strftime("%Y-%m-%d %H:%M", time.gmtime(float(r.get("created_at", 0)))),
        )
    console.print(table)
    if state["pinned"]:
        console.print("pinned: a passing gate does not promote on its own")


def _change(action: str, domain: str, tenant: str, **kwargs: Any) -> None:
    domain, tenant = _domain(domain), _tenant(tenant)
    svc = services()
    try:
        getattr(svc.versions, action)(tenant, domain, **kwargs)
    except DomainLLMError as exc:
        fail(exc)
    console.print(f"{tenant}/{domain} now serves {_serving(svc, tenant, domain)}")


def _serving(svc: Any, tenant: str, domain: str) -> str:
    """What serves the tenant's requests in ``domain``, from the route alone (these commands load no
    model, so the engine cannot be asked): a version, or the domain's shared adapter."""
    return str(svc.versions.route(tenant, domain, svc.shared_adapter(domain)).model)


@adapters_app.command("promote")
def promote(domain: str, version: int, tenant: TenantOpt = DEFAULT_TENANT, force: bool = False) -> None:
    """Serve a version from the next request on, on every replica."""
    _change("promote", domain, tenant, version=version, force=force)


@adapters_app.command("rollback")
def rollback(domain: str, tenant: TenantOpt = DEFAULT_TENANT) -> None:
    """Serve the previously promoted version again."""
    _change("rollback", domain, tenant)


@adapters_app.command("pin")
def pin(
    domain: str, version: Annotated[int | None, typer.Argument()] = None, tenant: TenantOpt = DEFAULT_TENANT
) -> None:
    """Freeze what serves (a passing gate no longer promotes on its own)."""
    _change("pin", domain, tenant, version=version)


@adapters_app.command("split")
def split(domain: str, version: int, share: float, tenant: TenantOpt = DEFAULT_TENANT) -> None:
    """Send SHARE (0-1) of the tenant's users or sessions to VERSION; share 0 ends the split."""
    if share == 0:
        _change("end_split", domain, tenant)
    else:
        _change("split", domain, tenant, version=version, share=share)


@ab_app.command("report")
def report(
    domain: str, tenant: TenantOpt = DEFAULT_TENANT, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """Each version's outcome rate with its 95% interval, and the candidate against the promoted one."""
    domain, tenant = _domain(domain), _tenant(tenant)
    svc = services()
    out = ab_report(domain, svc.versions.outcomes(tenant, domain), svc.versions.route_state(tenant, domain))
    if as_json:
        console.print_json(json.dumps(out))
        return
    metric = out["metric"]
    table = Table(title=f"{tenant}/{domain}: {metric}")
    for col in ("version", "n", metric, "95% CI", "counts"):
        table.add_column(col)
    for row in out["versions"]:
        value = row[metric]
        table.add_row(
            row["version"],
            str(row["n"]),
            "" if value is None else f"{value:.4f}",
            f"[{row['ci95'][0]:.4f}, {row['ci95'][1]:.4f}]",
            ", ".join(f"{k}={v}" for k, v in sorted(row["counts"].items())),
        )
    console.print(table)
    comp = out.get("comparison")
    if comp:
        console.print(
            f"{comp['candidate']} vs {comp['control']}: difference {comp['difference']:+.4f} "
            f"(always-valid 95% CI [{comp['ci95'][0]:+.4f}, {comp['ci95'][1]:+.4f}], n={comp['n'][0]}/{comp['n'][1]}): "
            f"{comp['verdict']}"
        )
    else:
        console.print("no candidate version is taking traffic (domainllm adapters split …)")
