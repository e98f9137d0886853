"""The one place where failures become HTTP responses.

Every error body, whoever produced it, has one shape: ``{"error": {"type": ..., "message": ...}}``.
The core raises its own tree (``core.errors``) and knows nothing of HTTP; ``STATUS_BY_ERROR``
below is the whole mapping, walked along the exception's MRO so a subclass inherits its parent's
status unless it has its own (``InputTooLargeError`` is an ``InvalidRequestError`` but gets 413).
FastAPI's own failures (validation, malformed JSON, unknown route, wrong method) and the two
middleware here (oversized bodies, unexpected exceptions) answer in the same shape, so a client
needs one error parser for the whole API.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apps.http.middleware import HTTPMiddleware, TrackedSend
from core.errors import (
    AdapterLoadError,
    AdapterNotFoundError,
    AuthenticationError,
    ClientGoneError,
    ConflictError,
    DomainLLMError,
    EngineOverloadedError,
    InputTooLargeError,
    InvalidRequestError,
    ModelNotReadyError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitedError,
    StoreUnavailableError,
    UpstreamError,
)

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[DomainLLMError], int] = {
    InvalidRequestError: 400,
    InputTooLargeError: 413,
    AuthenticationError: 401,
    PermissionDeniedError: 403,
    RateLimitedError: 429,
    QuotaExceededError: 429,
    NotFoundError: 404,
    AdapterNotFoundError: 404,
    ConflictError: 409,
    AdapterLoadError: 422,
    UpstreamError: 422,
    ModelNotReadyError: 503,
    StoreUnavailableError: 503,
    EngineOverloadedError: 503,
    ClientGoneError: 499,  # nobody reads it: nginx's "client closed request", so the metrics count them
}
FALLBACK_STATUS = 400  # a DomainLLMError is raised on purpose: the caller can act on its message

# Seconds a client should wait before retrying, for errors that do not carry their own
# ``retry_after_s`` (a rate limit, a spent budget and a full engine queue each know theirs).
RETRY_AFTER_S: dict[type[DomainLLMError], int] = {
    ModelNotReadyError: 5,
    StoreUnavailableError: 5,
}

MAX_REPORTED_VALIDATION_ERRORS = 5
JSON_CONTENT_TYPE = "Content-Type: application/json"
INTERNAL_ERROR_TYPE = "internal_error"
INTERNAL_ERROR_MESSAGE = "internal server error; it has been logged, please report it if it persists"


class ErrorDetail(BaseModel):
    type: str = Field(description="Machine-readable kind of error, e.g. `invalid_request`, `adapter_not_found`.")
    message: str = Field(description="What went wrong and, where possible, how to fix the request.")


class ErrorResponse(BaseModel):
    """The body of every 4xx/5xx answer of this API."""

    error: ErrorDetail


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for the error codes a route can answer, all with ``ErrorResponse``."""
    descriptions = {
        400: "Invalid request (bad parameter values, malformed JSON).",
        401: "Missing, wrong or revoked API key.",
        403: "The key's scope, tenant or origin does not admit this call.",
        408: "The request body was not fully received within DOMAINLLM_BODY_READ_TIMEOUT_S.",
        429: "Over the key's or the address's request rate, or the tenant's daily token budget: retry after "
        "`Retry-After` seconds.",
        404: "Unknown model/adapter.",
        409: "Conflicts with the current state: a name already taken, a handoff another agent holds.",
        413: "Input above a configured limit (characters, tokens, texts, body bytes).",
        422: "The body does not match the schema, or the adapter folder cannot be loaded.",
        503: "The engine is still loading, its queue is full, or it did not answer within its deadline; retry "
        "after `Retry-After` seconds.",
    }
    return {code: {"model": ErrorResponse, "description": descriptions.get(code, "Error.")} for code in codes}


def status_for(exc: DomainLLMError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return FALLBACK_STATUS


def error_response(status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(type=error_type, message=message))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


# ---- exception handlers ------------------------------------------------------------------------


async def domain_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainLLMError)
    status = status_for(exc)
    headers: dict[str, str] = {}
    for cls, seconds in RETRY_AFTER_S.items():
        if isinstance(exc, cls):
            headers["Retry-After"] = str(seconds)
    if isinstance(exc, AuthenticationError):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, RateLimitedError | EngineOverloadedError):
        headers["Retry-After"] = str(exc.retry_after_s)
    return error_response(status, exc.error_type, exc.message, headers or None)


def _location(loc: Sequence[int | str]) -> str:
    """("body", "messages", 0, "role") -> "messages[0].role"; query/path/header keep their prefix."""
    parts = list(loc)
    out = ""
    if parts and parts[0] == "body":
        parts = parts[1:]
        if not parts:
            return "body"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _is_json(content_type: str | None) -> bool:
    return content_type is not None and "json" in content_type.split(";")[0].lower()


