"""Tenants and their API keys, in Redis, so every replica sees a change (a revocation) at once.

    {ns}:tenants                 set   tenant ids
    {ns}:tenant:{id}             hash  name, origins (JSON list), created_at
    {ns}:key:{key_id}            hash  tenant, scope, digest (SHA-256 of the secret, hex), label,
                                       created_at, last4; deleted when revoked
    {ns}:keys:{tenant}           set   the tenant's key ids
    {ns}:origin:{origin}         set   the tenants whose origins list ``origin`` (gone when none does):
                                       CORS asks it, with no key in hand, whether any tenant allows a page
    {ns}:origins-indexed         str   set once the index above covers the tenants made before it
    {ns}:signing:{tenant}        str   ``{kid}:{secret}``, the tenant's user-token signing secret (random,
                                       made on first use; rotating it retires every token it signed)

A key reads ``dlm_<scope>_<key_id>_<secret>``: the id finds the record in one lookup, and only the
secret's SHA-256 is stored (a 256-bit random secret needs no slow hash: nothing to brute-force).
The clear key is shown once, when it is created or rotated.

Scopes, each admitting what the one before does:

* ``widget``: public, in a customer's browser: chat with its tenant's bot and search its public KB;
* ``server``: the tenant's backend: recommendations, events, news, classify, the OpenAI routes;
* ``admin``: the tenant's own management: KB, feeds, watchlists, rules, adapters, keys, the inbox.

The operator key (``DOMAINLLM_OPERATOR_KEY``) creates tenants; the legacy ``DOMAINLLM_ADMIN_KEY`` is
the ``default`` tenant's admin key, so a single-tenant setup works as it did.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from core.errors import ConflictError, InvalidRequestError, NotFoundError

DEFAULT_TENANT = "default"
SCOPES = ("widget", "server", "admin")  # each admits what the ones before it admit
TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
_KEY = re.compile(r"^dlm_(widget|server|admin)_([A-Za-z0-9]{12})_([A-Za-z0-9_-]{20,})$")
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?$")


def tenant_namespace(base: str, tenant: str) -> str:
    """The Redis prefix of ``tenant``'s data in an app whose prefix is ``base``: the base itself for
    the default tenant (so a single-tenant install keeps its data), ``{base}.t-{tenant}`` for others."""
    return base if tenant == DEFAULT_TENANT else f"{base}.t-{check_tenant_id(tenant)}"


def tenant_of_namespace(base: str, namespace: str) -> str | None:
    """The tenant whose prefix ``namespace`` is in an app whose prefix is ``base``; None: neither."""
    if namespace == base:
        return DEFAULT_TENANT
    head, sep, tenant = namespace.partition(".t-")
    return tenant if sep and head == base and TENANT_ID.match(tenant) else None


def scope_admits(held: str, needed: str) -> bool:
    """A key of scope ``held`` may call a route that needs ``needed``."""
    return SCOPES.index(held) >= SCOPES.index(needed)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def check_tenant_id(tenant: str) -> str:
    if not isinstance(tenant, str) or not TENANT_ID.match(tenant):
        raise InvalidRequestError(
            f"tenant id {tenant!r} is not valid: 1-40 lowercase letters, digits and dashes, starting with a letter or digit"
        )
    return tenant


def check_origins(origins: list[str]) -> list[str]:
    bad = [o for o in origins if o != "*" and not _ORIGIN.match(o)]
    if bad:
        raise InvalidRequestError(f"origins must be scheme://host[:port] or '*'; not valid: {bad[:3]}")
    return list(dict.fromkeys(origins))


@dataclass(frozen=True)
class SigningKey:
    """A tenant's user-token signing secret and its id (the id goes in each token it signs)."""

    kid: str
    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    origins: list[str] = field(default_factory=list)
    created_at: float = 0.0

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "origins": self.origins, "created_at": self.created_at}


@dataclass(frozen=True)
class KeyInfo:
    """What is stored of a key (never its secret)."""

    id: str
    tenant: str
    scope: str
    label: str
    created_at: float
    last4: str

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "scope": self.scope,
            "label": self.label,
            "created_at": self.created_at,
            "hint": f"dlm_{self.scope}_{self.id}_…{self.last4}",
        }


@dataclass(frozen=True)
class IssuedKey:
    info: KeyInfo
    key: str  # the clear key: shown once

    def public(self) -> dict[str, Any]:
        return {**self.info.public(), "key": self.key}


