"""POST /v1/classify: zero-shot or adapter-tuned labelling by the probability of each label."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from apps.deps import EngineDep, select_model
from apps.errors import error_responses
from apps.http.deadline import await_engine, off_loop
from apps.llm.schemas import ClassifyRequest, ClassifyResponse, ClassifyResult
from apps.tenants.auth import requirement

router = APIRouter(prefix="/v1", tags=["classification"], dependencies=[Depends(requirement("server"))])


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    summary="Classify texts",
    description="Score each text against the given labels with the base model or an adapter: the "
    "model is asked for one label and the label probabilities are read from its next-token "
    "distribution (no text is generated), so every label gets a score and they sum to 1.",
    responses=error_responses(400, 404, 413, 422, 503),
)
async def classify(body: ClassifyRequest, request: Request, engine: EngineDep) -> ClassifyResponse:
    model = select_model(request, engine, body.model)
    future = await off_loop(
        engine.submit_score_labels, body.texts, body.labels, model=model, instruction=body.instruction
    )
    scores = await await_engine(request, future)
    return ClassifyResponse(
        model=model,
        results=[ClassifyResult(label=max(s, key=s.__getitem__), scores=s) for s in scores],
    )
