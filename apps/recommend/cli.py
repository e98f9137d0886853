"""``domainllm recommend ...``: load catalogue and event files, ask for a list.

These talk to the same Redis as the server (DOMAINLLM_REDIS_URL, or the embedded one from
``domainllm redis``), so a running server sees what they load on its next request. The offline
commands (``train-ranker``, ``sample-data``) run finetune/ code and live in ``domainllm/recommend.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import redis
import typer
from rich.console import Console

from apps.recommend.service import RecommendService
from apps.settings import get_settings
from core.config import PROJECT_ROOT
from core.errors import DomainLLMError
from core.interface import Engine
from core.redis_client import connect
from domains.recommend.records import format_of, parse_events_text, read_text

app = typer.Typer(help="Storefront recommendations.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)
SAMPLES = PROJECT_ROOT / "data" / "samples" / "recommend"


def _fail(exc: Exception) -> None:
    err.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=2)


def open_service(engine: Engine | None = None, wait_s: float = 0.0) -> RecommendService:
    """The service on the settings' Redis (waiting up to ``wait_s`` for it), embedding with MiniLM in
    this process (no LLM to load for a catalogue); ``engine``: a warmed engine for the LLM score."""
    from core.embeddings import MiniLMEmbedder

    core = get_settings()
    embedder = MiniLMEmbedder(core.embedder_path)
    client = connect(core.effective_redis_url)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.ping()
            break
        except redis.RedisError as exc:
            if time.monotonic() >= deadline:
                _fail(
                    DomainLLMError(f"cannot reach Redis at {core.effective_redis_url} ({exc}); run `domainllm redis`")
                )
            time.sleep(0.5)
    return RecommendService(core.recommend, client, embedder.embed, lambda: engine)


def _report(name: str, result: dict[str, Any]) -> None:
    for e in result.get("errors", []):
        err.print(f"[yellow]skipped {e['where']}:[/] {e['reason']}")
    counts = ", ".join(f"{k} {v}" for k, v in result.items() if isinstance(v, int))
    console.print(f"{name}: {counts}")


@app.command()
def load(
    catalogue: Annotated[Path | None, typer.Option(help="Items file (.csv, .jsonl, .json).")] = None,
    events: Annotated[Path | None, typer.Option(help="Events file (.csv, .jsonl, .json).")] = None,
    samples: Annotated[bool, typer.Option(help="Load data/samples/recommend (catalogue and events).")] = False,
    shift_to_now: Annotated[
        bool, typer.Option(help="Move event times so the last one is now (keeps a sample log 'recent').")
    ] = False,
    if_empty: Annotated[bool, typer.Option(help="Do nothing when the catalogue already has items.")] = False,
    wait_s: Annotated[
        float, typer.Option(help="Wait this long for Redis to come up (make run starts it alongside).")
    ] = 0.0,
) -> None:
    """Upsert items and record events from files; bad rows are reported and skipped."""
    if samples:
        catalogue, events = catalogue or SAMPLES / "catalogue.jsonl", events or SAMPLES / "events.jsonl"
    if catalogue is None and events is None:
        _fail(DomainLLMError("name --catalogue and/or --events, or --samples"))
    service = open_service(wait_s=wait_s)
    try:
        if if_empty and len(service.catalogue.sync()):
            console.print("catalogue already loaded; nothing to do")
            return
        if catalogue is not None:
            with console.status(f"embedding {catalogue.name}"):
                _report(catalogue.name, service.upsert_items_text(read_text(catalogue), format_of(catalogue)))
        if events is not None:
            text, fmt = read_text(events), format_of(events)
            if shift_to_now:
                text, fmt = _shifted(text, fmt)
            _report(events.name, service.add_events_text(text, fmt))
    except DomainLLMError as exc:
        _fail(exc)


def _shifted(text: str, fmt: str) -> tuple[str, str]:
    parsed, _ = parse_events_text(text, fmt, now=float("inf"))
    if not parsed:
        return text, fmt
    shift = time.time() - max(e.ts for e in parsed)
    lines = [json.dumps({**json.loads(e.to_json()), "ts": e.ts + shift}) for e in parsed]
    return "\n".join(lines), "jsonl"


@app.command()
def show(
    user: Annotated[str, typer.Argument(help="User id.")],
    k: Annotated[int, typer.Option(help="How many items.")] = 10,
    context_item: Annotated[str | None, typer.Option(help="The page's item.")] = None,
    category: Annotated[str | None, typer.Option(help="Only this category.")] = None,
    llm: Annotated[bool, typer.Option(help="Load the model and use the LLM score.")] = False,
) -> None:
    """Print a user's recommendations (counted and marked shown like any request)."""
    engine = None
    if llm:
        from core.engine import LocalEngine

        engine = LocalEngine(get_settings())
        engine.warm_up()
    try:
        result = open_service(engine).recommend(user, k=k, context_item=context_item, category=category)
    except DomainLLMError as exc:
        _fail(exc)
    finally:
        if engine is not None:
            engine.close()
    console.print_json(json.dumps(result))
