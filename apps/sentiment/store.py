"""Everything the monitor keeps, in Redis, under one key prefix (the namespace).

    {ns}:item:{id}       hash  data (the item, JSON) and, once enriched, enriched (JSON)
    {ns}:pending         zset  ids stored but not yet enriched, by the time they were last queued (the
                               sweeper's work list: ingest time, then each time the sweeper queues them)
    {ns}:bk:{scope}      hash  "{bucket_start}:n" and "{bucket_start}:{label}" counts per time bucket
    {ns}:ix:{scope}      zset  item ids per scope by publication time (links behind an alert)
    {ns}:active          zset  scopes ("all", "topic:earnings", "entity:AAPL") by their latest item time
    {ns}:stats           hash  accepted, duplicates, rejected, enriched
    {ns}:feed:{hash}     hash  per-feed ETag, Last-Modified, failures and next poll time

Storing and counting are Lua scripts, so each is one atomic step: an item is stored once however
often it arrives (``HSETNX``), and counted once however often its enrichment runs (the ``enriched``
field is checked and set in the same step as the counts). That is what makes every task safe to
retry or redeliver. The sweeper takes stale ids and re-stamps them in one step too, so two sweeps
(two beats, a retried task) never queue the same item twice in one visibility timeout. Scripts build keys from the namespace: this targets one Redis (or a primary),
not Redis Cluster.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, cast

import redis

from apps.sentiment.items import NewsItem
from core.redis_client import NamespacedStore
from domains.sentiment import LABELS

_INGEST = """
if redis.call('HSETNX', KEYS[1], 'data', ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
  redis.call('HINCRBY', KEYS[3], 'accepted', 1)
  return 1
end
redis.call('HINCRBY', KEYS[3], 'duplicates', 1)
return 0
"""

_COMMIT = """
if redis.call('HEXISTS', KEYS[1], 'data') == 0 then
  redis.call('ZREM', KEYS[2], ARGV[2])
  return -1
end
if redis.call('HEXISTS', KEYS[1], 'enriched') == 1 then
  redis.call('ZREM', KEYS[2], ARGV[2])
  return 0
end
redis.call('HSET', KEYS[1], 'enriched', ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[3], 'enriched', 1)
for i = 7, #ARGV do
  local scope = ARGV[i]
  local bk = ARGV[1] .. ':bk:' .. scope
  redis.call('HINCRBY', bk, ARGV[4] .. ':n', 1)
  redis.call('HINCRBY', bk, ARGV[4] .. ':' .. ARGV[5], 1)
  redis.call('ZADD', ARGV[1] .. ':ix:' .. scope, ARGV[6], ARGV[2])
  local prev = redis.call('ZSCORE', KEYS[4], scope)
  if (not prev) or tonumber(prev) < tonumber(ARGV[6]) then
    redis.call('ZADD', KEYS[4], ARGV[6], scope)
  end
end
return 1
"""

# Take up to ARGV[3] members of the zset KEYS[1] scored at or below ARGV[1], re-scoring each ARGV[2]
# in the same step, so two takers never take the same member (stale pending items, due outbox entries).
TAKE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member)
end
return due
"""


@dataclass
class BucketCounts:
    t: int  # bucket start, epoch seconds
    n: int
    counts: dict[str, int]

    @property
    def negative_share(self) -> float | None:
        return self.counts.get("negative", 0) / self.n if self.n else None


def scopes_for(entities: list[str], topics: list[str]) -> list[str]:
    return ["all", *(f"entity:{e}" for e in entities), *(f"topic:{t}" for t in topics)]


class NewsStore(NamespacedStore):
    def __init__(self, client: redis.Redis, namespace: str = "sentiment", *, item_ttl_s: int = 90 * 86400) -> None:
        super().__init__(client, namespace)
        self.item_ttl_s = item_ttl_s
        self._ingest = client.register_script(_INGEST)
        self._commit = client.register_script(_COMMIT)
        self._take_stale = client.register_script(TAKE_DUE)

    # ---- items -------------------------------------------------------------------------------

    def add(self, items: list[NewsItem]) -> list[bool]:
        """Store each item unless its id is already there; True for the new ones."""
        if not items:
            return []
        pipe = self.r.pipeline(transaction=False)
        for item in items:
            self._ingest(
                keys=[self.key("item", item.id), self.key("pending"), self.key("stats")],
                args=[json.dumps(item.to_dict()), item.id, item.ingested_at],
                client=pipe,
            )
            # kept item_ttl_s from its last sighting; the trend buckets keep the counts
            pipe.expire(self.key("item", item.id), self.item_ttl_s)
        return [bool(x) for x in pipe.execute()[0::2]]

    def count_rejected(self, n: int) -> None:
        if n:
            self.r.hincrby(self.key("stats"), "rejected", n)

    def get(self, ids: list[str]) -> list[dict[str, Any] | None]:
        """Each id's record: the item's fields, plus ``enrichment`` once enriched; None if unknown."""
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hmget(self.key("item", i), "data", "enriched")
        out: list[dict[str, Any] | None] = []
        for data, enriched in pipe.execute():
            if data is None:
                out.append(None)
                continue
            record = json.loads(data)
            record["enrichment"] = json.loads(enriched) if enriched else None
            out.append(record)
        return out

    def commit_enrichment(self, item: NewsItem, enrichment: dict[str, Any], bucket_s: int) -> int:
        """Save an item's enrichment and count it in its buckets, once: 1 counted now, 0 already
        counted before, -1 the item is unknown."""
        label = str(enrichment["label"])
        bucket = int(item.published_at // bucket_s * bucket_s)
        scopes = scopes_for(enrichment.get("entities_keys", []), enrichment.get("topic_keys", []))
        return int(
            self._commit(
                keys=[self.key("item", item.id), self.key("pending"), self.key("stats"), self.key("active")],
                args=[self.ns, item.id, json.dumps(enrichment), bucket, label, item.published_at, *scopes],
            )
        )

    def pending(self, older_than_s: float = 0.0, limit: int = 10_000, now: float | None = None) -> list[str]:
        """Ids stored but not enriched, last queued at least ``older_than_s`` ago, oldest first."""
        ceiling = (time.time() if now is None else now) - older_than_s
        return cast(list[str], self.r.zrangebyscore(self.key("pending"), "-inf", ceiling, start=0, num=limit))

    def take_stale(self, older_than_s: float, limit: int = 10_000, now: float | None = None) -> list[str]:
        """Ids pending (not enriched) since they were last queued at least ``older_than_s`` ago, oldest
        first, stamped as queued ``now`` in the same step: the caller queues them again, and nobody
        takes them again before another ``older_than_s`` has passed."""
        now = time.time() if now is None else now
        return cast(list[str], self._take_stale(keys=[self.key("pending")], args=[now - older_than_s, now, limit]))

    def pending_count(self) -> int:
        return int(self.r.zcard(self.key("pending")))

    def stats(self) -> dict[str, int]:
        raw = cast(dict[str, str], self.r.hgetall(self.key("stats")))
        base = {"accepted": 0, "duplicates": 0, "rejected": 0, "enriched": 0}
        return {**base, **{k: int(v) for k, v in raw.items()}, "pending": self.pending_count()}

    # ---- buckets -----------------------------------------------------------------------------

    def buckets(self, scope: str, start: float, end: float, bucket_s: int) -> list[BucketCounts]:
        """Counts of every bucket starting in [start, end), empty ones included, oldest first."""
        first = int(start // bucket_s * bucket_s)
        starts = list(range(first, int(end), bucket_s))
        if not starts:
            return []
        fields = [f"{t}:{name}" for t in starts for name in ("n", *LABELS)]
        values = self.r.hmget(self.key("bk", scope), fields)
        out, width = [], 1 + len(LABELS)
        for i, t in enumerate(starts):
            row = [int(v) if v else 0 for v in values[i * width : (i + 1) * width]]
            out.append(BucketCounts(t=t, n=row[0], counts=dict(zip(LABELS, row[1:], strict=True))))
        return out

    def active_scopes(self, since: float) -> list[str]:
        return cast(list[str], self.r.zrangebyscore(self.key("active"), since, "+inf"))

    def scope_items(self, scope: str, start: float, end: float, limit: int = 50) -> list[str]:
        """Ids of a scope's items published in [start, end), newest first."""
        return cast(list[str], self.r.zrevrangebyscore(self.key("ix", scope), f"({end}", start, start=0, num=limit))

    def trim(self, scope: str, before: float, bucket_s: int) -> None:
        """Drop a scope's buckets and index entries older than ``before`` (retention)."""
        keys = cast(list[str], self.r.hkeys(self.key("bk", scope)))
        fields = [f for f in keys if int(f.split(":", 1)[0]) < before - bucket_s]
        if fields:
            self.r.hdel(self.key("bk", scope), *fields)
        self.r.zremrangebyscore(self.key("ix", scope), "-inf", f"({before}")

    # ---- feeds -------------------------------------------------------------------------------

    def feed_key(self, url: str) -> str:
        return self.key("feed", hashlib.sha256(url.encode()).hexdigest()[:16])

    def feed_state(self, url: str) -> dict[str, str]:
        return cast(dict[str, str], self.r.hgetall(self.feed_key(url)))

    def lock_feed(self, url: str, ttl_s: float) -> bool:
        return bool(self.r.set(self.feed_key(url) + ":lock", "1", nx=True, px=int(ttl_s * 1000)))

    def unlock_feed(self, url: str) -> None:
        self.r.delete(self.feed_key(url) + ":lock")

    def set_feed_state(self, url: str, **fields: str | float | int) -> None:
        self.r.hset(self.feed_key(url), mapping={"url": url, **{k: str(v) for k, v in fields.items()}})
