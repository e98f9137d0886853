"""``domainllm doctor``: check a deployment and name what is wrong, each fault with what to do.

    $ domainllm doctor
    ✗ model      base model folder /srv/data/models/smollm2-135m-instruct does not exist
                 → run `domainllm prepare-model`, or point DOMAINLLM_BASE_MODEL at a prepared folder
    ✗ redis      Redis at redis://:***@10.0.0.5:6379/0 is unreachable: Connection refused
    ✗ adapter    support: adapter_model.safetensors is not a readable safetensors file (truncated?)
    ✗ disk       /srv/data: 212 MB free of 50.0 GB (0.4%), under the 1024 MB floor
    ...

Checks (each a function below, each finding ``ok``, ``warn``, ``fail`` or ``skip``):

- **model**: the base model folder exists, holds config, tokenizer and weights, and every weights
  file's header is whole (a truncated copy is caught without loading it).
- **adapters**: every adapter folder (the shared ones, and the tenants' versions that serve now)
  has a LoRA config and whole weights of the configured rank, shaped for this base model.
- **redis**: it answers (within 2 s); **persistence**: AOF or snapshots are on and their last write
  succeeded; memory is not about to run out and nothing is evicted.
- **disk**: free space under the data, model and adapter folders (and Redis's, when it is local)
  is above ``DOMAINLLM_OPS_MIN_FREE_DISK_MB`` and ``_PCT``.
- **queues**: no queue has messages waiting with no live worker consuming it, or has waited long.
- **replicas** and **clock**: the live processes by their heartbeats, and any whose clock is more
  than ``DOMAINLLM_OPS_MAX_CLOCK_SKEW_S`` from the others'.

Checks that need Redis are skipped (and say so) when it is down. Exit status 1 when any check fails.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import redis

from apps.kpis import queue_stats
from apps.ops_settings import OpsSettings, ops_settings
from apps.replicas import Heartbeats, Replica, measure_offset
from apps.settings import AppSettings
from apps.tenants.store import DEFAULT_TENANT, TenantStore
from core.adapters import TENANTS_DIR, WEIGHT_FILES, _check_weights, _read_adapter_config, _safetensors_header
from core.adapters import version_dir as adapter_version_dir
from core.errors import DomainLLMError
from core.model_store import MODEL_FILES
from core.redis_client import client_for
from core.versions import AdapterVersions

Status = Literal["ok", "warn", "fail", "skip"]
DiskUsage = Callable[[str], Any]  # shutil.disk_usage's shape: .total, .used, .free
DOMAINS = ("support", "sentiment", "recommend")
MB = 1024 * 1024
REDIS_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    detail: str
    fix: str = ""


def safe_url(url: str) -> str:
    """A Redis URL fit to print: its password replaced by ``***`` (one host, or a Sentinel URL's several)."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return urlunsplit((parts.scheme, f"{user}:***@{hosts}", parts.path, parts.query, parts.fragment))


# ---- the model --------------------------------------------------------------------------------------


def check_model(path: Path) -> list[Finding]:
    fix = "run `domainllm prepare-model`, or point DOMAINLLM_BASE_MODEL at a prepared model folder"
    if not path.is_dir():
        return [Finding("model", "fail", f"base model folder {path} does not exist", fix)]
    missing = [name for name in MODEL_FILES if not (path / name).is_file()]
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        missing.append("*.safetensors weights")
    if missing:
        return [Finding("model", "fail", f"base model folder {path} lacks {', '.join(missing)}", fix)]
    try:
        json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        return [Finding("model", "fail", f"{path / 'config.json'} is not valid JSON ({exc})", fix)]
    for file in weights:
        try:
            _safetensors_header(file)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            return [Finding("model", "fail", f"{file} is not a readable safetensors file ({exc})", fix)]
    size = sum(f.stat().st_size for f in weights) / MB
    return [Finding("model", "ok", f"{path.name}: {len(weights)} weights file(s), {size:.0f} MB")]


# ---- adapters ---------------------------------------------------------------------------------------


Dims = dict[str, tuple[int, int]]  # module name -> (in, out) features of the base's Linear layers


def _model_dims(model_path: Path) -> tuple[Dims, int | None]:
    """The (in, out) widths of a Llama-style base's projection layers, and its layer count; ({}, None)
    when its config does not say."""
    try:
        cfg = json.loads((model_path / "config.json").read_text())
    except (OSError, ValueError):
        return {}, None
    hidden, heads, inter = cfg.get("hidden_size"), cfg.get("num_attention_heads"), cfg.get("intermediate_size")
    if not all(isinstance(v, int) and v > 0 for v in (hidden, heads, inter)):
        return {}, None
    head_dim = cfg.get("head_dim") or hidden // heads
    q, kv = heads * head_dim, (cfg.get("num_key_value_heads") or heads) * head_dim
    dims = {
        "q_proj": (hidden, q),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (q, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }
    layers = cfg.get("num_hidden_layers")
    return dims, layers if isinstance(layers, int) else None


def _shape_problem(path: Path, dims: Dims, layers: int | None) -> str | None:
    """Why the adapter's tensors cannot sit on this base (trained on another model), or None."""
    file = path / WEIGHT_FILES[0]
    if not dims or not file.is_file():
        return None
    for key, tensor in _safetensors_header(file).items():
        shape = tensor.get("shape") or []
        parts = key.split(".")
        kind = "lora_A" if "lora_A" in parts else "lora_B" if "lora_B" in parts else None
        module = parts[parts.index(kind) - 1] if kind else None
        if kind and module in dims and len(shape) == 2:
            wanted = dims[module][0] if kind == "lora_A" else dims[module][1]
            got = shape[1] if kind == "lora_A" else shape[0]
            if got != wanted:
                side = "input" if kind == "lora_A" else "output"
                return f"{key} has {got} {side} features; this base model's {module} has {wanted} (trained on another base?)"
        if layers is not None and ".layers." in key:
            index = key.split(".layers.", 1)[1].split(".", 1)[0]
            if index.isdigit() and int(index) >= layers:
                return f"{key} names layer {index}; this base model has {layers} layers"
    return None


def check_adapter(name: str, path: Path, dims: Dims, layers: int | None) -> Finding:
    fix = f"retrain it, or restore {path} from its source; an adapter that fails to load is skipped at start"
    try:
        cfg = _read_adapter_config(name, path)
        _check_weights(name, path, cfg)
        problem = _shape_problem(path, dims, layers)
    except DomainLLMError as exc:
        return Finding("adapter", "fail", f"{name}: {getattr(exc, 'reason', None) or exc}", fix)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        return Finding("adapter", "fail", f"{name}: {path} cannot be read ({exc})", fix)
    if problem:
        return Finding("adapter", "fail", f"{name}: {problem}", fix)
    return Finding("adapter", "ok", f"{name}: rank {cfg.get('r')}, {path}")


def shared_adapter_folders(adapters_path: Path) -> list[tuple[str, Path]]:
    """The adapter folders the engine registers at start (as ``AdapterRegistry.discover``), and any
    folder that holds adapter weights but no config (a copy that went wrong)."""
    if not adapters_path.is_dir():
        return []
    out = []
    for sub in sorted(p for p in adapters_path.iterdir() if p.is_dir() and p.name != TENANTS_DIR):
        if (sub / "adapter_config.json").exists() or any((sub / w).exists() for w in WEIGHT_FILES):
            out.append((sub.name, sub))
    return out


def serving_versions(client: redis.Redis, settings: AppSettings) -> list[tuple[str, Path]]:
    """The tenants' adapter versions that serve now (promoted or candidate), with their folders."""
    versions = AdapterVersions(client, f"{settings.tenancy_namespace}:adapters")
    out = []
    for tenant in tenant_ids(client, settings):
        for domain in DOMAINS:
            state = versions.route_state(tenant, domain)
            for version in {state["promoted"], state["candidate"]} - {None}:
                out.append(
                    (
                        f"{tenant}/{domain}@v{version}",
                        adapter_version_dir(settings.adapters_path, tenant, domain, int(version)),
                    )
                )
    return sorted(out)


def check_adapters(settings: AppSettings, client: redis.Redis | None) -> list[Finding]:
    dims, layers = _model_dims(settings.base_model_path)
    folders = shared_adapter_folders(settings.adapters_path)
    findings = [check_adapter(name, path, dims, layers) for name, path in folders]
    if client is not None:
        findings += [check_adapter(name, path, dims, layers) for name, path in serving_versions(client, settings)]
    named = {
        "support": settings.support.adapter,
        "sentiment": "sentiment",
        "recommend": settings.recommend.adapter,
    }
    present = {name for name, _ in folders}
    for app, adapter in named.items():
        if adapter not in present:
            findings.append(
                Finding(
                    "adapter",
                    "warn",
                    f"the {app} app's adapter {adapter!r} is not under {settings.adapters_path}: it runs on the base model",
                    "train it (`domainllm train " + app + "`) or copy its folder there",
                )
            )
    if not findings:
        findings.append(Finding("adapter", "warn", f"no adapters under {settings.adapters_path}"))
    return findings


# ---- Redis ------------------------------------------------------------------------------------------


def connect_redis(url: str) -> redis.Redis:
    return client_for(
        url, decode_responses=True, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S
    )


def check_redis(client: redis.Redis, url: str) -> Finding:
    where = safe_url(url)
    try:
        client.ping()
        version = client.info("server").get("redis_version", "?")
    except redis.AuthenticationError as exc:
        return Finding(
            "redis",
            "fail",
            f"Redis at {where} refused our password: {exc}",
            "set DOMAINLLM_REDIS_PASSWORD or the URL's password",
        )
    except (redis.RedisError, OSError) as exc:
        reason = str(exc).replace(url, where)
        return Finding(
            "redis",
            "fail",
            f"Redis at {where} is unreachable: {reason}",
            "start it (`domainllm redis`, or `make run`), or set DOMAINLLM_REDIS_URL to the one that runs",
        )
    return Finding("redis", "ok", f"Redis {version} at {where}")


def check_persistence(client: redis.Redis) -> list[Finding]:
    info = client.info("persistence")
    memory = client.info("memory")
    findings = []
    if info.get("loading"):
        findings.append(Finding("persistence", "warn", "Redis is still loading its data set from disk"))
    aof = bool(info.get("aof_enabled"))
    try:
        save = str(client.config_get("save").get("save", ""))
    except redis.ResponseError:  # a managed Redis may refuse CONFIG: judge by INFO alone
        save = "?"
    failed = [
        what
        for what, field in (("RDB snapshot", "rdb_last_bgsave_status"), ("AOF write", "aof_last_write_status"))
        if info.get(field, "ok") != "ok"
    ]
    if failed:
        findings.append(
            Finding(
                "persistence",
                "fail",
                f"Redis's last {' and '.join(failed)} failed: it cannot persist (full disk, or its dir is not writable)",
                "free space on Redis's disk or fix its dir's permissions; `redis-cli info persistence` has details",
            )
        )
    if not aof and save in ("", '""'):
        findings.append(
            Finding(
                "persistence",
                "fail",
                "Redis persists nothing (no AOF, no snapshots): a restart loses sessions, keys, queued tasks and alerts",
                "set `appendonly yes` (the embedded Redis does)",
            )
        )
    elif not aof:
        findings.append(
            Finding(
                "persistence",
                "warn",
                f"Redis keeps RDB snapshots only (save {save!r}): a crash loses the writes since the last one",
                "set `appendonly yes`",
            )
        )
    policy = memory.get("maxmemory_policy", "noeviction")
    if policy != "noeviction":
        findings.append(
            Finding(
                "persistence",
                "warn",
                f"Redis evicts keys when full (maxmemory-policy {policy}): queued tasks, sessions and keys can vanish",
                "set `maxmemory-policy noeviction`",
            )
        )
    used, cap = int(memory.get("used_memory", 0)), int(memory.get("maxmemory", 0))
    if cap and used > 0.9 * cap:
        findings.append(
            Finding(
                "persistence",
                "warn",
                f"Redis uses {used / MB:.0f} MB of its {cap / MB:.0f} MB cap: writes fail when it is full",
                "raise DOMAINLLM_REDIS_MAXMEMORY, or shorten retention",
            )
        )
    if not findings:
        mode = "AOF" + (f" and snapshots ({save})" if save not in ("", '""', "?") else "")
        findings.append(Finding("persistence", "ok", f"{mode}; last writes succeeded; policy {policy}"))
    return findings


def tenant_ids(client: redis.Redis, settings: AppSettings) -> list[str]:
    ids = {str(t) for t in client.smembers(TenantStore(client, settings.tenancy_namespace)._k("tenants"))}
    return sorted(ids | {DEFAULT_TENANT})


# ---- disk -------------------------------------------------------------------------------------------


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(paths: Iterable[Path], ops: OpsSettings, disk_usage: DiskUsage = shutil.disk_usage) -> list[Finding]:
    """One finding per file system under ``paths`` (the first path names it)."""
    seen: set[int] = set()
    findings = []
    for path in paths:
        where = _existing(path)
        device = where.stat().st_dev
        if device in seen:
            continue
        seen.add(device)
        usage = disk_usage(str(where))
        free_mb, total = usage.free / MB, max(1, usage.total)
        pct = 100.0 * usage.free / total
        text = f"{path}: {free_mb:.0f} MB free of {total / 1024**3:.1f} GB ({pct:.1f}%)"
        if free_mb < ops.min_free_disk_mb or pct < ops.min_free_disk_pct:
            floor = f"{ops.min_free_disk_mb} MB" if free_mb < ops.min_free_disk_mb else f"{ops.min_free_disk_pct}%"
            findings.append(
                Finding(
                    "disk",
                    "fail",
                    f"{text}, under the {floor} floor: the disk is (nearly) full",
                    "free space there: on a full disk Redis stops persisting and training cannot write adapters",
                )
            )
        else:
            findings.append(Finding("disk", "ok", text))
    return findings


def redis_dir(client: redis.Redis, url: str) -> Path | None:
    """Redis's data folder, when Redis runs on this machine (and lets us ask)."""
    if (urlsplit(url).hostname or "") not in ("127.0.0.1", "localhost", "::1"):
        return None
    try:
        folder = client.config_get("dir").get("dir")
    except redis.ResponseError:
        return None
    return Path(folder) if folder else None


# ---- queues, replicas, clocks -----------------------------------------------------------------------


def _age(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def check_queues(client: redis.Redis, replicas: list[Replica], ops: OpsSettings) -> list[Finding]:
    queues, unacked = queue_stats(client)
    consumers: dict[str, int] = {}
    for rep in replicas:
        if rep.role == "worker":
            for name in rep.queues:
                consumers[name] = consumers.get(name, 0) + 1
    have_workers = any(rep.role == "worker" for rep in replicas)
    findings = []
    for q in queues:
        waited = f", the oldest for {_age(q.oldest_age_s)}" if q.oldest_age_s is not None else ""
        text = f"queue {q.name}: {q.depth} waiting{waited}"
        start = f"start a worker for it: celery -A workers.celery_app worker -Q {q.name}"
        if q.depth and not consumers.get(q.name):
            if have_workers or ops.heartbeat_s > 0:
                findings.append(Finding("queues", "fail", f"{text}, and no live worker consumes it", start))
            else:
                findings.append(Finding("queues", "warn", f"{text}; heartbeats are off: cannot tell who consumes it"))
        elif q.oldest_age_s is not None and q.oldest_age_s > ops.queue_max_age_s:
            findings.append(
                Finding(
                    "queues",
                    "warn",
                    f"{text} (over {_age(ops.queue_max_age_s)}), with {consumers[q.name]} worker(s)",
                    "add workers for it, or find the slow task (domainllm_celery_task_duration_seconds)",
                )
            )
        else:
            findings.append(Finding("queues", "ok", f"{text}; {consumers.get(q.name, 0)} worker(s)"))
    findings.append(Finding("queues", "ok", f"{unacked} message(s) taken by workers, not yet acknowledged"))
    return findings


def check_replicas(replicas: list[Replica], ops: OpsSettings) -> list[Finding]:
    if not replicas:
        why = "heartbeats are off (DOMAINLLM_OPS_HEARTBEAT_S=0)" if ops.heartbeat_s <= 0 else "nothing runs"
        return [Finding("replicas", "warn", f"no live replica has a heartbeat in Redis: {why}, or an older build")]
    roles: dict[str, int] = {}
    for rep in replicas:
        roles[rep.role] = roles.get(rep.role, 0) + 1
    text = ", ".join(f"{n} {role}" for role, n in sorted(roles.items()))
    ports = sorted(f"{rep.host}:{rep.metrics_port}" for rep in replicas if rep.metrics_port)
    scrape = f"; worker metrics at {', '.join(ports)}" if ports else ""
    findings = [Finding("replicas", "ok", f"live: {text}{scrape}")]
    if "worker" in roles and "beat" not in roles:
        findings.append(
            Finding(
                "replicas",
                "warn",
                "no beat runs: feeds are not polled, alerts not raised, dead letters not retried",
                "start one: celery -A workers.celery_app beat",
            )
        )
    return findings


def check_clocks(replicas: list[Replica], own_offset: float, ops: OpsSettings) -> Finding:
    """Replicas (and this machine) whose clock is more than ``max_clock_skew_s`` from the median."""
    clocks = [(rep.id, rep.offset_s) for rep in replicas] + [("this machine (doctor)", own_offset)]
    middle = statistics.median(offset for _, offset in clocks)
    off = [
        f"{name} is {abs(offset - middle):.1f} s {'ahead of' if offset > middle else 'behind'} the others"
        for name, offset in clocks
        if abs(offset - middle) > ops.max_clock_skew_s
    ]
    spread = max(o for _, o in clocks) - min(o for _, o in clocks)
    if off:
        return Finding(
            "clock",
            "fail",
            "clock skew: " + "; ".join(off) + f" (allowed {ops.max_clock_skew_s} s)",
            "run NTP (chrony, systemd-timesyncd) on every machine: beat schedules, alert cooldowns, token expiries "
            "and task visibility compare clocks across machines",
        )
    return Finding("clock", "ok", f"{len(clocks)} clocks within {spread:.2f} s of each other (Redis as the ruler)")


# ---- all of it --------------------------------------------------------------------------------------


def run_doctor(
    settings: AppSettings,
    ops: OpsSettings | None = None,
    *,
    disk_usage: DiskUsage = shutil.disk_usage,
    clock: Callable[[], float] = time.time,
) -> list[Finding]:
    ops = ops or ops_settings(settings)
    url = settings.effective_redis_url
    findings = check_model(settings.base_model_path)
    client = connect_redis(url)
    try:
        reach = check_redis(client, url)
        live = client if reach.status == "ok" else None
        findings += check_adapters(settings, live)
        findings.append(reach)
        paths = [settings.data_dir, settings.models_path, settings.adapters_path]
        if live is not None:
            findings += check_persistence(live)
            folder = redis_dir(live, url)
            paths += [folder] if folder else []
        findings += check_disk(paths, ops, disk_usage)
        if live is None:
            needs = "skipped: Redis is unreachable"
            findings += [Finding(name, "skip", needs) for name in ("persistence", "queues", "replicas", "clock")]
            return findings
        replicas = Heartbeats(live, ops.namespace).live()
        findings += check_queues(live, replicas, ops)
        findings += check_replicas(replicas, ops)
        own_offset, _ = measure_offset(live, clock)
        findings.append(check_clocks(replicas, own_offset, ops))
    except redis.RedisError as exc:  # Redis went away half-way
        findings.append(Finding("redis", "fail", f"Redis failed during the checks: {exc}"))
    finally:
        client.close()
    return findings


MARKS = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "fail": "[red]✗[/]", "skip": "[dim]-[/]"}


def exit_status(findings: list[Finding]) -> int:
    return 1 if any(f.status == "fail" for f in findings) else 0


def report(findings: list[Finding], *, as_json: bool = False, quiet: bool = False) -> str:
    """The findings as rich markup lines (``quiet``: only what is not ok), or as JSON lines."""
    if as_json:
        return "\n".join(json.dumps(asdict(f)) for f in findings)
    lines = []
    for f in findings:
        if quiet and f.status in ("ok", "skip"):
            continue
        lines.append(f"{MARKS[f.status]} {f.check:<12} {_escape(f.detail)}")
        if f.fix and f.status in ("warn", "fail"):
            lines.append(f"  {'':<12} → {_escape(f.fix)}")
    fails = sum(f.status == "fail" for f in findings)
    warns = sum(f.status == "warn" for f in findings)
    lines.append(f"{fails} fault(s), {warns} warning(s)" if fails or warns else "no faults found")
    return "\n".join(lines)


def _escape(text: str) -> str:
    return text.replace("[", r"\[")


def main(as_json: bool = False, quiet: bool = False, settings: AppSettings | None = None) -> int:
    """What the ``doctor`` command runs: print the report, return the exit status."""
    from apps.settings import get_settings
    from domainllm.common import console

    findings = run_doctor(settings or get_settings())
    if as_json:
        print(report(findings, as_json=True))
    else:
        console.print(report(findings, quiet=quiet), highlight=False, soft_wrap=True)
    return exit_status(findings)
