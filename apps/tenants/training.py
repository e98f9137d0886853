"""/v1/tenants/{tenant}/adapters/{domain}: a tenant trains, gates, promotes, rolls back, pins and
splits traffic between versions of its own adapters (``tenant/domain@vN``), and reads the A/B report.

Training is a job on the Celery ``train`` queue (a worker that consumes it runs one job at a time):
the request stores the uploaded files in the artefact store, answers 202 with the job, and the job's
progress is polled at ``/v1/tenants/{tenant}/jobs/{job_id}``. The routes that change what serves
(promote, rollback, pin, split) write the route in Redis, which every replica reads per request: a
change is in force on all of them with their next request, and requests in flight finish on the
version they started on.

A tenant's admin key manages its own tenant only; the operator key any tenant.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

import redis
from fastapi import APIRouter, Path, Request, status
from pydantic import BaseModel, Field

from apps.errors import error_responses, store_guarded_route
from apps.http.requests import RequestModel
from apps.tenants.abtest import ab_report
from apps.tenants.auth import AdminDep, tenant_services
from apps.tenants.store import TENANT_ID
from core.errors import PermissionDeniedError

router = APIRouter(
    prefix="/v1/tenants", tags=["adapters"], route_class=store_guarded_route("adapter versions", (redis.RedisError,))
)

Domain = Literal["support", "sentiment", "recommend"]
TenantPath = Annotated[
    str, Path(pattern=TENANT_ID.pattern, description="The tenant (your own, unless you hold the operator key).")
]
VersionNo = Annotated[int, Field(ge=1, le=999_999)]
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.(csv|jsonl)$")


class DataFile(RequestModel):
    name: str = Field(
        pattern=FILE_NAME.pattern,
        description="The file's name; .csv or .jsonl says how to read it.",
        examples=["faq.csv"],
    )
    content: str = Field(min_length=1, description="The file's text (UTF-8), in a format of docs/data-formats.md.")


class TrainRequestBody(RequestModel):
    files: list[DataFile] = Field(
        min_length=1,
        max_length=4,
        description="support: one FAQ/conversations file; sentiment: one labelled-headlines file; "
        "recommend: the catalogue and the events.",
    )
    budget_s: float | None = Field(
        None,
        gt=0,
        le=6 * 3600,
        description="Stop with an error past this many seconds of training (default: the server's).",
    )


class VersionChoice(RequestModel):
    version: VersionNo
    force: bool = Field(False, description="Promote a version the gate refused (its report stays on record).")


class PinChoice(RequestModel):
    version: VersionNo | None = Field(None, description="Serve this version first; without it, freeze the one serving.")


class SplitChoice(RequestModel):
    version: VersionNo = Field(description="The candidate version.")
    share: float = Field(gt=0, lt=1, description="Share of the tenant's users/sessions sent to the candidate (sticky).")
    force: bool = False


class JobAccepted(BaseModel):
    job_id: str
    state: str
    status_url: str


def own_tenant(request: Request, tenant: str, who: Any) -> str:
    if not who.operator and who.tenant != tenant:
        raise PermissionDeniedError(f"this key belongs to tenant {who.tenant!r}, not {tenant!r}")
    if not who.operator:
        return tenant
    if tenant_services(request).tenants.get_tenant(tenant) is None and tenant != "default":
        raise PermissionDeniedError(f"no tenant {tenant!r}")
    return tenant


def save_training_files(root: FilePath, tenant: str, files: list[DataFile]) -> list[FilePath]:
    """The uploads, under the artefact store's training folder, named by their content's hash."""
    folder = root / tenant
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        data = f.content.encode("utf-8")
        path = folder / f"{hashlib.sha256(data).hexdigest()[:16]}-{f.name}"
        if not path.exists():
            tmp = path.with_suffix(path.suffix + ".partial")
            tmp.write_bytes(data)
            tmp.replace(path)
        if path not in out:  # the same file sent twice is read once
            out.append(path)
    return out


@router.post(
    "/{tenant}/adapters/{domain}/train",
    response_model=JobAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Train a new version of the tenant's adapter (admin)",
    description="Queues a training job on the `train` queue and answers at once. The job reads the files "
    "(a bad file fails it naming the line), trains `tenant/domain@vN`, gates it against what serves "
    "now and promotes it if it is not worse. Poll `status_url`.",
    responses=error_responses(400, 401, 403, 413, 422, 503),
)
async def train(
    request: Request, tenant: TenantPath, domain: Domain, body: TrainRequestBody, who: AdminDep
) -> JobAccepted:
    tenant = own_tenant(request, tenant, who)
    services = tenant_services(request)

    def run() -> str:
        paths = save_training_files(services.training_dir, tenant, body.files)
        job_id = services.jobs.create(tenant, domain, files=[str(p) for p in paths], budget_s=body.budget_s or 0)
        services.queue_training(job_id)
        return job_id

    job_id = await asyncio.to_thread(run)
    return JobAccepted(job_id=job_id, state="queued", status_url=f"/v1/tenants/{tenant}/jobs/{job_id}")


@router.get(
    "/{tenant}/jobs/{job_id}",
    summary="A training job's state and progress (admin)",
    responses=error_responses(401, 403, 404, 503),
)
async def job(
    request: Request, tenant: TenantPath, job_id: Annotated[str, Path(max_length=64)], who: AdminDep
) -> dict[str, Any]:
    tenant = own_tenant(request, tenant, who)
    return await asyncio.to_thread(tenant_services(request).jobs.get, job_id, tenant=tenant)


@router.get(
    "/{tenant}/jobs", summary="The tenant's recent training jobs (admin)", responses=error_responses(401, 403, 503)
)
async def jobs(request: Request, tenant: TenantPath, who: AdminDep) -> dict[str, Any]:
    tenant = own_tenant(request, tenant, who)
    return {"jobs": await asyncio.to_thread(tenant_services(request).jobs.recent, tenant)}


def _state(services: Any, tenant: str, domain: str) -> dict[str, Any]:
    route = services.versions.route_state(tenant, domain)
    return {
        "tenant": tenant,
        "domain": domain,
        "serving": services.model_router(tenant, domain).route().model,
        "shared": services.shared_adapter(domain),
        **route,
        "versions": services.versions.records(tenant, domain),
    }


@router.get(
    "/{tenant}/adapters/{domain}",
    summary="The tenant's versions of an adapter and what serves (admin)",
    responses=error_responses(401, 403, 503),
)
async def versions(request: Request, tenant: TenantPath, domain: Domain, who: AdminDep) -> dict[str, Any]:
    tenant = own_tenant(request, tenant, who)
    return await asyncio.to_thread(_state, tenant_services(request), tenant, domain)


@router.post(
    "/{tenant}/adapters/{domain}/promote",
    summary="Serve a version from the next request on (admin)",
    description="404 for a version that does not exist, 409 for one that is training, failed or was "
    "refused by the gate (unless `force`). Requests in flight finish on the version they started on.",
    responses=error_responses(400, 401, 403, 404, 409, 422, 503),
)
async def promote(
    request: Request, tenant: TenantPath, domain: Domain, body: VersionChoice, who: AdminDep
) -> dict[str, Any]:
    tenant = own_tenant(request, tenant, who)
    services = tenant_services(request)

    def run() -> dict[str, Any]:
        services.versions.promote(tenant, domain, body.version, force=body.force)
        return _state(services, tenant, domain)

    return await asyncio.to_thread(run)


@router.post(
    "/{tenant}/adapters/{domain}/rollback",
    summary="Serve the previously promoted version again (admin)",
    responses=error_responses(401, 403, 409, 503),
)
async def rollback(request: Request, tenant: TenantPath, domain: Domain, who: AdminDep) -> dict[str, Any]:
    tenant = own_tenant(request, tenant, who)
    services = tenant_services(request)

    def run() -> dict[str, Any]:
        services.versions.rollback(tenant, domain)
        return _state(services, tenant, domain)

    return await asyncio.to_thread(run)


@router.put(
    "/{tenant}/adapters/{domain}/pin",
    summary="Pin what serves: a passing gate no longer promotes on its own (admin)",
    responses=error_responses(400, 401, 403, 404, 409, 422, 503),
)
async def pin(request: Request, tenant: TenantPath, domain: Domain, body: PinChoice, who: AdminDep) -> dict[str, Any]:
    tenant = own_tenant(request, tenant, who)
    services = tenant_services(request)

    def run() -> dict[str, Any]:
        services.versions.pin(tenant, domain, body.version)
        return _state(services, tenant, domain)

    return await asyncio.to_thread(run)


@router.delete("/{tenant}/adapters/{domain}/pin", summary="Unpin (admin)", responses=error_responses(401, 403, 503))
async def unpin(request: Request, tenant: TenantPath, domain: Domain, who: AdminDep) -> dict[str, Any]:
    tenant = own_tenant(request, tenant, who)
    services = tenant_services(request)

    def run() -> dict[str, Any]:
        services.versions.unpin(tenant, domain)
        return _state(services, tenant, domain)

    return await asyncio.to_thread(run)


@router.put(
    "/{tenant}/adapters/{domain}/split",
    summary="Send a share of the tenant's traffic to a candidate version (admin)",
    description="Sticky per user (recommend), session (support) or item (sentiment). Every response names "
    "the version that produced it; feedback counts toward that version (see the A/B report).",
    responses=error_responses(400, 401, 403, 404, 409, 422, 503),
)
async def split(
    request: Request, tenant: TenantPath, domain: Domain, body: SplitChoice, who: AdminDep
) -> dict[str, Any]:
    tenant = own_tenant(request, tenant, who)
    services = tenant_services(request)

    def run() -> dict[str, Any]:
        services.versions.split(tenant, domain, body.version, body.share, force=body.force)
        return _state(services, tenant, domain)

    return await asyncio.to_thread(run)


@router.delete(
    "/{tenant}/adapters/{domain}/split",
    summary="End the traffic split (admin)",
    responses=error_responses(401, 403, 503),
)
async def end_split(request: Request, tenant: TenantPath, domain: Domain, who: AdminDep) -> dict[str, Any]:
    tenant = own_tenant(request, tenant, who)
    services = tenant_services(request)

    def run() -> dict[str, Any]:
        services.versions.end_split(tenant, domain)
        return _state(services, tenant, domain)

    return await asyncio.to_thread(run)


@router.get(
    "/{tenant}/adapters/{domain}/ab",
    summary="Each version's outcomes with 95% intervals, and the candidate against the promoted one (admin)",
    responses=error_responses(401, 403, 503),
)
async def ab(request: Request, tenant: TenantPath, domain: Domain, who: AdminDep) -> dict[str, Any]:
    tenant = own_tenant(request, tenant, who)
    services = tenant_services(request)

    def run() -> dict[str, Any]:
        state = services.versions.route_state(tenant, domain)
        return ab_report(domain, services.versions.outcomes(tenant, domain), state)

    return await asyncio.to_thread(run)