def describe_validation_errors(errors: Sequence[Any], content_type: str | None) -> tuple[int, str, str]:
    """(status, type, message) for FastAPI's validation errors: readable, naming each field."""
    for err in errors:
        if err.get("type") == "json_invalid":
            pos = err["loc"][-1] if err.get("loc") else "?"
            reason = (err.get("ctx") or {}).get("error", "JSON decode error")
            return 400, "invalid_request", f"malformed JSON in the request body at character {pos}: {reason}"
    first = errors[0] if errors else {}
    if tuple(first.get("loc", ())) == ("body",):
        if first.get("type") == "missing":
            return 422, "validation_error", "the request body is missing: send a JSON object"
        if not _is_json(content_type):
            return 422, "validation_error", f"the request body must be a JSON object sent with {JSON_CONTENT_TYPE}"
        if first.get("type") in {"model_attributes_type", "dict_type", "model_type"}:
            return 422, "validation_error", "the request body must be a JSON object"
    messages = []
    for err in errors[:MAX_REPORTED_VALIDATION_ERRORS]:
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if err.get("type") in {"enum", "literal_error"} and isinstance(err.get("input"), str):
            msg = f"{msg}, not {err['input'][:64]!r}"
        messages.append(f"{_location(err.get('loc', ()))}: {msg}")
    more = len(errors) - MAX_REPORTED_VALIDATION_ERRORS
    if more > 0:
        messages.append(f"(and {more} more)")
    return 422, "validation_error", "; ".join(messages)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    status, error_type, message = describe_validation_errors(exc.errors(), request.headers.get("content-type"))
    return error_response(status, error_type, message)


HTTP_ERROR_TYPES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "input_too_large"}


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own HTTP errors: unknown routes, wrong methods, and any HTTPException raised."""
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"no route {request.method} {request.url.path}; see /docs for the API"
    elif exc.status_code == 405:
        allowed = headers.get("Allow") or headers.get("allow") or "?"
        message = f"method {request.method} is not allowed on {request.url.path}; allowed: {allowed}"
    elif exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        message = "the request body could not be parsed: send UTF-8 encoded JSON"
    else:
        message = str(exc.detail)
    return error_response(
        exc.status_code, HTTP_ERROR_TYPES.get(exc.status_code, "http_error"), message, headers or None
    )


async def recursion_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A body nested deeper than the JSON decoder's recursion limit (``[[[[...]]]]``, 100,000 deep):
    the decoder raises RecursionError, not a decode error, wherever a route parses JSON."""
    return error_response(400, "invalid_request", "the body is not usable JSON: it is nested too deeply")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainLLMError, domain_error_handler)
    app.add_exception_handler(RecursionError, recursion_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)


# ---- middleware --------------------------------------------------------------------------------


class BodySizeLimitMiddleware(HTTPMiddleware):
    """Reject request bodies above ``max_bytes`` before anything parses them.

    A declared ``Content-Length`` above the limit is refused without parsing a byte; a body with no
    (or a lying) length is read up to the limit and refused as soon as it passes it. The accepted
    body is buffered and replayed to the app, so nothing downstream ever holds more than the limit.
    The rest of a refused body, up to ``DRAIN_FACTOR`` times the limit, is read and dropped before
    the 413 goes out: a client still sending would otherwise meet a reset connection, not the answer.
    """

    DRAIN_FACTOR = 4

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            if int(declared) <= self.DRAIN_FACTOR * self.max_bytes:
                await self._drain(receive, more=True)
            await self._reject(scope, receive, send, f"is {int(declared)} bytes")
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending its body
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._drain(receive, more=message.get("more_body", False))
                await self._reject(scope, receive, send, f"exceeds {self.max_bytes} bytes")
                return
            if not message.get("more_body", False):
                break

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        await self.app(scope, replay, send)

    async def _drain(self, receive: Receive, *, more: bool) -> None:
        """Read and drop the rest of a refused body, up to ``DRAIN_FACTOR`` times the limit."""
        left = self.DRAIN_FACTOR * self.max_bytes
        while more and left > 0:
            message = await receive()
            if message["type"] != "http.request":
                return
            left -= len(message.get("body", b""))
            more = message.get("more_body", False)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, size: str) -> None:
        message = f"the request body {size}; the limit is {self.max_bytes} bytes (DOMAINLLM_MAX_BODY_BYTES)"
        # The unread rest of the body makes the connection unusable for a next request: close it.
        response = error_response(413, InputTooLargeError.error_type, message, {"Connection": "close"})
        await response(scope, receive, send)


class UnhandledErrorMiddleware(HTTPMiddleware):
    """Turn an exception nobody expected into a generic 500 and log its traceback once.

    Starlette's ``ServerErrorMiddleware`` would also answer 500, but it re-raises afterwards so the
    server logs the traceback a second time, and its body is not in this API's error shape.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracked = TrackedSend(send)
        try:
            await self.app(scope, receive, tracked)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if tracked.started:  # too late for a clean answer: let the server drop the connection
                raise
            await error_response(500, INTERNAL_ERROR_TYPE, INTERNAL_ERROR_MESSAGE)(scope, receive, send)


def stream_error_json(exc: Exception) -> str:
    """The error body for a failure inside an already-started (200) stream, sent as one event."""
    if isinstance(exc, DomainLLMError):
        body = ErrorResponse(error=ErrorDetail(type=exc.error_type, message=exc.message))
    else:
        body = ErrorResponse(error=ErrorDetail(type=INTERNAL_ERROR_TYPE, message=INTERNAL_ERROR_MESSAGE))
    return body.model_dump_json()


def store_guarded_route(store: str, errors: tuple[type[BaseException], ...]) -> type[APIRoute]:
    """A route class that turns ``errors`` (the store's connection errors) into a 503 naming ``store``,
    so every route of an app that keeps its state in Redis answers "retry shortly", never a 500."""

    class StoreGuardedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                try:
                    return await handler(request)
                except errors as exc:
                    raise StoreUnavailableError(
                        f"the {store} store (Redis) is unavailable: {type(exc).__name__}; retry shortly"
                    ) from exc

            return guarded

    return StoreGuardedRoute
