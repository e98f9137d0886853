"""Replay dated headlines in time order through the real pipeline: items are stored and queued like
any others, the Celery worker enriches them (and delivers alerts), and the monitor is evaluated at
each bucket boundary of the replay's own clock (beat runs on the wall clock, so the replay drives
the monitor itself). Works in its own namespace, so the live monitor's data is never touched.

Items are handed on a chunk at a time and the monitor then steps through the chunk's buckets in
order: the rules only look back from their clock, so this gives the alerts a one-by-one replay
would, with far fewer round trips. ``speed`` paces the clock (replay seconds per wall second).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apps.sentiment.alerts import Alert
from apps.sentiment.ingest import read_records
from apps.sentiment.items import NewsItem, normalize_item
from apps.sentiment.service import SentimentContext
from apps.sentiment.trends import chart_png, pick_step, series
from core.errors import DomainLLMError, InvalidRequestError
from domains.sentiment import read_gold_news

CHUNK = 256


@dataclass
class ReplayReport:
    namespace: str
    items: int
    skipped: int
    first: float
    last: float
    alerts: list[Alert] = field(default_factory=list)
    seconds: float = 0.0
    chart: Path | None = None


def _gold_tsv(path: Path) -> list[tuple[str, Any]]:
    """The gold commodity news (``domains.sentiment.read_gold_news``) as records to normalise."""
    return [
        (f"line {h.line}", {"title": h.title, "url": h.url, "source": "gold-news", "published_at": h.published_at})
        for h in read_gold_news(path)
    ]


def load_items(path: Path, ctx: SentimentContext) -> tuple[list[NewsItem], int]:
    """Items of a .tsv (gold news), .jsonl, .json or .csv file sorted by time; and how many were skipped."""
    records = _gold_tsv(path) if path.suffix.lower() == ".tsv" else read_records(path, ctx.settings.max_file_bytes)
    items, skipped = [], 0
    for _, raw in records:
        try:
            items.append(normalize_item(raw, via="replay", default_source=path.stem,
                                        max_title_chars=ctx.settings.max_title_chars,
                                        max_body_chars=ctx.settings.max_item_body_chars))  # fmt: skip
        except (DomainLLMError, TypeError):
            skipped += 1
    items.sort(key=lambda i: i.published_at)
    return items, skipped


def wait_enriched(ctx: SentimentContext, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while ctx.store.pending_count():
        if time.monotonic() > deadline:
            raise DomainLLMError(
                f"{ctx.store.pending_count()} items still not enriched after {timeout_s:.0f}s: is a worker "
                "consuming the enrich queue? (celery -A workers.celery_app worker -Q ingest,enrich,alerts)"
            )
        time.sleep(0.1)


def replay(
    ctx: SentimentContext,
    items: list[NewsItem],
    *,
    speed: float = 0.0,
    enrich_inline: Callable[[list[str]], object] | None = None,
    timeout_s: float = 600.0,
    on_alert: Callable[[Alert], None] | None = None,
) -> ReplayReport:
    """Push ``items`` (sorted) chunk by chunk, wait for their enrichment, evaluate the monitor at each
    bucket end in order. ``enrich_inline``: enrich in this process instead of by the worker."""
    if not items:
        raise InvalidRequestError("nothing to replay: no dated headlines were read")
    started = time.monotonic()
    bucket = ctx.config.bucket_s
    report = ReplayReport(ctx.namespace, len(items), 0, items[0].published_at, items[-1].published_at)
    clock0 = items[0].published_at
    for i in range(0, len(items), CHUNK):
        chunk = items[i : i + CHUNK]
        result = ctx.store.add(chunk)
        new_ids = [item.id for item, new in zip(chunk, result, strict=True) if new]
        if enrich_inline is not None:
            enrich_inline(new_ids)
        elif ctx.dispatcher is not None:
            ctx.dispatcher.enrich(new_ids, namespace=ctx.namespace, config=ctx.config_arg)
        wait_enriched(ctx, timeout_s)
        ticks = sorted({math.floor(item.published_at / bucket) * bucket + bucket for item in chunk})
        for tick in ticks:
            if speed > 0:
                due = started + (tick - clock0) / speed
                time.sleep(max(0.0, due - time.monotonic()))
            for alert in ctx.monitor(now=tick - 0.001):
                report.alerts.append(alert)
                if on_alert is not None:
                    on_alert(alert)
    report.seconds = time.monotonic() - started
    return report


def draw(ctx: SentimentContext, report: ReplayReport, out: Path, scope: str = "all") -> Path:
    """The replay's trend over its whole span, every alert marked (with its scope)."""
    window = int(report.last - report.first) + ctx.config.bucket_s
    step = pick_step(window, ctx.config.bucket_s, None)
    points = series(ctx.store, scope, report.last, window, ctx.config.bucket_s, step)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(chart_png(points, report.alerts, f"replay {ctx.namespace}: {scope}"))
    report.chart = out
    return out
