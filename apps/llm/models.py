"""GET /v1/models: what can be named as ``model``, in OpenAI's model-list shape."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from apps.deps import EngineDep, visible_to
from apps.errors import error_responses
from apps.llm.schemas import ModelCard, ModelList
from apps.tenants.auth import requirement

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(requirement("server"))])


def model_card(entry: dict[str, Any], base_name: str, started: int) -> ModelCard:
    if entry["kind"] == "base":
        return ModelCard(id=entry["id"], created=started, kind="base", root=base_name)
    return ModelCard(
        id=entry["id"],
        created=int(entry["loaded_at"]),
        kind="lora",
        root=base_name,
        parent=base_name,
        rank=entry["rank"],
        card=entry.get("card") or None,
    )


@router.get(
    "/models",
    response_model=ModelList,
    summary="List models",
    description='The base model (`"base"`) and every loaded LoRA adapter, each usable as `model`.',
    responses=error_responses(503),
)
async def list_models(request: Request, engine: EngineDep) -> ModelList:
    started = int(getattr(request.app.state, "started_at", 0))
    models = [m for m in engine.list_models() if visible_to(request, m["id"])]
    return ModelList(data=[model_card(m, engine.base_model_name, started) for m in models])
