"""What every ``domainllm`` command shares: the consoles, one-line failures, and the services from
the composition root (built once per process, the same function the API and the worker call)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import NoReturn

import typer
from rich.console import Console
from rich.progress import TaskID

from apps.composition import Services, build_services
from apps.settings import batch_settings, get_settings
from core.errors import DomainLLMError

console = Console()
err_console = Console(stderr=True)


def fail(exc: Exception | str) -> NoReturn:
    """A bad argument or file: one line naming the problem, exit code 2."""
    err_console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=2)


def fail_run(what: str, exc: Exception) -> NoReturn:
    """A failure inside a long job: one line naming the problem (the traceback only with -v)."""
    logging.getLogger(__name__).debug("%s failed", what, exc_info=exc)
    message = exc.message if isinstance(exc, DomainLLMError) else f"{type(exc).__name__}: {exc}"
    err_console.print(f"[bold red]error:[/] {what} failed: {message}")
    raise typer.Exit(code=1)


@lru_cache(maxsize=1)
def services() -> Services:
    """This process's services; the engine is not loaded until a command warms it up."""
    # a command's engine serves only that command's batch work (training and its gate, evaluations,
    # loading a catalogue): the API's 25 s per request would abort it on a busy machine; `domainllm
    # serve` does not come through here
    return build_services(batch_settings(get_settings()))


@contextmanager
def progress_bars() -> Iterator[None]:
    """A bar per phase for whatever ``finetune.progress.track`` reports inside the block."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from finetune.progress import reporting

    bars: dict[str, TaskID] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:

        def report(phase: str, done: int, total: int) -> None:
            if phase not in bars:
                bars[phase] = progress.add_task(phase, total=total or None)
            progress.update(bars[phase], completed=done, total=total or None)

        with reporting(report):
            yield
