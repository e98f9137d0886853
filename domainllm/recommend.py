"""The recommender's offline commands: they run finetune/ code over the app's store, so they live
here, above both (apps/ and finetune/ never import each other).

    domainllm recommend train-ranker      fit the blenders on the logged events (finetune/ranker.py)
    domainllm recommend sample-data       rewrite data/samples/recommend (finetune/samples/recommend.py)
    domainllm eval recommend-ranking      the MovieLens ranking evaluation (finetune/evals/recommend.py)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from apps.recommend.cli import open_service
from apps.settings import get_settings
from core.errors import DomainLLMError
from domains.recommend.records import Event, read_events
from domains.recommend.serving import RANKING_ADAPTER

console = Console()
err = Console(stderr=True)


def _fail(exc: Exception) -> None:
    err.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=2)


def train_ranker(
    events: Annotated[Path | None, typer.Option(help="Events file; default: the events logged in Redis.")] = None,
    cut: Annotated[float, typer.Option(help="Time split: events before this quantile are history.")] = 0.8,
    llm: Annotated[bool, typer.Option(help="Score the shortlists with the LLM (needed for an LLM weight).")] = True,
    out: Annotated[Path | None, typer.Option(help="Where to save (default DOMAINLLM_RECOMMEND_RANKER_PATH).")] = None,
) -> None:
    """Fit the blenders (logistic regression) on logged events and save them as JSON (no pickle)."""
    from core.engine import LocalEngine
    from domains.recommend.pipeline import PipelineConfig
    from domains.recommend.scoring import LLMScorer
    from finetune.ranker import RankerData, fit_rankers, training_rows

    app_settings = get_settings()
    settings = app_settings.recommend
    service = open_service()
    data = RankerData(
        pipeline=PipelineConfig(settings.candidates_per_source, settings.llm_candidates),
        half_life_s=settings.popularity_half_life_s,
        covis_window=settings.covis_window,
        history_len=settings.history_len,
    )
    engine = None
    try:
        logged: list[Event]
        if events is not None:
            logged, bad = read_events(events, now=float("inf"))
            for b in bad[:20]:
                err.print(f"[yellow]skipped {b.where}:[/] {b.reason}")
        else:
            logged = service.signals.logged_events()
        scorer = None
        if llm:
            engine = LocalEngine(app_settings)
            with console.status("loading the model"):
                engine.warm_up()
            scorer = LLMScorer(engine, settings.adapter, history=settings.prompt_history)
            console.print(f"LLM scores from {scorer.model()!r}")
        with console.status(f"building training rows from {len(logged)} events"):
            rows = training_rows(logged, service.catalogue.sync(), data, scorer, cut)
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


def sample_data() -> None:
    """Rewrite data/samples/recommend from its deterministic generator."""
    from finetune.samples.recommend import main

    c, e = main()
    console.print(f"wrote {c} and {e}")


def eval_ranking(users: int | None, llm_candidates: int, out: Path, adapter: str = RANKING_ADAPTER) -> None:
    """The MovieLens ranking evaluation: every system side by side; prints the tables, writes JSON."""
    from finetune.evals.recommend import evaluate, print_report

    try:
        report = evaluate(get_settings(), out_dir=out, users=users, llm_candidates=llm_candidates, adapter=adapter)
    except DomainLLMError as exc:
        _fail(exc)
    print_report(report, console)


def register(app: typer.Typer) -> None:
    """Add the offline commands to the ``domainllm recommend`` group."""
    app.command("train-ranker")(train_ranker)
    app.command("sample-data")(sample_data)
