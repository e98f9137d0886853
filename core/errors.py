"""One exception tree for the suite. The HTTP layer maps it to status codes in one place
(``apps/errors.py``); workers and the CLI print the message.

    DomainLLMError
    ├── InvalidRequestError            bad input: empty, malformed, out of range
    │   └── InputTooLargeError         text, batch or body above a configured limit
    ├── AuthenticationError            missing, wrong or revoked key
    ├── PermissionDeniedError          a valid key whose scope, tenant or origin does not admit the call
    ├── RateLimitedError               a key or an address over its request rate (retry after ``retry_after_s``)
    │   └── QuotaExceededError         a tenant's daily token budget is spent (retry after the next UTC midnight)
    ├── NotFoundError                  a named thing that does not exist
    │   └── AdapterNotFoundError       an adapter name that is not loaded
    ├── ConflictError                  a name that is already taken
    ├── UpstreamError                  a remote resource we were asked to read failed, was too slow or is unusable
    ├── AdapterLoadError               an adapter folder that cannot be loaded
    ├── ModelNotReadyError             the engine has not finished warming up
    ├── StoreUnavailableError          an app's store (Redis) cannot be reached
    ├── EngineOverloadedError          the engine's queue holds more work than its bound, or a wait passed its
    │                                  deadline (retry after ``retry_after_s``)
    └── ClientGoneError                the caller stopped waiting (disconnected) before the engine answered
"""

from __future__ import annotations

import math


class DomainLLMError(Exception):
    """Root of every error the suite raises on purpose."""

    error_type = "domainllm_error"

    def __init__(self, message: str, **context: object) -> None:
        super().__init__(message)
        self.message = message
        self.context = context


class InvalidRequestError(DomainLLMError):
    error_type = "invalid_request"


class InputTooLargeError(InvalidRequestError):
    error_type = "input_too_large"

    def __init__(self, message: str, *, limit: int, actual: int, **context: object) -> None:
        super().__init__(message, limit=limit, actual=actual, **context)
        self.limit = limit
        self.actual = actual


class AuthenticationError(DomainLLMError):
    error_type = "authentication_error"


class PermissionDeniedError(DomainLLMError):
    error_type = "permission_denied"


class RateLimitedError(DomainLLMError):
    error_type = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.retry_after_s = _whole_seconds(retry_after_s)


class QuotaExceededError(RateLimitedError):
    error_type = "quota_exceeded"


class NotFoundError(DomainLLMError):
    error_type = "not_found"


class AdapterNotFoundError(NotFoundError):
    error_type = "adapter_not_found"

    def __init__(self, name: str, available: list[str]) -> None:
        super().__init__(
            f"unknown model/adapter {name!r}; available: {', '.join(available) or '(none)'}",
            name=name,
            available=available,
        )
        self.name = name
        self.available = available


class ConflictError(DomainLLMError):
    error_type = "conflict"


class UpstreamError(DomainLLMError):
    """A URL the caller named (a page to ingest) answered an error, too slowly, or with content we
    cannot take: the request cannot be done as asked (422), though a retry may succeed later."""

    error_type = "upstream_error"


class AdapterLoadError(DomainLLMError):
    error_type = "adapter_load_error"

    def __init__(self, name: str, path: str, reason: str) -> None:
        super().__init__(f"cannot load adapter {name!r} from {path}: {reason}", name=name, path=path)
        self.name = name
        self.path = path
        self.reason = reason


class ModelNotReadyError(DomainLLMError):
    error_type = "model_not_ready"


class StoreUnavailableError(DomainLLMError):
    """An app's store (Redis) cannot be reached: 503 with Retry-After, like a loading model."""

    error_type = "store_unavailable"


class EngineOverloadedError(DomainLLMError):
    error_type = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float = 1, **context: object) -> None:
        super().__init__(message, retry_after_s=retry_after_s, **context)
        self.retry_after_s = _whole_seconds(retry_after_s)


class ClientGoneError(DomainLLMError):
    """The caller went away (its connection closed) while it waited: its engine work was cancelled.
    Nobody reads the answer; the HTTP layer records it as 499, nginx's "client closed request"."""

    error_type = "client_gone"


def _whole_seconds(seconds: float) -> int:
    """A Retry-After value: whole seconds, at least 1 (a fraction rounds up)."""
    return max(1, math.ceil(seconds))
