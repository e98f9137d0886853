"""``domainllm sentiment ...``: push a file of news in, or replay dated headlines through the pipeline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from apps.sentiment.alerts import Alert
from apps.sentiment.service import SentimentContext
from core.config import PROJECT_ROOT
from core.errors import DomainLLMError
from domainllm.common import console, err_console, fail, services

app = typer.Typer(help="The financial news sentiment monitor.", no_args_is_help=True)
DAILY_CONFIG = PROJECT_ROOT / "apps" / "sentiment" / "rules" / "replay_daily.yaml"


def _context(namespace: str | None = None, config: Path | None = None) -> SentimentContext:
    return services().sentiment_context(namespace, str(config) if config else None)


@app.command()
def ingest(file: Annotated[Path, typer.Argument(help="A .jsonl, .json or .csv file of news items.")]) -> None:
    """Store the file's items (each once) and queue them for the enrichment workers."""
    try:
        result = _context().ingest_file(file)
    except DomainLLMError as exc:
        fail(exc)
    for r in result.rejected:
        err_console.print(f"[yellow]skipped {r.where}:[/] {r.reason}")
    console.print(
        f"{file.name}: {result.accepted} new, {result.duplicates} already stored, {len(result.rejected)} skipped"
    )


def _print_alert(alert: Alert) -> None:
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(alert.fired_at))
    colour = "red" if alert.severity == "critical" else "yellow"
    console.print(f"[{colour}]{when} ALERT[/] {alert.message}")
    for item in alert.items[:3]:
        console.print(f"    - {item['title']}", highlight=False)


@app.command()
def replay(
    file: Annotated[
        Path, typer.Argument(help="Dated headlines: the gold news .tsv, or .jsonl/.csv with published_at.")
    ],
    speed: Annotated[
        float, typer.Option(help="Replay seconds per wall second; 0 = as fast as the pipeline goes.")
    ] = 0.0,
    limit: Annotated[int | None, typer.Option(help="Only the first N headlines (in time order).")] = None,
    since: Annotated[str | None, typer.Option(help="Only headlines from this date (YYYY-MM-DD).")] = None,
    config: Annotated[
        Path | None, typer.Option(help="Rules (default: daily rules for .tsv, else the live ones).")
    ] = None,
    namespace: Annotated[str | None, typer.Option(help="Redis namespace (default: a fresh replay-<time>).")] = None,
    chart: Annotated[Path | None, typer.Option(help="Where to draw the chart (PNG).")] = None,
    inline: Annotated[bool, typer.Option(help="Enrich in this process instead of by the Celery worker.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the worker per chunk.")] = 600.0,
) -> None:
    """Stream dated headlines in time order through the pipeline (the worker enriches and delivers),
    print the alerts raised and draw the trend chart with them marked."""
    from apps.sentiment.items import parse_time
    from domainllm.sentiment_replay import draw, load_items
    from domainllm.sentiment_replay import replay as run_replay

    ns = namespace or f"replay-{time.strftime('%Y%m%d-%H%M%S')}"
    rules = config or (DAILY_CONFIG if file.suffix.lower() == ".tsv" else None)
    try:
        ctx = _context(ns, rules)
        items, skipped = load_items(file, ctx)
        if since:
            items = [i for i in items if i.published_at >= parse_time(since)]
        items = items[:limit] if limit else items
        enrich_inline = None
        if inline:
            from apps.sentiment.enrich import enrich_ids

            services().engine.warm_up()
            enricher = services().enricher(ctx)

            def enrich_inline(ids: list[str]) -> object:
                return enrich_ids(ctx.store, enricher, ids)

        console.print(f"replaying {len(items)} headlines ({skipped} skipped) into namespace {ns!r}, "
                      f"bucket {ctx.config.bucket_s}s, rules: {', '.join(r.name for r in ctx.config.rules)}")  # fmt: skip
        report = run_replay(ctx, items, speed=speed, enrich_inline=enrich_inline, timeout_s=timeout,
                            on_alert=_print_alert)  # fmt: skip
        report.skipped = skipped
        out = chart or PROJECT_ROOT / "data" / "runtime" / f"{ns}.png"
        draw(ctx, report, out)
    except DomainLLMError as exc:
        fail(exc)
    stats = ctx.store.stats()
    console.print(
        f"done in {report.seconds:.1f}s: {stats['enriched']} enriched, {len(report.alerts)} alerts; chart: {out}"
    )
