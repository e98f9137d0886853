"""Trend series over the buckets, and the chart of one with its alerts marked."""

from __future__ import annotations

import io
import math
import warnings
from datetime import UTC, datetime
from typing import Any

from apps.sentiment.alerts import Alert
from apps.sentiment.store import NewsStore
from core.errors import InvalidRequestError
from domains.sentiment import LABELS

MAX_POINTS = 500
MAX_LABELLED_ALERTS = 6
SEVERITY_COLOURS = {"critical": "#c0392b", "warning": "#e67e22"}


def scope_of(topic: str | None, entity: str | None) -> str:
    if topic and entity:
        raise InvalidRequestError("give topic or entity, not both")
    if topic:
        return f"topic:{topic.strip()}"
    if entity:
        return f"entity:{entity.strip()}"
    return "all"


def pick_step(window_s: int, bucket_s: int, step_s: int | None) -> int:
    if step_s is not None:
        if step_s % bucket_s:
            raise InvalidRequestError(f"step must be a multiple of the bucket ({bucket_s}s)")
        if window_s // step_s > MAX_POINTS:
            raise InvalidRequestError(f"window/step gives more than {MAX_POINTS} points; use a larger step")
        return step_s
    buckets_per_point = max(1, math.ceil(window_s / bucket_s / 120))
    return bucket_s * buckets_per_point


def series(store: NewsStore, scope: str, end: float, window_s: int, bucket_s: int, step_s: int) -> list[dict[str, Any]]:
    """Points [t, n, per-label counts, negative_share] of ``step_s`` each, covering the window up to ``end``."""
    last = math.floor(end / step_s) * step_s + step_s
    first = last - math.ceil(window_s / step_s) * step_s
    buckets = store.buckets(scope, first, last, bucket_s)
    per = step_s // bucket_s
    points = []
    for i in range(0, len(buckets), per):
        part = buckets[i : i + per]
        n = sum(b.n for b in part)
        counts = {label: sum(b.counts[label] for b in part) for label in LABELS}
        points.append(
            {"t": part[0].t, "n": n, **counts, "negative_share": round(counts["negative"] / n, 4) if n else None}
        )
    return points


def chart_png(points: list[dict[str, Any]], alerts: list[Alert], title: str) -> bytes:
    """Items per step stacked by label (bars), the negative share (dots, left out where no items),
    and each alert a dashed vertical line in its severity colour, labelled with its scope."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    times = [float(mdates.date2num(datetime.fromtimestamp(p["t"], UTC))) for p in points]
    width = (points[1]["t"] - points[0]["t"]) / 86400 if len(points) > 1 else 0.01
    fig, ax_n = plt.subplots(figsize=(10, 4.2), dpi=100)
    try:
        bottom = [0] * len(points)
        for label, colour in (("negative", "#e74c3c"), ("neutral", "#bdc3c7"), ("positive", "#27ae60")):
            heights = [p[label] for p in points]
            ax_n.bar(times, heights, width=width, bottom=bottom, color=colour, label=label, align="edge", alpha=0.75)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ax_n.set_ylabel("items per step")
        ax_n.set_ylim(0, max([*bottom, 1]) * 1.35)
        ax_share = ax_n.twinx()
        shown = [
            (t, p["negative_share"]) for t, p in zip(times, points, strict=True) if p["negative_share"] is not None
        ]
        if shown:
            ax_share.scatter([t for t, _ in shown], [s for _, s in shown], color="#2c3e50", s=12, zorder=3,
                             label="negative share")  # fmt: skip
        ax_share.set_ylim(0, 1.35)
        ax_share.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        ax_share.set_ylabel("negative share (dots)")
        for alert in alerts:
            at = float(mdates.date2num(datetime.fromtimestamp(alert.fired_at, UTC)))
            colour = SEVERITY_COLOURS.get(alert.severity, "#8e44ad")
            ax_share.axvline(at, color=colour, linestyle="--", linewidth=1.5, zorder=2,
                             label=f"alert: {alert.severity}")  # fmt: skip
            if len(alerts) > MAX_LABELLED_ALERTS:
                continue  # too many to label: the legend names the colours
            ax_share.annotate(f"{alert.scope} ({alert.severity})", (at, 1.3), fontsize=8, color=colour, ha="right",
                              va="top", xytext=(-3, 0), textcoords="offset points",
                              bbox={"boxstyle": "round", "fc": "white", "ec": colour, "alpha": 0.9})  # fmt: skip
        handles, labels = ax_n.get_legend_handles_labels()
        extra = dict(zip(*reversed(ax_share.get_legend_handles_labels()), strict=True))  # one entry per label
        ax_n.legend([*handles, *extra.values()], [*labels, *extra], loc="upper left", fontsize=8, ncol=6, frameon=False)
        ax_n.set_title(f"{title}  ({len(alerts)} alert{'s' if len(alerts) != 1 else ''})")
        locator = mdates.AutoDateLocator()
        ax_n.xaxis.set_major_locator(locator)
        ax_n.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        out = io.BytesIO()
        with warnings.catch_warnings():  # an entity or topic in a script the font lacks draws as boxes, not an error
            warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
            fig.tight_layout()
            fig.savefig(out, format="png")
        return out.getvalue()
    finally:
        plt.close(fig)
