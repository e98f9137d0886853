"""Signed user tokens: a storefront's backend mints one for a shopper, and the shopper's browser reads
that shopper's recommendations with it and the tenant's widget key, never with a server key.

A token reads ``<payload>.<signature>``, both base64url without padding: the payload is the JSON
``{"tenant", "user_id", "exp", "kid"}`` and the signature the HMAC-SHA256 of ``TOKEN_CONTEXT`` and the
payload's base64 text, under the tenant's signing secret (``TenantStore.signing_key``: random, made on
first use and kept in Redis, so every replica agrees and ``make run`` needs no setting; ``kid`` names
it, so a rotated secret retires its tokens with a clear message). Nothing is stored per token: a token
is good until ``exp``, for one user of one tenant.

A request for ``GET /v1/recommend/{user_id}`` passes :func:`user_reader` with

* a server key (or stronger) of the tenant: as before;
* a widget key of the tenant, from an origin the tenant allows, with ``X-User-Token`` minted for that
  tenant and that ``user_id``, not expired.

A missing or refused token: 403 when the token is absent, names another user or another tenant; 401
when it is malformed, tampered with, expired or signed with a retired secret.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Annotated, Any

import redis
from fastapi import Depends, Header, Path, Request

from apps.tenants.auth import Principal, PrincipalDep, requirement, tenant_store
from apps.tenants.store import SigningKey, TenantStore
from core.errors import AuthenticationError, InvalidRequestError, PermissionDeniedError, StoreUnavailableError

USER_TOKEN_HEADER = "X-User-Token"
TOKEN_CONTEXT = b"domainllm user token v1\n"  # what is signed starts with this: no other HMAC can pass for one
MAX_TOKEN_CHARS = 2048


@dataclass(frozen=True)
class UserClaims:
    tenant: str
    user_id: str
    expires_at: int  # epoch seconds
    kid: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def _mac(key: SigningKey, payload: str) -> str:
    return _b64(hmac.new(key.secret, TOKEN_CONTEXT + payload.encode("ascii"), hashlib.sha256).digest())


def sign(key: SigningKey, tenant: str, user_id: str, expires_at: int) -> str:
    """A token for ``user_id`` of ``tenant`` until ``expires_at``, signed with ``key``."""
    claims = {"tenant": tenant, "user_id": user_id, "exp": int(expires_at), "kid": key.kid}
    payload = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode("utf-8"))
    return f"{payload}.{_mac(key, payload)}"


def read_claims(token: str) -> tuple[UserClaims, str, str]:
    """The token's claims (not yet verified), its payload text and its signature text."""
    malformed = AuthenticationError(f"the {USER_TOKEN_HEADER} is malformed: mint a new one")
    payload, dot, signature = (token or "").partition(".")
    if not dot or not payload or not signature or len(token) > MAX_TOKEN_CHARS:
        raise malformed
    try:
        data = json.loads(_unb64(payload))
    except (binascii.Error, ValueError):  # bad base64, bad UTF-8, bad JSON
        raise malformed from None
    if not isinstance(data, dict):
        raise malformed
    tenant, user_id, expires_at, kid = (data.get(name) for name in ("tenant", "user_id", "exp", "kid"))
    if not (isinstance(tenant, str) and isinstance(user_id, str) and isinstance(kid, str) and type(expires_at) is int):
        raise malformed
    return UserClaims(tenant, user_id, expires_at, kid), payload, signature


def verify(token: str, key: SigningKey, *, tenant: str, user_id: str, now: float | None = None) -> UserClaims:
    """The claims of ``token`` when it admits reading ``user_id``'s data of ``tenant`` now, signed
    with ``key`` (``tenant``'s current secret); else the refusal, saying why."""
    claims, payload, signature = read_claims(token)
    if claims.tenant != tenant:  # its own tenant's secret would refuse it too; this says why
        raise PermissionDeniedError(f"this {USER_TOKEN_HEADER} was minted for another tenant than this key's")
    if claims.kid != key.kid:
        raise AuthenticationError(
            f"this {USER_TOKEN_HEADER} was signed with a secret the tenant has since rotated: mint a new one"
        )
    if not hmac.compare_digest(_mac(key, payload), signature):
        raise AuthenticationError(f"the {USER_TOKEN_HEADER} signature is not valid (the token was altered)")
    if claims.expires_at <= (time.time() if now is None else now):
        raise AuthenticationError(f"the {USER_TOKEN_HEADER} expired at {claims.expires_at} (epoch s): mint a new one")
    if claims.user_id != user_id:  # never echo either id: user ids may be personal data
        raise PermissionDeniedError(f"this {USER_TOKEN_HEADER} was minted for another user than the one in the path")
    return claims


# ---- over the tenant store ------------------------------------------------------------------------


def _store_guarded(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except redis.RedisError as exc:
        raise StoreUnavailableError(
            f"the key store (Redis) is unavailable: {type(exc).__name__}; retry shortly"
        ) from exc


def mint(
    store: TenantStore, tenant: str, user_id: str, ttl_s: int, max_ttl_s: int, now: float | None = None
) -> dict[str, Any]:
    """``{"token", "expires_at"}``: a token for ``user_id`` of ``tenant``, good for ``ttl_s`` seconds,
    at most ``max_ttl_s`` (a longer wish is cut to it: ``expires_at`` says what was granted)."""
    if ttl_s < 1:
        raise InvalidRequestError(f"ttl_s must be at least 1 second, got {ttl_s}")
    expires_at = int(time.time() if now is None else now) + min(ttl_s, max_ttl_s)
    key = _store_guarded(store.signing_key, tenant)
    return {"token": sign(key, tenant, user_id, expires_at), "expires_at": expires_at}


def verify_for(store: TenantStore, token: str, tenant: str, user_id: str, now: float | None = None) -> UserClaims:
    """:func:`verify` under ``tenant``'s current signing secret."""
    return verify(token, _store_guarded(store.signing_key, tenant), tenant=tenant, user_id=user_id, now=now)


# ---- the dependency of the per-user read ----------------------------------------------------------

_as_server = requirement("server")
_as_widget = requirement("widget")  # scope and origin checks, as every widget route has them


async def user_reader(
    request: Request,
    principal: PrincipalDep,
    user_id: Annotated[str, Path()],
    user_token: Annotated[
        str | None,
        Header(
            alias=USER_TOKEN_HEADER,
            description="With a widget key instead of a server key: a user token for this `user_id`, minted "
            "by the storefront's backend (`POST /v1/recommend/user-tokens`).",
        ),
    ] = None,
) -> Principal:
    """Admit a server key, or a widget key with a user token for the path's ``user_id`` (the route's
    path must name it ``{user_id}``). Found by ``route_scope`` as a "server" route: a widget key alone
    gets 403."""
    if principal.admits("server"):
        return await _as_server(request, principal)
    if not user_token:
        raise PermissionDeniedError(
            f"this key has the {principal.scope!r} scope: this route needs a server key, or a widget key "
            f"with an {USER_TOKEN_HEADER} that the storefront minted for this user"
        )
    await _as_widget(request, principal)
    store = tenant_store(request)
    await asyncio.to_thread(verify_for, store, user_token, principal.tenant, user_id)
    return principal


user_reader.needed = "server"  # type: ignore[attr-defined]  # read by route_scope (the route-by-key tests)

UserReaderDep = Annotated[Principal, Depends(user_reader)]
