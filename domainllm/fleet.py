"""A local fleet on loopback: one Redis, N API replicas, M Celery workers (and a beat), all real
processes sharing one environment (the same Redis, data folder, base model, adapters and admin key),
as a deployment runs them behind a load balancer. For the replica and fault tests, the load test,
and ``domainllm fleet`` (a multi-replica demo).

    with Fleet(api=2, workers=2, base_model=tiny_dir) as fleet:
        httpx.get(fleet.urls[0] + "/readyz")
        fleet.kill(0, signal.SIGKILL)          # API replica 0 dies; fleet.urls[1] still answers
        fleet.restart(0)                       # back, on the same port
        fleet.restart_redis()                  # the append-only file brings the data back

Every process runs in a process group of its own, so a kill reaches it whole and nothing outlives
the block, whether it ends normally or by an exception. Each writes its output to
``<log_dir>/<role>-<i>.log``; a process that dies while starting fails ``start`` with its log's tail.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Annotated, Literal

import httpx
import typer

from core.config import PLACEHOLDER_SECRETS, PROJECT_ROOT
from core.errors import DomainLLMError
from core.redis_server import redis_command, wait_for_port

log = logging.getLogger(__name__)

Role = Literal["api", "worker", "beat"]
WORKER_QUEUES = "ingest,enrich,alerts"
LOG_TAIL_CHARS = 4000
WORKER_READY = re.compile(r"\S+@\S+ ready\.")  # celery's own line at -l INFO, once it consumes

# What `make run` loads before serving (the Procfile's web line): the sample catalogue and events, and
# the sample help-centre articles and FAQ. `domainllm` arguments, run from the project root.
SAMPLE_SETUP: tuple[tuple[str, ...], ...] = (
    ("recommend", "load", "--samples", "--shift-to-now", "--if-empty", "--wait-s", "30"),
    ("support", "ingest", "data/samples/support/articles"),
    ("support", "ingest", "data/samples/support/faq.csv"),
)


RESPAWN_AFTER_S = 10.0  # `domainllm fleet` starts an exited member again, at most this often


class FleetError(DomainLLMError):
    """A fleet process failed to start, or a setup command failed; the message holds its log's tail."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def domainllm_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "domainllm.cli", *args]


def log_tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return "(no log)"


