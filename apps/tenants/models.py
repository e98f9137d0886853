"""Which model serves a tenant's request in a domain, and counting what happened to its answers.

    router = services.model_router(tenant, "sentiment")
    route = router.route(sticky_key=session_id)   # Route(model="acme/sentiment@v3", version=3, arm="promoted")
    ... engine call with model=route.model ...; the response names route.model
    router.count(route.version, "served")          # later, on feedback: router.count(version, "up")

The route is read from Redis on every call (``core.versions``): a promotion on any replica is in
force on this one with its next request. With no version of its own, a tenant is served by the
suite's shared adapter (or the base model while that is not loaded).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis
from prometheus_client import Counter

from core.adapters import parse_adapter_name
from core.interface import Engine
from core.versions import AdapterVersions, Route

log = logging.getLogger(__name__)

SERVED = Counter(
    "domainllm_model_responses_total",
    "Responses by domain, the model version that produced them and its arm (promoted, candidate, shared)",
    ["domain", "model", "arm"],
)
OUTCOMES = Counter(
    "domainllm_model_outcomes_total",
    "Feedback joined to the model version that served it (up, down, handoff, click, purchase, correct, ...)",
    ["domain", "model", "outcome"],
)


def version_of(model: str | None) -> int | None:
    """The version number in a served model name (``acme/support@v3`` -> 3), None for a shared one."""
    ref = parse_adapter_name(model) if model else None
    return ref.version if ref is not None else None


@dataclass
class ModelRouter:
    versions: AdapterVersions
    engine: Engine
    tenant: str
    domain: str
    shared: str  # the suite's own adapter for the domain

    def shared_model(self) -> str:
        return self.shared if self.engine.has_model(self.shared) else "base"

    def route(self, sticky_key: str | None = None) -> Route:
        shared = self.shared_model()
        try:
            return self.versions.route(self.tenant, self.domain, shared, sticky_key)
        except redis.RedisError as exc:  # the versions are out of reach: serve, on the shared model
            log.warning("adapter route of %s/%s unavailable (%s): serving %s", self.tenant, self.domain, exc, shared)
            return Route(shared, None, "shared")

    def served(self, route: Route, n: int = 1) -> None:
        SERVED.labels(self.domain, route.model, route.arm).inc(n)
        self._count(route.version, "served", n)

    def outcome(self, model: str | None, kind: str, n: int = 1) -> None:
        """Feedback on an answer that ``model`` gave (as named in the response or stored with it)."""
        if n > 0:  # a retracted rating (up, then down) is taken back in Redis; a Prometheus counter only grows
            OUTCOMES.labels(self.domain, model or "unknown", kind).inc(n)
        else:
            OUTCOMES.labels(self.domain, model or "unknown", f"{kind}_retracted").inc(-n)
        self._count(version_of(model), kind, n)

    def _count(self, version: int | None, kind: str, n: int) -> None:
        try:
            self.versions.count(self.tenant, self.domain, version, kind, n)
        except redis.RedisError as exc:
            log.warning("outcome %s of %s/%s not counted: %s", kind, self.tenant, self.domain, exc)
