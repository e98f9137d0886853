"""``domainllm recommend ...``: load catalogue and event files, train the ranker, ask for a list.

These talk to the same Redis as the server (DOMAINLLM_REDIS_URL, or the embedded one from
``domainllm redis``), so a running server sees what they load on its next request.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import redis
import typer
from rich.console import Console

from apps.recommend.items import Event, format_of, parse_events_text, read_text
from apps.recommend.service import RecommendService, connect
from apps.recommend.settings import RANKING_ADAPTER, get_recommend_settings
from core.config import PROJECT_ROOT, get_settings
from core.errors import DomainLLMError

app = typer.Typer(help="Storefront recommendations.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)
SAMPLES = PROJECT_ROOT / "data" / "samples" / "recommend"


def _fail(exc: Exception) -> None:
    err.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=2)


def _service(engine: Any = None, wait_s: float = 0.0) -> RecommendService:
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
    return RecommendService(get_recommend_settings(), client, embedder.embed, lambda: engine)


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
    service = _service(wait_s=wait_s)
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


@app.command("train-ranker")
def train_ranker(
    events: Annotated[Path | None, typer.Option(help="Events file; default: the events logged in Redis.")] = None,
    cut: Annotated[float, typer.Option(help="Time split: events before this quantile are history.")] = 0.8,
    llm: Annotated[bool, typer.Option(help="Score the shortlists with the LLM (needed for an LLM weight).")] = True,
    out: Annotated[Path | None, typer.Option(help="Where to save (default DOMAINLLM_RECOMMEND_RANKER_PATH).")] = None,
) -> None:
    """Fit the blenders (logistic regression) on logged events and save them as JSON (no pickle)."""
    from apps.recommend.ranking import LLMScorer
    from apps.recommend.train import fit_rankers, training_rows
    from core.engine import LocalEngine

    settings = get_recommend_settings()
    service = _service()
    engine = None
    try:
        logged: list[Event]
        if events is not None:
            logged, bad = parse_events_text(read_text(events), format_of(events), now=float("inf"))
            for b in bad[:20]:
                err.print(f"[yellow]skipped {b.where}:[/] {b.reason}")
        else:
            logged = service.signals.logged_events()
        scorer = None
        if llm:
            engine = LocalEngine(get_settings())
            with console.status("loading the model"):
                engine.warm_up()
            scorer = LLMScorer(engine, settings.adapter)
            console.print(f"LLM scores from {scorer.model()!r}")
        with console.status(f"building training rows from {len(logged)} events"):
            rows = training_rows(logged, service.catalogue.sync(), settings, scorer, cut)
        rankers, report = fit_rankers(rows, scorer.model() if scorer else None)
    except DomainLLMError as exc:
        _fail(exc)
    finally:
        if engine is not None:
            engine.close()
    path = out or settings.ranker_path
    rankers.final.meta["report"] = report
    rankers.save(path)
    console.print_json(json.dumps(report))
    console.print(f"saved {path}")


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
        result = _service(engine).recommend(user, k=k, context_item=context_item, category=category)
    except DomainLLMError as exc:
        _fail(exc)
    finally:
        if engine is not None:
            engine.close()
    console.print_json(json.dumps(result))


@app.command("sample-data")
def sample_data() -> None:
    """Rewrite data/samples/recommend from its deterministic generator."""
    from apps.recommend.sample_data import main

    c, e = main()
    console.print(f"wrote {c} and {e}")


@app.command("eval-ranking")
def eval_ranking(
    users: Annotated[int | None, typer.Option(help="Evaluate a random subsample of this many users.")] = None,
    llm_candidates: Annotated[int, typer.Option(help="Shortlist size the LLM scores per user.")] = 50,
    out: Annotated[Path, typer.Option(help="Folder for the JSON report.")] = Path("bench/results"),
    adapter: Annotated[str, typer.Option(help="The adapter that scores the shortlist.")] = RANKING_ADAPTER,
) -> None:
    """The MovieLens ranking evaluation (same as `domainllm eval recommend-ranking`)."""
    from apps.recommend.evaluation import evaluate, print_report

    try:
        report = evaluate(get_settings(), out_dir=out, users=users, llm_candidates=llm_candidates, adapter=adapter)
    except DomainLLMError as exc:
        _fail(exc)
    print_report(report, console)