@dataclass
class Member:
    """One process of the fleet: its command line, its log, and (while it runs) its process."""

    role: str
    index: int
    cmd: list[str]
    log: Path
    port: int | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_start: int = 0  # where this run's output begins in the log (a restart appends)

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        """What this run of the process wrote to its log so far."""
        try:
            with self.log.open("rb") as f:
                f.seek(self.log_start)
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def start(self, env: Mapping[str, str]) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log_start = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            # a session (and process group) of its own: signals reach the whole tree, not the caller's
            self.proc = subprocess.Popen(
                self.cmd, cwd=PROJECT_ROOT, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM to the group; SIGKILL if it has not exited within ``timeout_s``."""
        if self.proc is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # anything the leader left behind in its group
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise FleetError(f"{self.name} exited with {self.proc.returncode} while starting:\n{log_tail(self.log)}")


class Fleet:
    """Redis, ``api`` API replicas and ``workers`` Celery workers (and ``beat`` beats) on loopback.

    base_model:   a model folder (default: the configured base model, ``data/models/...``)
    adapters_dir: the adapters every process loads (default: the configured folder; tests pass their own)
    data_dir:     the shared data folder (KB, inbox, Redis files, logs); default a temporary folder,
                  removed on a clean exit and kept (and logged) after a failure
    redis_url:    an existing Redis to share instead of starting one (then ``restart_redis`` is off)
    setup:        ``domainllm`` commands run once Redis answers, before any replica starts
                  (``SAMPLE_SETUP``: what ``make run`` loads)
    env:          more environment (``DOMAINLLM_*``) for every process, over the fleet's own
    """

    def __init__(
        self,
        api: int = 1,
        workers: int = 1,
        *,
        beat: int = 0,
        base_model: str | Path | None = None,
        adapters_dir: Path | None = None,
        data_dir: Path | None = None,
        redis_url: str | None = None,
        admin_key: str | None = None,
        environment: str = "test",
        setup: Sequence[Sequence[str]] = (),
        env: Mapping[str, str] | None = None,
        api_ports: Sequence[int] | None = None,
        ready_timeout_s: float = 180.0,
        stop_timeout_s: float = 15.0,
    ) -> None:
        if api < 0 or workers < 0 or beat < 0 or api + workers + beat == 0:
            raise ValueError("a fleet needs at least one API replica, worker or beat")
        if api_ports is not None and len(api_ports) != api:
            raise ValueError(f"{len(api_ports)} API ports for {api} replicas")
        self.n_api, self.n_workers, self.n_beat = api, workers, beat
        self.base_model = base_model
        self.adapters_dir = adapters_dir
        self.data_dir_given = data_dir
        self.external_redis = redis_url
        self.admin_key = admin_key or "adm-" + secrets.token_urlsafe(18)
        self.environment = environment
        self.setup = [list(cmd) for cmd in setup]
        self.extra_env = dict(env or {})
        self.api_ports = list(api_ports) if api_ports is not None else None
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.data_dir = Path()
        self.redis: Member | None = None
        self.apis: list[Member] = []
        self.workers: list[Member] = []
        self.beats: list[Member] = []
        self.env: dict[str, str] = {}
        self._made_data_dir = False
        self._started = False

    # ---- what callers read ---------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        """The API replicas' base URLs, by index (a killed replica keeps its slot)."""
        return [m.url for m in self.apis]

    @property
    def redis_url(self) -> str:
        if self.external_redis:
            return self.external_redis
        if self.redis is None:
            raise FleetError("the fleet has not started")
        return f"redis://127.0.0.1:{self.redis.port}/0"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def member(self, role: Role, i: int) -> Member:
        members = {"api": self.apis, "worker": self.workers, "beat": self.beats}[role]
        return members[i]

    # ---- starting and stopping -----------------------------------------------------------------

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop(failed=exc_type is not None)

    def start(self) -> Fleet:
        if self._started:
            raise FleetError("the fleet has started already")
        self._started = True
        atexit.register(self.stop)  # an interpreter that exits without leaving the block leaves no orphans
        try:
            self._prepare()
            if self.external_redis is None:
                self._start_redis()
            for cmd in self.setup:
                self.cli(*cmd)  # a CLI command's engine has batch deadlines (apps.settings.batch_settings)
            self._start_members()
            self.wait_ready()
        except BaseException:
            self.stop(failed=True)
            raise
        return self

    def stop(self, failed: bool = False) -> None:
        """Stop every process (beats and workers first, Redis last); idempotent."""
        atexit.unregister(self.stop)
        for member in [*self.beats, *self.workers, *self.apis]:
            member.stop(self.stop_timeout_s)
        if self.redis is not None:
            self.redis.stop(self.stop_timeout_s)
        if self._made_data_dir and self.data_dir.exists():
            if failed:
                log.warning("fleet failed: its logs are kept under %s", self.log_dir)
            else:
                shutil.rmtree(self.data_dir, ignore_errors=True)

    def _prepare(self) -> None:
        if self.data_dir_given is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="domainllm-fleet-"))
            self._made_data_dir = True
        else:
            self.data_dir = self.data_dir_given
            self.data_dir.mkdir(parents=True, exist_ok=True)
        from core.config import get_settings  # this process's settings: the developer's model and adapters

        configured = get_settings()
        base = Path(self.base_model) if self.base_model is not None else configured.base_model_path
        adapters = self.adapters_dir if self.adapters_dir is not None else configured.adapters_path
        runtime = self.data_dir / "runtime"
        self.env = {
            **os.environ,
            "DOMAINLLM_ENVIRONMENT": self.environment,
            "DOMAINLLM_ADMIN_KEY": self.admin_key,
            "DOMAINLLM_DATA_DIR": str(self.data_dir),
            "DOMAINLLM_BASE_MODEL": str(base.resolve()),
            "DOMAINLLM_ADAPTERS_DIR": str(Path(adapters).resolve()),
            "DOMAINLLM_SUPPORT_KB_DIR": str(runtime / "support" / "kb"),
            "DOMAINLLM_SENTIMENT_INBOX_DIR": str(runtime / "inbox"),
            **self.extra_env,
        }
        if self.external_redis is not None:
            self.env["DOMAINLLM_REDIS_URL"] = self.external_redis

    def _start_redis(self) -> None:
        port = free_port()
        cmd = redis_command(port, self.data_dir / "redis")
        self.redis = Member("redis", 0, cmd, self.log_dir / "redis-0.log", port=port)
        self._launch_redis()
        self.env["DOMAINLLM_REDIS_URL"] = self.redis_url

    def _launch_redis(self) -> None:
        assert self.redis is not None and self.redis.port is not None
        self.redis.start(self.env or os.environ)
        try:
            wait_for_port("127.0.0.1", self.redis.port, timeout=15)
        except DomainLLMError:
            raise FleetError(f"redis did not start:\n{log_tail(self.redis.log)}") from None

    def _start_members(self) -> None:
        ports = self.api_ports or [free_port() for _ in range(self.n_api)]
        for i, port in enumerate(ports):
            serve = domainllm_command("serve", "--host", "127.0.0.1", "--port", str(port))
            self.apis.append(Member("api", i, serve, self.log_dir / f"api-{i}.log", port=port))
        celery = [sys.executable, "-m", "celery", "-A", "workers.celery_app"]
        tag = secrets.token_hex(3)
        for i in range(self.n_workers):
            cmd = [*celery, "worker", "-Q", WORKER_QUEUES, "-n", f"fleet{tag}-{i}@%h", "-l", "INFO"]
            self.workers.append(Member("worker", i, cmd, self.log_dir / f"worker-{i}.log"))
        for i in range(self.n_beat):
            schedule = self.data_dir / "runtime" / f"celerybeat-schedule-{i}"
            schedule.parent.mkdir(parents=True, exist_ok=True)
            cmd = [*celery, "beat", "-s", str(schedule), "-l", "INFO"]
            self.beats.append(Member("beat", i, cmd, self.log_dir / f"beat-{i}.log"))
        for member in [*self.apis, *self.workers, *self.beats]:
            member.start(self.env)

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Until every API answers ``/readyz`` with 200 and every worker consumes its queues; a
        process that exits meanwhile fails at once, with its log."""
        deadline = time.monotonic() + (timeout_s or self.ready_timeout_s)
        pending = [*self.apis, *self.workers]
        with httpx.Client(timeout=2.0) as client:
            while pending:
                for member in list(pending):
                    member.check_alive()
                    if self._is_ready(member, client):
                        pending.remove(member)
                if pending and time.monotonic() > deadline:
                    names = ", ".join(m.name for m in pending)
                    raise FleetError(f"not ready in time: {names}\n{log_tail(pending[0].log)}")
                if pending:
                    time.sleep(0.25)

    @staticmethod
    def _is_ready(member: Member, client: httpx.Client) -> bool:
        if member.role == "worker":
            return bool(WORKER_READY.search(member.output()))
        try:
            r = client.get(f"{member.url}/readyz")
        except httpx.TransportError:
            return False  # not listening yet
        if r.status_code != 200 and "failed to start" in r.text:  # a bad model path: waiting will not help
            raise FleetError(f"{member.name}: {r.text}\n{log_tail(member.log)}")
        return r.status_code == 200

    # ---- faults ------------------------------------------------------------------------------------

    def kill(self, i: int, sig: int = signal.SIGKILL, *, role: Role = "api", wait: bool = True) -> None:
        """Send ``sig`` to replica ``i`` of ``role`` (its whole process group); with ``wait``, until it exits."""
        member = self.member(role, i)
        proc = member.proc
        member.signal(sig)
        if wait and proc is not None:
            proc.wait(timeout=self.stop_timeout_s)

    def restart(self, i: int, *, role: Role = "api", wait: bool = True) -> None:
        """Stop replica ``i`` of ``role`` if it still runs and start it again (an API on its old port)."""
        member = self.member(role, i)
        member.stop(self.stop_timeout_s)
        member.start(self.env)
        if wait and role != "beat":
            self._wait_member(member)

    def restart_redis(self, *, kill: bool = False, down_s: float = 0.0) -> None:
        """Stop the fleet's Redis (SIGKILL with ``kill``), stay down ``down_s`` seconds, start it again
        on the same port and folder (the append-only file brings the data back)."""
        if self.redis is None:
            raise FleetError("the fleet uses an outside Redis (redis_url): it cannot restart it")
        if kill:
            self.redis.signal(signal.SIGKILL)
        self.redis.stop(self.stop_timeout_s)
        time.sleep(down_s)
        self._launch_redis()

    def _wait_member(self, member: Member) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        with httpx.Client(timeout=2.0) as client:
            while not self._is_ready(member, client):
                member.check_alive()
                if time.monotonic() > deadline:
                    raise FleetError(f"{member.name} not ready in time:\n{log_tail(member.log)}")
                time.sleep(0.25)

    # ---- commands ------------------------------------------------------------------------------------

    def cli(self, *args: str, env: Mapping[str, str] | None = None, timeout_s: float = 600.0) -> str:
        """Run ``domainllm ARGS`` with the fleet's environment (and ``env``); its output, or FleetError."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            domainllm_command(*args),
            cwd=PROJECT_ROOT,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        with (self.log_dir / "setup.log").open("a", encoding="utf-8") as out:
            out.write(f"$ domainllm {' '.join(args)}\n{done.stdout}{done.stderr}\n")
        if done.returncode != 0:
            raise FleetError(
                f"domainllm {' '.join(args)} exited {done.returncode}:\n{(done.stdout + done.stderr)[-LOG_TAIL_CHARS:]}"
            )
        return done.stdout


