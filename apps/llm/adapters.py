"""/v1/adapters: list, load and unload LoRA adapters while the server runs.

Loading and unloading run on the engine's worker thread between batches, so requests in flight
never see a half-loaded adapter; a folder that fails to load is rolled back and the adapters
already loaded keep serving. Changing the set needs the admin key; reading it does not. A change
made through one replica is made on every replica within a second (``apps.llm.adapter_set``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Depends, Request, status

from apps.deps import EngineDep, SettingsDep, visible_to
from apps.errors import error_responses
from apps.llm.adapter_set import AdapterSet
from apps.llm.schemas import AdapterDeleted, AdapterList, AdapterLoadRequest, AdapterOut
from apps.tenants.auth import SharedAdminDep, requirement
from core.adapters import AdapterInfo
from core.config import Settings
from core.errors import AdapterLoadError
from core.interface import Engine

router = APIRouter(prefix="/v1/adapters", tags=["adapters"], dependencies=[Depends(requirement("server"))])


def adapter_out(info: AdapterInfo, *, with_path: bool = False) -> AdapterOut:
    return AdapterOut(
        id=info.name,
        rank=info.rank,
        alpha=info.alpha,
        target_modules=info.target_modules,
        size_bytes=info.size_bytes,
        loaded_at=info.loaded_at,
        card=info.card,
        path=str(info.path) if with_path else None,
    )


class _Local:
    """Changes for this replica alone: an app run without its lifespan (no listener, no record)."""

    @staticmethod
    def load(engine: Engine, name: str, folder: Path) -> AdapterInfo:
        return engine.load_adapter(name, folder)

    @staticmethod
    def unload(engine: Engine, name: str) -> None:
        engine.unload_adapter(name)


def adapter_set(request: Request) -> AdapterSet | _Local:
    """Where a change goes: the set every replica follows (the lifespan made it), else this engine."""
    return getattr(request.app.state, "adapter_set", None) or _Local()


def adapter_folder(body: AdapterLoadRequest, settings: Settings) -> Path:
    if body.path is None:
        return settings.adapters_path / body.name
    path = Path(body.path).expanduser()
    return path if path.is_absolute() else settings.adapters_path / path


@router.get(
    "",
    response_model=AdapterList,
    summary="List adapters",
    description="The loaded adapters, and the folders found at start that failed to load (with why).",
    responses=error_responses(503),
)
async def list_adapters(request: Request, engine: EngineDep) -> AdapterList:
    mine = [adapter_out(i) for i in engine.adapters() if visible_to(request, i.name)]
    return AdapterList(data=mine, failed=dict(engine.adapter_failures))


@router.post(
    "",
    response_model=AdapterOut,
    status_code=status.HTTP_201_CREATED,
    summary="Load an adapter (admin)",
    description="Load a PEFT LoRA folder and serve it as `name`. 409 if the name is taken, 422 if the "
    "folder cannot be loaded (the loaded adapters are unaffected).",
    responses=error_responses(400, 401, 409, 422, 503),
)
async def load_adapter(
    request: Request, body: AdapterLoadRequest, engine: EngineDep, settings: SettingsDep, _admin: SharedAdminDep
) -> AdapterOut:
    folder = adapter_folder(body, settings)
    try:
        info = await asyncio.to_thread(adapter_set(request).load, engine, body.name, folder)
    except OSError as exc:  # a path the OS refuses outright (too long, not readable): the folder cannot load
        raise AdapterLoadError(body.name, str(folder), exc.strerror or type(exc).__name__) from exc
    return adapter_out(info, with_path=True)


@router.delete(
    "/{name}",
    response_model=AdapterDeleted,
    summary="Unload an adapter (admin)",
    description="Stop serving the adapter and free its weights. Requests queued before this one still "
    "finish on it; later ones get 404.",
    responses=error_responses(400, 401, 404, 422, 503),
)
async def unload_adapter(request: Request, name: str, engine: EngineDep, _admin: SharedAdminDep) -> AdapterDeleted:
    await asyncio.to_thread(adapter_set(request).unload, engine, name)
    return AdapterDeleted(id=name)
