"""Adapter versions per tenant: which ``tenant/name@vN`` exist, which one serves, and who gets a candidate.

Every replica reads the route from Redis on each request, so a promotion, a rollback, a pin or a
traffic split is in force on every replica with the next request, and a request already routed keeps
its version to the end (the engine keeps serving ``@vN`` while anything asks for it). The adapter
files live in the shared artefact store (``core.adapters.version_dir``), written once by a training
job and read by every engine that serves them.

    {ns}:{tenant}:{name}:seq         int   the last version number handed out
    {ns}:{tenant}:{name}:versions    hash  N -> JSON record: state, created_at, card, gate report, job
    {ns}:{tenant}:{name}:route       hash  promoted, history (JSON list of earlier promoted versions),
                                           pinned ("1" or absent), candidate, share
    {ns}:{tenant}:{name}:outcomes:N  hash  served, and one counter per kind of feedback (up, down,
                                           handoff, click, purchase, ack, ...): the A/B report's input
    {ns}:changes                     pub/sub channel: "{tenant}/{name}" after any route change

States of a version: ``training`` → ``ready`` (gate passed) or ``refused`` (gate failed) or
``failed`` (the run died, with the reason). Only a ``ready`` version can be promoted or be a
candidate, unless the call forces it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from core.adapters import versioned_name
from core.errors import ConflictError, InvalidRequestError, NotFoundError

STATES = ("training", "ready", "refused", "failed")
HISTORY_MAX = 20

# Promote atomically: push the serving version onto the history, serve the new one, drop a candidate
# that is now the serving version. KEYS[1] route; ARGV[1] version, ARGV[2] history cap.
_PROMOTE = """
local cur = redis.call('HGET', KEYS[1], 'promoted')
local hist = cjson.decode(redis.call('HGET', KEYS[1], 'history') or '[]')
if cur and cur ~= ARGV[1] then
  table.insert(hist, 1, tonumber(cur))
  while #hist > tonumber(ARGV[2]) do table.remove(hist) end