# ---- `domainllm fleet`: the same, in the foreground, for a local multi-replica demo ------------------


def fleet_command(
    api: Annotated[int, typer.Option(min=1, max=8, help="API replicas.")] = 2,
    workers: Annotated[int, typer.Option(min=0, max=8, help="Celery workers (queues ingest,enrich,alerts).")] = 2,
    beat: Annotated[bool, typer.Option(help="Run a Celery beat too (feeds, monitor, sweeps).")] = False,
    port: Annotated[int, typer.Option(help="The first replica's port (the next ones follow); 0: free ports.")] = 8000,
    samples: Annotated[bool, typer.Option(help="Load the sample catalogue, events and help centre first.")] = True,
    data_dir: Annotated[
        Path | None, typer.Option(help="The shared data folder (default: a temporary one, removed at exit).")
    ] = None,
    redis_url: Annotated[str | None, typer.Option(help="Share this Redis instead of starting one.")] = None,
) -> None:
    """Run a local fleet on loopback until Ctrl-C: one Redis, API replicas on consecutive ports, Celery
    workers, all sharing one Redis, data folder and admin key. There is no load balancer: spread clients
    over the printed URLs (or put one in front)."""
    from rich.console import Console

    console = Console()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per readiness poll
    given_key = os.environ.get("DOMAINLLM_ADMIN_KEY", "")
    fleet = Fleet(
        api,
        workers,
        beat=int(beat),
        data_dir=data_dir,
        redis_url=redis_url,
        admin_key=given_key if given_key not in PLACEHOLDER_SECRETS else None,
        environment="dev",
        setup=SAMPLE_SETUP if samples else (),
        api_ports=[port + i for i in range(api)] if port else None,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a supervisor's stop, like Ctrl-C: clean up
    try:
        with console.status(f"starting redis, {api} API replicas and {workers} workers"):
            fleet.start()
    except DomainLLMError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None
    try:
        console.print(f"redis {fleet.redis_url}; admin key {fleet.admin_key}; logs {fleet.log_dir}")
        for member in [*fleet.apis, *fleet.workers, *fleet.beats]:
            where = f" {member.url}" if member.port else ""
            console.print(f"{member.name}: pid {member.pid}{where}")
        console.print("no load balancer: spread clients over the URLs above. Ctrl-C stops everything.")
        # a member that exits is started again, as systemd (Restart=on-failure) and deploy/respawn do; a
        # worker's held tasks come back to the others after the visibility timeout
        roles: tuple[tuple[Role, list[Member]], ...] = (
            ("api", fleet.apis),
            ("worker", fleet.workers),
            ("beat", fleet.beats),
        )
        started_at: dict[str, float] = {}
        while True:
            time.sleep(1.0)
            for role, members in roles:
                for i, member in enumerate(members):
                    if member.proc is None or member.proc.poll() is None:
                        continue
                    if time.monotonic() - started_at.get(member.name, 0.0) < RESPAWN_AFTER_S:
                        continue  # it died right after its last start: wait, not a restart loop
                    console.print(
                        f"[red]{member.name} exited with {member.proc.returncode}[/] ({member.log}); starting it again"
                    )
                    started_at[member.name] = time.monotonic()
                    fleet.restart(i, role=role, wait=False)
    except KeyboardInterrupt:
        console.print("stopping the fleet")
    finally:
        fleet.stop()
