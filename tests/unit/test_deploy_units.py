"""The systemd units in deploy/systemd: systemd itself accepts them (``systemd-analyze verify``, when
installed), every command they start is one this project has, they run the same processes on the same
queues as the Procfile, and their stop timeouts leave room for the graceful shutdowns they promise."""

from __future__ import annotations

import importlib
import shlex
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import typer.main
from celery import Celery
from celery.bin.celery import celery as celery_cli

from apps.sentiment import dispatch as names
from apps.sentiment.settings import SentimentSettings
from core.config import PROJECT_ROOT, Settings
from domainllm.cli import app as domainllm_app

pytestmark = pytest.mark.unit

UNITS = PROJECT_ROOT / "deploy" / "systemd"
INSTALL_ROOT = "/opt/domainllm"  # where the units expect the checkout (and its .venv)
ENV_FILE = "/etc/domainllm/env"
PROJECT_UNITS = ["domainllm-api@.service", "domainllm-worker.service", "domainllm-trainer.service",
                 "domainllm-beat.service"]  # fmt: skip


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values]}}: a key may repeat (ExecStartPre=, Environment=), so each keeps a list."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], defaultdict(list))
            continue
        assert current is not None, f"{path.name}: {line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not key=value"
        current[key.strip()].append(value.strip())
    return sections


def service(name: str) -> dict[str, list[str]]:
    return parse_unit(UNITS / name)["Service"]


def seconds(value: str) -> float:
    """A systemd time span as this project writes them: ``45``, ``330s``, ``20min``."""
    for suffix, factor in (("min", 60), ("s", 1)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def exec_start(name: str) -> list[str]:
    """The unit's ExecStart as argv, systemd's ``%%`` unescaped and the instance ``%i`` a port."""
    (line,) = service(name)["ExecStart"]
    return shlex.split(line.replace("%%", "%").replace("%i", "8000"))


def procfile() -> dict[str, list[str]]:
    """{process: argv} of the Procfile, without the ``deploy/respawn`` wrapper; the web line's final
    ``exec`` is its server."""
    processes = {}
    for line in (PROJECT_ROOT / "Procfile").read_text(encoding="utf-8").splitlines():
        name, _, command = line.partition(":")
        argv = shlex.split(command)
        if argv[:2] == ["sh", "-c"]:
            argv = shlex.split(argv[2].rsplit("exec ", 1)[1])
        if argv[0] == "deploy/respawn":
            argv = argv[1:]
        processes[name.strip()] = argv
    return processes


def check_options(command: Any, args: list[str]) -> None:
    """Every option in ``args`` is one ``command`` takes (a click command: typer vendors its own click)."""
    known = {opt for param in command.params for opt in param.opts}
    unknown = [a for a in args if a.startswith("-") and a.split("=", 1)[0] not in known]
    assert not unknown, f"{command.name} has no option {unknown}"


def check_command(argv: list[str]) -> None:
    """``argv`` (a unit's or the Procfile's) starts something this project has, with options it takes."""
    program = Path(argv[0]).name
    if program == "domainllm":
        commands = getattr(typer.main.get_command(domainllm_app), "commands", {})
        assert argv[1] in commands, f"no `domainllm {argv[1]}`"
        check_options(commands[argv[1]], argv[2:])
    elif program == "celery":
        assert argv[1] == "-A", argv
        celery_app = importlib.import_module(argv[2]).app
        assert isinstance(celery_app, Celery)
        assert argv[3] in celery_cli.commands, f"no `celery {argv[3]}`"
        check_options(celery_cli.commands[argv[3]], argv[4:])
    else:
        pytest.fail(f"an unknown program: {argv}")


def queues(argv: list[str]) -> frozenset[str]:
    return frozenset(argv[argv.index("-Q") + 1].split(",")) if "-Q" in argv else frozenset()


def test_every_unit_starts_a_command_of_this_project_from_its_venv() -> None:
    for name in PROJECT_UNITS:
        argv = exec_start(name)
        assert argv[0].startswith(f"{INSTALL_ROOT}/.venv/bin/"), (name, argv[0])
        check_command(argv)
    for argv in procfile().values():  # the Procfile's too, so the two cannot drift apart unnoticed
        check_command(argv)


def test_the_units_run_the_procfiles_processes_on_the_same_queues() -> None:
    def shape(argv: list[str]) -> tuple[str, str, frozenset[str]]:
        return Path(argv[0]).name, argv[3] if Path(argv[0]).name == "celery" else argv[1], queues(argv)

    ours = sorted(shape(exec_start(name)) for name in PROJECT_UNITS)
    demo = sorted(shape(argv) for name, argv in procfile().items() if name != "redis")
    assert ours == demo
    consumed = frozenset().union(*(q for _, _, q in ours))
    assert consumed == frozenset(names.QUEUE_OF.values()), "a queue nobody consumes, or one no task is sent to"


def test_worker_node_names_escape_celerys_percent_from_systemd() -> None:
    """``%h`` is systemd's home directory; Celery's host name must be written ``%%h`` in a unit."""
    for name in PROJECT_UNITS:
        (line,) = service(name)["ExecStart"]
        assert "%h" not in line.replace("%%", ""), name


def test_each_service_restarts_on_failure_and_reads_the_env_file() -> None:
    for name in [*PROJECT_UNITS, "domainllm-redis.service"]:
        unit = parse_unit(UNITS / name)
        assert unit["Service"]["Restart"] == ["on-failure"], name
        assert unit["Service"]["KillSignal"] == ["SIGTERM"], name
        assert unit["Unit"]["PartOf"] == ["domainllm.target"], name
        if name in PROJECT_UNITS:
            assert unit["Service"]["EnvironmentFile"] == [ENV_FILE], name
            assert unit["Service"]["WorkingDirectory"] == [INSTALL_ROOT], name


def test_stop_timeouts_outlast_the_graceful_shutdowns() -> None:
    """systemd sends SIGKILL at TimeoutStopSec: the API's drain and a worker's running tasks end first."""
    grace = Settings(environment="dev").shutdown_grace_s
    assert seconds(service("domainllm-api@.service")["TimeoutStopSec"][0]) > grace
    sentiment = SentimentSettings()
    longest_task = max(sentiment.task_time_limit_s, sentiment.enrich_time_limit_s, sentiment.delivery_time_limit_s)
    worker = service("domainllm-worker.service")
    assert seconds(worker["TimeoutStopSec"][0]) > longest_task
    for name in ("domainllm-worker.service", "domainllm-trainer.service"):
        assert service(name)["KillMode"] == ["mixed"], name  # TERM to Celery's main process only


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    """``systemd-analyze verify`` on copies that point at this checkout: unknown keys, bad values and
    commands that do not exist are all faults here (systemd itself only warns about the first two)."""
    redis_server = "/usr/bin/redis-server"
    if not Path(redis_server).exists():  # Debian's redis-server not installed: the embedded one stands in
        from core.redis_server import redis_executable

        redis_server = redis_executable()
    for unit in UNITS.glob("domainllm*"):
        text = unit.read_text(encoding="utf-8").replace(INSTALL_ROOT, str(PROJECT_ROOT))
        (tmp_path / unit.name).write_text(text.replace("/usr/bin/redis-server", redis_server), encoding="utf-8")
    names_ = [p.name.replace("@.", "@8000.") for p in sorted(tmp_path.iterdir())]
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *names_],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