class TenantStore:
    def __init__(self, client: redis.Redis, namespace: str = "tenancy") -> None:
        self.r = client
        self.ns = namespace
        self._origins_indexed = False  # ensure_origin_index has run in this process

    def _k(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    @staticmethod
    def _s(value: Any) -> str:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    # ---- tenants ------------------------------------------------------------------------------

    def create_tenant(self, tenant: str, name: str | None = None, origins: list[str] | None = None) -> Tenant:
        check_tenant_id(tenant)
        origins = check_origins(origins or [])
        if not self.r.sadd(self._k("tenants"), tenant):
            raise ConflictError(f"tenant {tenant!r} exists already")
        record = Tenant(tenant, (name or tenant).strip()[:200] or tenant, origins, time.time())
        pipe = self.r.pipeline()
        pipe.hset(
            self._k("tenant", tenant),
            mapping={"name": record.name, "origins": json.dumps(origins), "created_at": record.created_at},
        )
        for origin in origins:
            pipe.sadd(self._k("origin", origin), tenant)
        pipe.execute()
        return record

    def ensure_default(self, origins: list[str] | None = None) -> Tenant:
        """The ``default`` tenant, created on first start (single-tenant setups and the demo)."""
        found = self.get_tenant(DEFAULT_TENANT)
        if found is not None:
            return found
        try:
            return self.create_tenant(DEFAULT_TENANT, "Default", origins or [])
        except ConflictError:  # another replica created it in between
            found = self.get_tenant(DEFAULT_TENANT)
            assert found is not None
            return found

    def get_tenant(self, tenant: str) -> Tenant | None:
        raw = self.r.hgetall(self._k("tenant", tenant))
        if not raw:
            return None
        data = {self._s(k): self._s(v) for k, v in raw.items()}
        return Tenant(
            tenant, data.get("name", tenant), json.loads(data.get("origins", "[]")), float(data["created_at"])
        )

    def require_tenant(self, tenant: str) -> Tenant:
        found = self.get_tenant(check_tenant_id(tenant))
        if found is None and tenant == DEFAULT_TENANT:
            return self.ensure_default()  # exists from its first use: single-tenant setups never create it
        if found is None:
            raise NotFoundError(f"no tenant {tenant!r}")
        return found

    def tenants(self) -> list[Tenant]:
        ids = sorted(self._s(t) for t in self.r.smembers(self._k("tenants")))
        return [t for t in (self.get_tenant(i) for i in ids) if t is not None]

    def set_origins(self, tenant: str, origins: list[str]) -> Tenant:
        self.require_tenant(tenant)
        origins = check_origins(origins)
        record = self._k("tenant", tenant)

        def swap(pipe: Any) -> None:  # retried by redis-py while another replica changes the record under it
            old = json.loads(self._s(pipe.hget(record, "origins") or "[]"))
            pipe.multi()
            pipe.hset(record, "origins", json.dumps(origins))
            for origin in set(old) - set(origins):
                pipe.srem(self._k("origin", origin), tenant)  # Redis drops the set with its last tenant
            for origin in origins:
                pipe.sadd(self._k("origin", origin), tenant)

        self.r.transaction(swap, record)
        return self.require_tenant(tenant)

    # ---- the origins index (CORS) -------------------------------------------------------------

    def origin_listed(self, origin: str) -> bool:
        """Some tenant allows pages of ``origin`` (or of any origin, ``*``) to use its widget keys."""
        if not self._origins_indexed:
            self.ensure_origin_index()
        return bool(self.r.exists(self._k("origin", origin), self._k("origin", "*")))

    def ensure_origin_index(self) -> None:
        """Index the origins of tenants made before the index existed, until one process has done it
        to the end (two doing it at once is harmless: each tenant's origins are added, never removed)."""
        if not self.r.exists(self._k("origins-indexed")):
            for tenant in sorted(self._s(t) for t in self.r.smembers(self._k("tenants"))):
                record = self._k("tenant", tenant)

                def add(pipe: Any, record: str = record, tenant: str = tenant) -> None:
                    origins = json.loads(self._s(pipe.hget(record, "origins") or "[]"))
                    pipe.multi()
                    for origin in origins:
                        pipe.sadd(self._k("origin", origin), tenant)

                self.r.transaction(add, record)  # a concurrent set_origins makes it read again
            self.r.set(self._k("origins-indexed"), "1")
        self._origins_indexed = True

    # ---- user-token signing secrets ------------------------------------------------------------

    def signing_key(self, tenant: str) -> SigningKey:
        """``tenant``'s user-token signing secret, made on first use; every replica reads the same one."""
        name = self._k("signing", check_tenant_id(tenant))
        raw = self.r.get(name)
        if raw is None:
            self.r.set(name, self._new_signing_value(), nx=True)  # the first replica to ask wins
            raw = self.r.get(name)
        kid, _, secret = self._s(raw).partition(":")
        return SigningKey(kid, secret.encode("ascii"))

    def rotate_signing_key(self, tenant: str) -> str:
        """A new signing secret for ``tenant``: every user token signed before stops working at once.
        Returns the new secret's id."""
        self.require_tenant(tenant)
        value = self._new_signing_value()
        self.r.set(self._k("signing", tenant), value)
        return value.partition(":")[0]

    @staticmethod
    def _new_signing_value() -> str:
        return f"{secrets.token_hex(4)}:{secrets.token_urlsafe(32)}"

    # ---- keys ---------------------------------------------------------------------------------

    def create_key(self, tenant: str, scope: str, label: str = "") -> IssuedKey:
        self.require_tenant(tenant)
        if scope not in SCOPES:
            raise InvalidRequestError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
        key_id = "".join(secrets.choice("abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(12))
        secret = secrets.token_urlsafe(32)
        info = KeyInfo(key_id, tenant, scope, (label or "").strip()[:100], time.time(), secret[-4:])
        pipe = self.r.pipeline()
        pipe.hset(
            self._k("key", key_id),
            mapping={
                "tenant": tenant,
                "scope": scope,
                "digest": digest(secret),
                "label": info.label,
                "created_at": info.created_at,
                "last4": info.last4,
            },
        )
        pipe.sadd(self._k("keys", tenant), key_id)
        pipe.execute()
        return IssuedKey(info, f"dlm_{scope}_{key_id}_{secret}")

    def _info(self, key_id: str) -> tuple[KeyInfo, str] | None:
        raw = self.r.hgetall(self._k("key", key_id))
        if not raw:
            return None
        d = {self._s(k): self._s(v) for k, v in raw.items()}
        info = KeyInfo(key_id, d["tenant"], d["scope"], d.get("label", ""), float(d["created_at"]), d.get("last4", ""))
        return info, d["digest"]

    def key_info(self, key_id: str) -> KeyInfo | None:
        found = self._info(key_id)
        return found[0] if found else None

    def authenticate(self, key: str) -> KeyInfo | None:
        """The key's record when ``key`` is a live key (constant-time digest compare), else None."""
        m = _KEY.match(key or "")
        if m is None:
            return None
        scope, key_id, secret = m.groups()
        found = self._info(key_id)
        if found is None:
            return None
        info, stored = found
        if not secrets.compare_digest(digest(secret), stored) or info.scope != scope:
            return None
        return info

    def keys(self, tenant: str) -> list[KeyInfo]:
        ids = sorted(self._s(k) for k in self.r.smembers(self._k("keys", tenant)))
        found = [self.key_info(i) for i in ids]
        return sorted((k for k in found if k is not None), key=lambda k: k.created_at)

    def revoke(self, key_id: str, tenant: str | None = None) -> KeyInfo:
        """Delete the key (it stops working on every replica at its next request). ``tenant``: the
        caller's tenant; another tenant's key is reported as not found."""
        info = self.key_info(key_id)
        if info is None or (tenant is not None and info.tenant != tenant):
            raise NotFoundError(f"no key {key_id!r}")
        pipe = self.r.pipeline()
        pipe.delete(self._k("key", key_id))
        pipe.srem(self._k("keys", info.tenant), key_id)
        pipe.execute()
        return info

    def rotate(self, key_id: str, tenant: str | None = None) -> IssuedKey:
        """A new key of the same tenant, scope and label; the old one is revoked."""
        old = self.key_info(key_id)
        if old is None or (tenant is not None and old.tenant != tenant):
            raise NotFoundError(f"no key {key_id!r}")
        issued = self.create_key(old.tenant, old.scope, old.label)
        self.revoke(key_id)
        return issued
