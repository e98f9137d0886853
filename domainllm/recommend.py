"""``domainllm recommend ...``: load catalogue and event files, ask for a list, train the ranker.

These talk to the same Redis as the server (DOMAINLLM_REDIS_URL, or the embedded one from
``domainllm redis``) through the services of the composition root, so a running server sees what
they load on its next request. Embeddings run on the engine's thread without loading the base
model; only ``show --llm`` and ``train-ranker --llm`` load it.

    domainllm recommend load / show       the served recommender (apps/recommend)
    domainllm recommend train-ranker      fit the blenders on the logged events (finetune/ranker.py)
    domainllm recommend sample-data       rewrite data/samples/recommend (finetune/samples/recommend.py)
    domainllm eval recommend-ranking      the MovieLens ranking evaluation (finetune/evals/recommend.py)
    domainllm eval recommend-games        the Amazon Games ranking evaluation (finetune/evals/games.py)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import redis
import typer

from apps.recommend.service import RecommendService
from core.config import PROJECT_ROOT
from core.errors import DomainLLMError
from domainllm.common import console, err_console, fail, services
from domains.recommend.records import Event, format_of, parse_events_text, read_events, read_text
from domains.recommend.serving import MOVIELENS_ADAPTER

app = typer.Typer(help="Storefront recommendations.", no_args_is_help=True)
SAMPLES = PROJECT_ROOT / "data" / "samples" / "recommend"


def _service(wait_s: float = 0.0) -> RecommendService:
    """The recommend service, once its Redis answers (waiting up to ``wait_s``)."""
    built = services()
    deadline = time.monotonic() + wait_s
    while True:
        try:
            built.redis.raw.ping()
            return built.recommend
        except redis.RedisError as exc:
            if time.monotonic() >= deadline:
                url = built.settings.effective_redis_url
                fail(DomainLLMError(f"cannot reach Redis at {url} ({exc}); run `domainllm redis`"))
            time.sleep(0.5)


def _report(name: str, result: dict[str, Any]) -> None:
    for e in result.get("errors", []):
        err_console.print(f"[yellow]skipped {e['where']}:[/] {e['reason']}")
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
        fail(DomainLLMError("name --catalogue and/or --events, or --samples"))
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
        fail(exc)


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
    service = _service()
    try:
        if llm:
            with console.status("loading the model"):
                services().engine.warm_up()
        result = service.recommend(user, k=k, context_item=context_item, category=category)
    except DomainLLMError as exc:
        fail(exc)
    console.print_json(json.dumps(result))


@app.command("train-ranker")
def train_ranker(
    events: Annotated[Path | None, typer.Option(help="Events file; default: the events logged in Redis.")] = None,
    cut: Annotated[float, typer.Option(help="Time split: events before this quantile are history.")] = 0.8,
    llm: Annotated[bool, typer.Option(help="Score the shortlists with the LLM (needed for an LLM weight).")] = True,
    out: Annotated[Path | None, typer.Option(help="Where to save (default DOMAINLLM_RECOMMEND_RANKER_PATH).")] = None,
) -> None:
    """Fit the blenders (logistic regression) on logged events and save them as JSON (no pickle)."""
    from domains.recommend.pipeline import PipelineConfig
    from domains.recommend.scoring import LLMScorer
    from finetune.ranker import RankerData, fit_rankers, training_rows

    service = _service()
    built = services()
    settings = built.settings.recommend
    data = RankerData(
        pipeline=PipelineConfig(settings.candidates_per_source, settings.llm_candidates),
        half_life_s=settings.popularity_half_life_s,
        covis_window=settings.covis_window,
        history_len=settings.history_len,
    )
    try:
        logged: list[Event]
        if events is not None:
            logged, bad = read_events(events, now=float("inf"))
            for b in bad[:20]:
                err_console.print(f"[yellow]skipped {b.where}:[/] {b.reason}")
        else:
            logged = service.signals.logged_events()
        scorer = None
        if llm:
            with console.status("loading the model"):
                built.engine.warm_up()
            scorer = LLMScorer(built.engine, settings.adapter, history=settings.prompt_history)
            console.print(f"LLM scores from {scorer.model()!r}")
        with console.status(f"building training rows from {len(logged)} events"):
            rows = training_rows(logged, service.catalogue.sync(), data, scorer, cut)
        rankers, report = fit_rankers(rows, scorer.model() if scorer else None)
    except DomainLLMError as exc:
        fail(exc)
    path = out or settings.ranker_path
    rankers.final.meta["report"] = report
    if out is None:  # the served ranker: every replica reloads it
        service.save_rankers(rankers)
    else:
        rankers.save(path)
    console.print_json(json.dumps(report))
    console.print(f"saved {path}")


@app.command("sample-data")
def sample_data() -> None:
    """Rewrite data/samples/recommend from its deterministic generator."""
    from finetune.samples.recommend import main

    c, e = main()
    console.print(f"wrote {c} and {e}")


def eval_ranking(users: int | None, llm_candidates: int, out: Path, adapter: str = MOVIELENS_ADAPTER) -> None:
    """``domainllm eval recommend-ranking``: every system side by side; prints the tables, writes JSON."""
    from finetune.evals.recommend import evaluate, print_report

    built = services()
    try:
        with console.status("loading the engine"):
            built.engine.warm_up()
        report = evaluate(
            built.settings,
            out_dir=out,
            users=users,
            llm_candidates=llm_candidates,
            adapter=adapter,
            engine=built.engine,
        )
    except DomainLLMError as exc:
        fail(exc)
    print_report(report, console)


def eval_games(
    out: Path,
    *,
    report_users: int = 5000,
    llm_users: int = 300,
    shortlist: int = 20,
    adapter: str | None = None,
    sasrec_minutes: float = 45.0,
) -> None:
    """``domainllm eval recommend-games``: Games-6k, every system side by side on the same report
    users, full ranking and LLMRank's 20 candidates, the LLM's contribution with its 95% interval;
    prints the tables, writes ``quality_games.json``."""
    from finetune.evals.games import GAMES_ADAPTER, GamesRun, evaluate, print_report

    built = services()
    try:
        run = GamesRun(
            report_users=report_users, llm_users=llm_users, shortlist=shortlist, sasrec_minutes=sasrec_minutes
        )
        with console.status("loading the engine"):
            built.engine.warm_up()
        report = evaluate(built.settings, engine=built.engine, run=run, adapter=adapter or GAMES_ADAPTER, out_dir=out)
    except (DomainLLMError, ValueError) as exc:
        fail(exc)
    print_report(report, console)
    console.print(f"report: {out}/quality_games.json")