end
redis.call('HSET', KEYS[1], 'promoted', ARGV[1], 'history', cjson.encode(hist))
if redis.call('HGET', KEYS[1], 'candidate') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'candidate', 'share')
end
return cur or ''
"""

# Roll back atomically: serve the newest earlier version. KEYS[1] route.
_ROLLBACK = """
local hist = cjson.decode(redis.call('HGET', KEYS[1], 'history') or '[]')
if #hist == 0 then return false end
local prev = table.remove(hist, 1)
redis.call('HSET', KEYS[1], 'promoted', tostring(prev), 'history', cjson.encode(hist))
return tostring(prev)
"""


@dataclass(frozen=True)
class Route:
    """The model that serves one request, and why: ``arm`` is "promoted", "candidate" or "shared"."""

    model: str
    version: int | None
    arm: str


def bucket(key: str) -> float:
    """A stable number in [0, 1) for a sticky key (a session, a user): the same key, the same arm."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class AdapterVersions:
    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.r: Any = client  # a decoding client (typed loosely: redis-py's stubs do not know it decodes)
        self.ns = namespace

    # ---- keys ---------------------------------------------------------------------------------
    def _key(self, tenant: str, name: str, *parts: str) -> str:
        return ":".join((self.ns, tenant, name, *parts))

    @property
    def channel(self) -> str:
        return f"{self.ns}:changes"

    def _changed(self, tenant: str, name: str) -> None:
        self.r.publish(self.channel, f"{tenant}/{name}")

    # ---- versions -----------------------------------------------------------------------------
    def allocate(self, tenant: str, name: str, *, job_id: str | None = None, data: dict[str, Any] | None = None) -> int:
        """A new version number, recorded as ``training``."""
        version = int(self.r.incr(self._key(tenant, name, "seq")))
        record = {
            "version": version,
            "model": versioned_name(tenant, name, version),
            "state": "training",
            "created_at": time.time(),
            "job_id": job_id,
            "data": data or {},
        }
        self.r.hset(self._key(tenant, name, "versions"), str(version), json.dumps(record))
        return version

    def update(self, tenant: str, name: str, version: int, **fields: Any) -> dict[str, Any]:
        record = self.get(tenant, name, version)
        if "state" in fields and fields["state"] not in STATES:
            raise ValueError(f"unknown version state {fields['state']!r}")
        record.update(fields)
        self.r.hset(self._key(tenant, name, "versions"), str(version), json.dumps(record, default=str))
        return record

    def get(self, tenant: str, name: str, version: int) -> dict[str, Any]:
        raw = self.r.hget(self._key(tenant, name, "versions"), str(version))
        if raw is None:
            known = sorted(int(v) for v in self.r.hkeys(self._key(tenant, name, "versions")))
            shown = ", ".join(f"v{v}" for v in known) or "none yet"
            raise NotFoundError(
                f"{versioned_name(tenant, name, version)} does not exist (versions of {tenant}/{name}: {shown})"
            )
        return dict(json.loads(raw))

    def records(self, tenant: str, name: str) -> list[dict[str, Any]]:
        rows = self.r.hgetall(self._key(tenant, name, "versions"))
        return sorted((json.loads(v) for v in rows.values()), key=lambda r: int(r["version"]))

    # ---- the route ----------------------------------------------------------------------------
    def route_state(self, tenant: str, name: str) -> dict[str, Any]:
        raw = self.r.hgetall(self._key(tenant, name, "route"))
        return {
            "promoted": int(raw["promoted"]) if raw.get("promoted") else None,
            "history": json.loads(raw.get("history") or "[]"),
            "pinned": raw.get("pinned") == "1",
            "candidate": int(raw["candidate"]) if raw.get("candidate") else None,
            "share": float(raw.get("share") or 0.0),
        }

    def route(self, tenant: str, name: str, shared: str, sticky_key: str | None = None) -> Route:
        """The model for one request of ``tenant`` in domain ``name``: the tenant's promoted version,
        or its candidate for ``share`` of the sticky keys, or ``shared`` (the suite's own adapter)
        when the tenant has promoted none."""
        raw = self.r.hmget(self._key(tenant, name, "route"), ["promoted", "candidate", "share"])
        promoted, candidate, share = raw
        if candidate and share and sticky_key is not None and bucket(f"{tenant}/{name}/{sticky_key}") < float(share):
            version = int(candidate)
            return Route(versioned_name(tenant, name, version), version, "candidate")
        if promoted:
            version = int(promoted)
            return Route(versioned_name(tenant, name, version), version, "promoted")
        return Route(shared, None, "shared")

    def _promotable(self, tenant: str, name: str, version: int, *, force: bool, what: str) -> dict[str, Any]:
        record = self.get(tenant, name, version)
        state = record.get("state")
        if state == "ready" or (force and state == "refused"):
            return record
        why = {
            "training": "it is still training",
            "failed": f"its training failed ({record.get('error', 'no reason recorded')})",
            "refused": "the gate refused it ("
            + str((record.get("gate") or {}).get("reason", "see its gate report"))
            + "); pass force=true to override",
        }.get(str(state), f"its state is {state!r}")
        raise ConflictError(f"{versioned_name(tenant, name, version)} cannot {what}: {why}", state=state)

    def promote(self, tenant: str, name: str, version: int, *, force: bool = False, auto: bool = False) -> int | None:
        """Serve ``version`` from the next request on; the one it replaces goes on the history.
        ``auto`` (a gate that passed) does nothing while the route is pinned. Returns the old one."""
        self._promotable(tenant, name, version, force=force, what="be promoted")
        route = self._key(tenant, name, "route")
        if auto and self.r.hget(route, "pinned") == "1":
            return None
        old = self.r.eval(_PROMOTE, 1, route, str(version), str(HISTORY_MAX))
        if not auto:
            self.r.hdel(route, "pinned")
        self.update(tenant, name, version, promoted_at=time.time())
        self._changed(tenant, name)
        return int(old) if old else None

    def rollback(self, tenant: str, name: str) -> int:
        prev = self.r.eval(_ROLLBACK, 1, self._key(tenant, name, "route"))
        if not prev:
            raise ConflictError(f"{tenant}/{name} has no earlier promoted version to roll back to")
        self._changed(tenant, name)
        return int(prev)

    def pin(self, tenant: str, name: str, version: int | None = None) -> None:
        """Freeze the route: a gate that passes no longer promotes on its own. With ``version``,
        serve that version first."""
        if version is not None:
            self.promote(tenant, name, version)
        route = self._key(tenant, name, "route")
        if not self.r.hget(route, "promoted"):
            raise ConflictError(f"{tenant}/{name} serves no version of its own yet: nothing to pin")
        self.r.hset(route, "pinned", "1")
        self._changed(tenant, name)

    def unpin(self, tenant: str, name: str) -> None:
        self.r.hdel(self._key(tenant, name, "route"), "pinned")
        self._changed(tenant, name)

    def split(self, tenant: str, name: str, version: int, share: float, *, force: bool = False) -> None:
        """Send ``share`` of the tenant's sticky keys to ``version`` (a candidate beside the promoted one)."""
        if not 0.0 < share < 1.0:
            raise InvalidRequestError(f"share must be between 0 and 1 (exclusive), got {share}")
        self._promotable(tenant, name, version, force=force, what="take traffic")
        route = self._key(tenant, name, "route")
        if self.r.hget(route, "promoted") == str(version):
            raise ConflictError(f"{versioned_name(tenant, name, version)} already serves every request")
        self.r.hset(route, mapping={"candidate": str(version), "share": repr(share)})
        self._changed(tenant, name)

    def end_split(self, tenant: str, name: str) -> None:
        self.r.hdel(self._key(tenant, name, "route"), "candidate", "share")
        self._changed(tenant, name)

    # ---- outcomes (the A/B report's input) ---------------------------------------------------
    def count(self, tenant: str, name: str, version: int | None, kind: str, n: int = 1) -> None:
        """Count one outcome (``served``, ``up``, ``click``, ...) for the version that served it;
        the shared adapter's outcomes count under version 0."""
        self.r.hincrby(self._key(tenant, name, "outcomes", str(version or 0)), kind, n)

    def outcomes(self, tenant: str, name: str) -> dict[int, dict[str, int]]:
        prefix = self._key(tenant, name, "outcomes", "")
        out: dict[int, dict[str, int]] = {}
        for key in self.r.scan_iter(match=f"{prefix}*", count=200):
            tail = key[len(prefix) :]
            if tail.isdigit():
                out[int(tail)] = {k: int(v) for k, v in self.r.hgetall(key).items()}
        return dict(sorted(out.items()))
