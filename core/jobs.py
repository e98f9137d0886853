"""Training jobs, in Redis: what was asked, how far it got, how it ended.

The API (or the CLI) creates a job and queues it; the worker that runs it reports progress and a
heartbeat; anyone polls it. A job whose worker died stops beating: ``reap`` (beat, every minute)
marks it failed with that reason once its heartbeat is older than its budget allows, so no job
stays "running" forever.

    {ns}:job:{id}     hash  tenant, domain, state (queued|running|done|failed), step, total, loss,
                            version, error, files (JSON), budget_s, created_at, started_at,
                            heartbeat, finished_at, attempts, result (JSON)
    {ns}:jobs:{tenant} zset  job ids by creation time
    {ns}:jobs:active   set   ids of queued or running jobs (what reap looks at)
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import redis

from core.errors import NotFoundError

ACTIVE = ("queued", "running")
QUEUED_GRACE_S = 6 * 3600  # a job nobody picked up for this long is failed (no train worker running?)
HEARTBEAT_GRACE_S = (
    300  # a running job may go this long without a heartbeat (a slow evaluation) before it counts as dead
)


class TrainingJobs:
    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.r: Any = client  # a decoding client (typed loosely: redis-py's stubs do not know it decodes)
        self.ns = namespace

    def _key(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    def create(self, tenant: str, domain: str, *, files: list[str], budget_s: float) -> str:
        job_id = f"job_{secrets.token_hex(8)}"
        now = time.time()
        record = {
            "id": job_id,
            "tenant": tenant,
            "domain": domain,
            "state": "queued",
            "files": json.dumps(files),
            "budget_s": repr(float(budget_s)),
            "created_at": repr(now),
            "attempts": "0",
        }
        pipe = self.r.pipeline()
        pipe.hset(self._key("job", job_id), mapping=record)
        pipe.zadd(self._key("jobs", tenant), {job_id: now})
        pipe.sadd(self._key("jobs", "active"), job_id)
        pipe.execute()
        return job_id

    def get(self, job_id: str, *, tenant: str | None = None) -> dict[str, Any]:
        raw = self.r.hgetall(self._key("job", job_id)) if job_id.startswith("job_") else {}
        if not raw or (tenant is not None and raw.get("tenant") != tenant):
            raise NotFoundError(f"no training job {job_id[:64]!r} for this tenant")
        out: dict[str, Any] = dict(raw)
        for k in ("step", "total", "attempts", "version"):
            if out.get(k) not in (None, ""):
                out[k] = int(out[k])
        for k in ("loss", "budget_s", "created_at", "started_at", "heartbeat", "finished_at"):
            if out.get(k) not in (None, ""):
                out[k] = float(out[k])
        for k in ("files", "result"):
            if out.get(k):
                out[k] = json.loads(out[k])
        return out

    def recent(self, tenant: str, limit: int = 50) -> list[dict[str, Any]]:
        ids = self.r.zrevrange(self._key("jobs", tenant), 0, limit - 1)
        out = []
        for job_id in ids:
            try:
                out.append(self.get(job_id))
            except NotFoundError:
                continue
        return out

    def start(self, job_id: str) -> dict[str, Any]:
        """The worker takes the job (again, after a worker died: ``attempts`` counts)."""
        now = repr(time.time())
        pipe = self.r.pipeline()
        pipe.hset(self._key("job", job_id), mapping={"state": "running", "started_at": now, "heartbeat": now})
        pipe.hincrby(self._key("job", job_id), "attempts", 1)
        pipe.execute()
        return self.get(job_id)

    def progress(self, job_id: str, step: int, total: int, loss: float, **fields: Any) -> None:
        mapping = {"step": str(step), "total": str(total), "loss": repr(float(loss)), "heartbeat": repr(time.time())}
        mapping.update({k: str(v) for k, v in fields.items()})
        self.r.hset(self._key("job", job_id), mapping=mapping)

    def note(self, job_id: str, **fields: Any) -> None:
        """Record a field (the version it trains, the phase) and beat."""
        mapping = {k: str(v) for k, v in fields.items()}
        mapping["heartbeat"] = repr(time.time())
        self.r.hset(self._key("job", job_id), mapping=mapping)

    def finish(self, job_id: str, result: dict[str, Any]) -> None:
        self._end(job_id, "done", result=json.dumps(result, default=str))

    def fail(self, job_id: str, error: str) -> None:
        self._end(job_id, "failed", error=error[:2000])

    def _end(self, job_id: str, state: str, **fields: str) -> None:
        pipe = self.r.pipeline()
        pipe.hset(self._key("job", job_id), mapping={"state": state, "finished_at": repr(time.time()), **fields})
        pipe.srem(self._key("jobs", "active"), job_id)
        pipe.execute()

    def reap(self, now: float | None = None) -> list[str]:
        """Fail the jobs whose worker is gone; returns their ids."""
        now = time.time() if now is None else now
        reaped = []
        for job_id in self.r.smembers(self._key("jobs", "active")):
            try:
                job = self.get(job_id)
            except NotFoundError:
                self.r.srem(self._key("jobs", "active"), job_id)
                continue
            if job["state"] == "running":
                beat = float(job.get("heartbeat") or job.get("started_at") or 0)
                if now - beat > HEARTBEAT_GRACE_S:
                    self.fail(job_id, f"the worker running it stopped (no heartbeat for {now - beat:.0f} s)")
                    reaped.append(job_id)
            elif job["state"] == "queued" and now - float(job["created_at"]) > QUEUED_GRACE_S:
                self.fail(
                    job_id,
                    f"no train worker took it within {QUEUED_GRACE_S // 3600} h (is one running on the 'train' queue?)",
                )
                reaped.append(job_id)
            else:
                self.r.srem(self._key("jobs", "active"), job_id)
        return reaped
