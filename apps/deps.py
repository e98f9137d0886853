"""Dependencies that routes declare with the ``Annotated`` aliases below.

The engine and settings live on ``app.state`` (the lifespan puts them there); routes never reach
for them directly, so a test can swap any of them with ``app.dependency_overrides``. They are
``async`` because they never block: FastAPI would run plain functions on a thread-pool hop.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from core.config import PLACEHOLDER_SECRETS, Settings
from core.engine import Engine
from core.errors import AdapterNotFoundError, AuthenticationError, ModelNotReadyError

# Key in ``request.state`` naming the model a request ran on; the metrics middleware labels with it.
ADAPTER_STATE_KEY = "adapter"

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="AdminBearer",
    description="The admin key (DOMAINLLM_ADMIN_KEY) as `Authorization: Bearer <key>`.",
)
_admin_header = APIKeyHeader(
    name="X-Admin-Key",
    auto_error=False,
    scheme_name="AdminKey",
    description="The admin key (DOMAINLLM_ADMIN_KEY) in an `X-Admin-Key` header.",
)


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def not_ready_reason(app: FastAPI) -> str | None:
    """Why the engine cannot serve yet, or None when it can (base, adapters and batch worker up)."""
    engine: Engine | None = getattr(app.state, "engine", None)
    if engine is not None and engine.ready:
        return None
    failure = getattr(app.state, "warmup_error", None)
    if failure:
        return f"the engine failed to start: {failure}"
    return "the engine is still loading the base model; retry shortly"


async def get_engine(request: Request) -> Engine:
    reason = not_ready_reason(request.app)
    if reason is not None:
        raise ModelNotReadyError(reason)
    engine: Engine = request.app.state.engine
    return engine


async def require_admin(
    settings: Annotated[Settings, Depends(get_settings)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_admin_header)],
) -> None:
    """Admit the request only with the configured admin key, compared in constant time."""
    expected = settings.admin_key.get_secret_value()
    if expected in PLACEHOLDER_SECRETS:
        # A default key is public knowledge: it must not be what guards loading files onto the server.
        raise AuthenticationError("admin endpoints are disabled until DOMAINLLM_ADMIN_KEY is set to a real secret")
    given = bearer.credentials if bearer is not None else header_key
    if not given:
        raise AuthenticationError("admin key required: send 'Authorization: Bearer <key>' or 'X-Admin-Key: <key>'")
    # Compare raw bytes: headers arrive decoded as latin-1 (so .encode("latin-1") gives back what the
    # client sent, UTF-8 for a non-ASCII key), and compare_digest refuses non-ASCII str anyway.
    if not secrets.compare_digest(given.encode("latin-1"), expected.encode("utf-8")):
        raise AuthenticationError("the admin key is not valid")


def select_model(request: Request, engine: Engine, name: str) -> str:
    """Check that ``name`` (an adapter or "base") is served, and label this request's metrics with it.

    Only served names become label values, so a client cannot grow the metrics without bound.
    """
    if not engine.has_model(name):
        raise AdapterNotFoundError(name, [m["id"] for m in engine.list_models()])
    setattr(request.state, ADAPTER_STATE_KEY, name)
    return name


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
AdminDep = Annotated[None, Depends(require_admin)]
