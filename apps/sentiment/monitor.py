"""Anomaly rules over the Redis-held buckets, run on beat (or by the replay at its own clock).

For each rule and each scope with items in the rule's window (an entity, a topic, or everything):

* ``zscore``: the window's negative share against the baseline's negative rate p (pooled over the
  baseline, smoothed toward ``prior_share`` by ``prior_weight`` pseudo-items, so a scope with no
  baseline yet is measured against the prior); z = (share - p) / max(sqrt(p(1-p)/n), min_std),
  the standard score of a share of n items at the baseline rate.
* ``ewma``: the window's negative count against an exponentially weighted mean and spread of the
  baseline slices' counts (a volume surge of negative news, however the share moved).

Both need ``min_items`` in the window and a negative share of at least ``min_negative_share``;
the score picks the severity. One run at a time per namespace (a Redis lock), and each (rule,
scope) fires at most once per cooldown (``AlertStore.fire``), so two beats never double-fire. An alert
is stored together with its deliveries' outbox entries, in one step: once it has fired, its
deliveries are bound to be queued, by ``on_alert`` at once or by beat's outbox drain.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from apps.sentiment.alerts import Alert, AlertStore, alert_id
from apps.sentiment.config import MonitorConfig, Rule
from apps.sentiment.store import BucketCounts, NewsStore

log = logging.getLogger(__name__)
LOCK_TTL_S = 120.0
ITEMS_PER_ALERT = 10


@dataclass
class Finding:
    rule: Rule
    scope: str
    score: float
    severity: str | None
    numbers: dict[str, float | int | None]
    window: tuple[float, float]


def _slices(buckets: list[BucketCounts], per_slice: int) -> list[tuple[int, int]]:
    """(n, negative) per run of ``per_slice`` buckets."""
    out = []
    for i in range(0, len(buckets), per_slice):
        part = buckets[i : i + per_slice]
        out.append((sum(b.n for b in part), sum(b.counts.get("negative", 0) for b in part)))
    return out


def evaluate(store: NewsStore, rule: Rule, scope: str, now: float, bucket_s: int) -> Finding | None:
    """The rule's numbers for one scope at ``now``, or None when the window has too few items."""
    end = math.floor(now / bucket_s) * bucket_s + bucket_s  # the current (partial) bucket included
    start = end - rule.window_s
    window = store.buckets(scope, start, end, bucket_s)
    n = sum(b.n for b in window)
    negative = sum(b.counts.get("negative", 0) for b in window)
    if n < rule.min_items:
        return None
    share = negative / n
    slices = _slices(store.buckets(scope, start - rule.baseline_s, start, bucket_s), rule.window_s // bucket_s)
    numbers: dict[str, float | int | None] = {
        "window_start": start,
        "window_end": end,
        "items": n,
        "negative": negative,
        "negative_share": round(share, 4),
        "baseline_items": sum(s[0] for s in slices),
    }
    if rule.kind == "zscore":
        base_n, base_neg = sum(c for c, _ in slices), sum(neg for _, neg in slices)
        # the baseline rate, pulled toward the prior by ``prior_weight`` pseudo-items so a thin
        # baseline (a new entity) neither fires on everything nor on nothing
        mean = (base_neg + rule.prior_share * rule.prior_weight) / (base_n + rule.prior_weight)
        std = math.sqrt(mean * (1 - mean) / n)  # the standard error of a share of n items at that rate
        score = (share - mean) / max(std, rule.min_std)
        numbers |= {"baseline_share": round(mean, 4), "std": round(std, 4), "z": round(score, 3)}
    else:
        mean, var = 0.0, 0.0
        for i, (_, neg) in enumerate(slices):
            if i == 0:
                mean = float(neg)
                continue
            diff = neg - mean
            mean += rule.alpha * diff
            var = (1 - rule.alpha) * (var + rule.alpha * diff * diff)
        spread = max(math.sqrt(var), math.sqrt(max(mean, 1.0)))
        score = (negative - mean) / spread
        numbers |= {"ewma_negative": round(mean, 3), "ewma_spread": round(spread, 3), "surge": round(score, 3)}
    severity = rule.level(score) if share >= rule.min_negative_share else None
    return Finding(rule, scope, score, severity, numbers, (start, end))


def _message(f: Finding) -> str:
    n = f.numbers
    what = f.scope.replace(":", " ", 1)
    base = f"{f.severity}: negative news surge on {what}: {n['negative']}/{n['items']} negative ({n['negative_share']:.0%})"
    if f.rule.kind == "zscore":
        return f"{base}, baseline {n['baseline_share']:.0%}, z={n['z']:.1f} ({f.rule.name})"
    return f"{base}, EWMA {n['ewma_negative']:.1f}, surge={n['surge']:.1f} ({f.rule.name})"


def _items_behind(store: NewsStore, f: Finding) -> list[dict[str, object]]:
    ids = store.scope_items(f.scope, f.window[0], f.window[1], limit=200)
    items = []
    for record in store.get(ids):
        if record and record.get("enrichment"):
            e = record["enrichment"]
            items.append({"id": record["id"], "title": record["title"], "url": record.get("url"),
                          "published_at": record["published_at"], "label": e["label"],
                          "negative": e["scores"].get("negative")})  # fmt: skip
    items.sort(key=lambda x: (x["label"] != "negative", -float(x["negative"] or 0)))
    return items[:ITEMS_PER_ALERT]


def run_monitor(
    store: NewsStore,
    alerts: AlertStore,
    config: MonitorConfig,
    now: float | None = None,
    on_alert: Callable[[Alert], None] | None = None,
    targets: Sequence[str] = (),
) -> list[Alert]:
    """Evaluate every rule on every active scope; store the alerts that fire, each with an outbox
    entry per delivery target in ``targets``, and hand them on.

    Returns the new alerts; an empty list also when another run holds the lock.
    """
    now = time.time() if now is None else now
    token = secrets.token_hex(8)
    if not alerts.acquire("monitor", token, LOCK_TTL_S):
        log.info("monitor: another run holds the lock; skipped")
        return []
    fired: list[Alert] = []
    try:
        longest = max((r.window_s for r in config.rules), default=0)
        scopes = store.active_scopes(now - longest - config.bucket_s)
        for rule in config.rules:
            for scope in scopes:
                if scope.split(":", 1)[0] not in rule.scopes:
                    continue
                finding = evaluate(store, rule, scope, now, config.bucket_s)
                if finding is None or finding.severity is None:
                    continue
                alert = Alert(
                    id=alert_id(rule.name, scope, now),
                    rule=rule.name,
                    kind=rule.kind,
                    scope=scope,
                    severity=finding.severity,
                    fired_at=now,
                    message=_message(finding),
                    numbers=finding.numbers,
                    items=_items_behind(store, finding),
                )
                if alerts.fire(alert, rule.cooldown_s, targets):
                    log.warning("ALERT %s %s", alert.id, alert.message)
                    fired.append(alert)
                    if on_alert is not None:
                        on_alert(alert)
    finally:
        alerts.release("monitor", token)
    return fired
