"""Named PEFT LoRA adapters on the one base model: many registered, some resident, paged by LRU.

The registry owns the model object that inference runs on: the plain base model while no adapter
is resident, a ``PeftModel`` wrapping it afterwards. LoRA layers wrap the base ``Linear`` modules
in place, so each adapter costs its own weights only (a few MB), never a copy of the base.

Two states, as in LoRAX: an adapter is *registered* (its folder checked: config, weights present
and of the configured rank; it can be served) and, while in use, *resident* (its weights in PEFT's
layers). ``register`` checks a folder without loading it; ``load`` registers and makes resident at
once; ``acquire`` (before each batch) makes the batch's adapters resident, loading the missing ones
("cold loads") and, past ``max_resident``, evicting the least recently used resident adapters the
batch does not need (their weights freed, their registration kept: a later request loads them
again). A tenant's adapter version ``tenant/name@vN`` needs no registration: it is looked up in the
artefact store (``version_dir`` under ``store``) on first use, so every replica serves a version a
training job wrote there.

Served names (``sentiment``, ``acme/support@v3``) are what callers and errors see; PEFT's adapter
names must be module-dict keys (no '.', '/', '@'), so each served name maps to an internal key
(``peft_key``) inside the registry and the LoRA router.

Threads: every mutation (register, load, acquire, evict, unload) runs on the engine's one worker
thread, between batches (``core.batching``); the read-only questions (``names``, ``info``,
``locate``, ``servable``) may come from any thread and see a consistent snapshot under a lock.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core import metrics
from core.errors import (
    AdapterLoadError,
    AdapterNotFoundError,
    ConflictError,
    DomainLLMError,
    InvalidRequestError,
)

log = logging.getLogger(__name__)

BASE = "base"
PEFT_BASE = "__base__"  # PEFT's name for "no adapter" inside a mixed batch
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
CARD_FILE = "adapter_card.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")  # as apps.tenants.store.TENANT_ID
VERSIONED_RE = re.compile(
    r"^(?P<tenant>[a-z0-9][a-z0-9-]{0,39})/(?P<name>[a-z0-9][a-z0-9_-]{0,63})@v(?P<version>[1-9][0-9]{0,5})$"
)
TENANTS_DIR = "tenants"  # under the adapters folder: tenants/<tenant>/<name>/v<N>/, the shared artefact store


@dataclass(frozen=True)
class AdapterRef:
    """A served adapter's name taken apart: ``name`` (a shared adapter) or ``tenant/name@vN``."""

    name: str
    tenant: str | None = None
    version: int | None = None

    def __str__(self) -> str:
        return self.name if self.tenant is None else versioned_name(self.tenant, self.name, self.version or 0)


def versioned_name(tenant: str, name: str, version: int) -> str:
    """The served name of a tenant's adapter version: ``tenant/name@vN``."""
    return f"{tenant}/{name}@v{version}"


def parse_adapter_name(text: str) -> AdapterRef | None:
    """``tenant/name@vN`` -> its parts; a plain adapter name -> ``AdapterRef(name)``; else None."""
    m = VERSIONED_RE.match(text)
    if m:
        return AdapterRef(m["name"], m["tenant"], int(m["version"]))
    return AdapterRef(text) if NAME_RE.match(text) and text not in (BASE, PEFT_BASE) else None


def version_dir(adapters_root: Path, tenant: str, name: str, version: int) -> Path:
    """Where a tenant's adapter version lives in the artefact store (read-only once written)."""
    return adapters_root / TENANTS_DIR / tenant / name / f"v{version}"


MAX_LISTED = 50  # names an AdapterNotFoundError lists (a registry may hold thousands)
ESTIMATED_ITEMSIZE = 4  # PEFT keeps LoRA weights in float32 (autocast_adapter_dtype), whatever the file holds
SLOT_PREFIX = "slot"  # PEFT's adapter names: slot0, slot1, ... (served names never reach PEFT)
# adapter_config.json fields that do not change the layers PEFT builds or what they compute at
# inference: two adapters equal in every other field fit the same slot
LAYOUT_FREE_FIELDS = frozenset(
    {
        "auto_mapping",
        "base_model_name_or_path",
        "corda_config",
        "eva_config",
        "inference_mode",
        "init_lora_weights",
        "loftq_config",
        "lora_dropout",  # a no-op at inference
        "megatron_config",
        "megatron_core",
        "peft_version",
        "revision",
        "runtime_config",
        "task_type",
    }
)


def _target_modules(cfg: dict[str, Any]) -> list[str]:
    targets = cfg.get("target_modules") or []
    return [targets] if isinstance(targets, str) else sorted(targets)  # a string is one regular expression


def slot_layout(cfg: dict[str, Any]) -> str | None:
    """What a PEFT slot must have been built from to take this adapter's weights in place (its
    config without the fields in ``LAYOUT_FREE_FIELDS``, as canonical JSON); None for adapters whose
    layers hold more than LoRA matrices (DoRA, extra modules or tokens), which always load through PEFT."""
    if cfg.get("use_dora") or cfg.get("modules_to_save") or cfg.get("trainable_token_indices"):
        return None
    kept = {k: sorted(v) if k == "target_modules" and isinstance(v, list) else v for k, v in cfg.items()}
    return json.dumps({k: v for k, v in kept.items() if k not in LAYOUT_FREE_FIELDS}, sort_keys=True)


@dataclass
class AdapterInfo:
    name: str  # the served name
    path: Path
    rank: int
    alpha: float
    target_modules: list[str]
    size_bytes: int  # measured once resident; until then estimated from the weights file's header
    loaded_at: float = field(default_factory=time.time)  # when it was registered
    card: dict[str, Any] = field(default_factory=dict)
    resident: bool = False
    key: str = ""  # PEFT's name for the slot holding its weights while resident ("" when not)
    layout: str | None = None  # see slot_layout

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.name,
            "path": str(self.path),
            "rank": self.rank,
            "alpha": self.alpha,
            "target_modules": self.target_modules,
            "size_bytes": self.size_bytes,
            "loaded_at": self.loaded_at,
            "resident": self.resident,
            "card": self.card,
        }


def validate_name(name: str) -> str:
    """A name an admin may load an adapter under: a plain name, or a tenant's ``tenant/name@vN``."""
    if name in (BASE, PEFT_BASE):
        raise InvalidRequestError(f"{name!r} is reserved for the base model")
    if not (NAME_RE.match(name) or VERSIONED_RE.match(name)):
        raise InvalidRequestError(
            f"adapter name {name!r} is invalid: use 1-64 of a-z, 0-9, '.', '_', '-', starting alphanumeric, "
            "or tenant/name@vN"
        )
    return name


def _read_adapter_config(name: str, path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise AdapterLoadError(name, str(path), "folder does not exist")
    cfg_path = path / "adapter_config.json"
    if not cfg_path.is_file():
        raise AdapterLoadError(name, str(path), "adapter_config.json is missing")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterLoadError(name, str(path), f"adapter_config.json is not valid JSON ({exc})") from exc
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        raise AdapterLoadError(name, str(path), "adapter_config.json does not describe a LoRA adapter")
    if not any((path / w).is_file() for w in WEIGHT_FILES):
        raise AdapterLoadError(name, str(path), f"no weights file ({' or '.join(WEIGHT_FILES)})")
    return cfg


def _safetensors_header(file: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (names, dtypes, shapes), read without the tensors."""
    with file.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if not 2 <= size <= 100_000_000:
            raise ValueError("no safetensors header")
        header = json.loads(f.read(size))
    if not isinstance(header, dict):
        raise ValueError("the safetensors header is not an object")
    header.pop("__metadata__", None)
    end = max((int(t["data_offsets"][1]) for t in header.values()), default=0)
    if file.stat().st_size < 8 + size + end:
        raise ValueError("the file is shorter than its header says (truncated?)")
    return header


def _check_weights(name: str, path: Path, cfg: dict[str, Any]) -> int:
    """Check the weights file without loading it: a readable safetensors header holding LoRA tensors
    of the configured rank. Returns the estimated bytes once loaded (0 for a pickled ``.bin``,
    which cannot be read without unpickling it; PEFT checks it on first load)."""
    file = path / WEIGHT_FILES[0]
    if not file.is_file():
        return 0
    try:
        header = _safetensors_header(file)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise AdapterLoadError(name, str(path), f"{file.name} is not a readable safetensors file ({exc})") from exc
    lora = {k: v for k, v in header.items() if ".lora_A" in k or ".lora_B" in k}
    if not lora:
        raise AdapterLoadError(name, str(path), f"{file.name} holds no LoRA tensors")
    rank = cfg.get("r")
    if isinstance(rank, int) and not cfg.get("rank_pattern"):
        for key, tensor in lora.items():
            shape = tensor.get("shape") or []
            got = shape[0] if ".lora_A" in key else shape[1] if len(shape) > 1 else None
            if got is not None and got != rank:
                raise AdapterLoadError(name, str(path), f"{key} has rank {got} but adapter_config.json says r={rank}")
    numel = 0
    for tensor in header.values():
        count = 1
        for dim in tensor.get("shape") or []:
            count *= int(dim)
        numel += count
    return numel * ESTIMATED_ITEMSIZE


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """An adapter folder's weights as PEFT saved them (names without the adapter's name), on CPU."""
    file = path / WEIGHT_FILES[0]
    if file.is_file():
        from safetensors.torch import load_file

        return load_file(str(file), device="cpu")
    weights: dict[str, torch.Tensor] = torch.load(path / WEIGHT_FILES[1], map_location="cpu", weights_only=True)
    return weights


def _read_lora_config(path: Path) -> Any:
    from peft import LoraConfig

    config = LoraConfig.from_pretrained(str(path))
    config.inference_mode = True
    return config


def read_card(path: Path) -> dict[str, Any]:
    """An adapter folder's card (``adapter_card.json``), or {} when absent or unreadable."""
    card_path = path / CARD_FILE
    if not card_path.is_file():
        return {}
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError):
        log.warning("ignoring unreadable adapter card %s", card_path)
        return {}
    return card if isinstance(card, dict) else {}


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """PEFT warns on routine operations (deleting the active adapter, a deprecated transformers
    property it reads); we handle those cases on purpose, so keep the known messages out of logs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Adapter .* was active which is now deleted")
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


class AdapterRegistry:
    """The adapters one engine serves. ``max_resident`` bounds the adapters in memory (0: no bound);
    ``store`` is the artefact store's adapters folder, where ``tenant/name@vN`` are looked up."""

    def __init__(self, base_model: torch.nn.Module, *, max_resident: int = 0, store: Path | None = None) -> None:
        if max_resident < 0:
            raise ValueError("max_resident must be >= 0 (0: no limit)")
        self.base_model = base_model
        self.max_resident = max_resident
        self.store = store
        self._peft: Any = None  # peft.PeftModel while an adapter is resident
        self._adapters: dict[str, AdapterInfo] = {}  # served name -> info
        self._lru: OrderedDict[str, None] = OrderedDict()  # resident served names, least recently used first
        self._lock = threading.RLock()  # readers on other threads; every writer is the engine thread
        self._frozen: str | None = None  # why the set of weights can no longer change (int8), if it cannot
        self._next_slot = 0
        self._slots: dict[str, dict[str, torch.nn.Parameter]] = {}  # slot -> its parameters (see _slot_params)
        self.cold_loads = 0  # on-demand loads (acquire), for tests and benches; the metrics count them too
        self.evictions = 0
        self.slot_reuses = 0  # cold loads written into an evicted adapter's slot (see _reuse_slot)

    # ---- questions (any thread) -------------------------------------------------------------------

    @property
    def model(self) -> torch.nn.Module:
        """The module to run forward/generate on."""
        return self._peft if self._peft is not None else self.base_model

    @property
    def has_adapters(self) -> bool:
        """An adapter is resident (the model is a PeftModel)."""
        return self._peft is not None

    def names(self) -> list[str]:
        """The registered served names, sorted."""
        with self._lock:
            return sorted(self._adapters)

    def resident_names(self) -> list[str]:
        """The resident served names, least recently used first."""
        with self._lock:
            return list(self._lru)

    def is_resident(self, name: str) -> bool:
        with self._lock:
            return name in self._lru

    def info(self, name: str) -> AdapterInfo:
        with self._lock:
            if name not in self._adapters:
                raise self._not_found(name)
            return self._adapters[name]

    def all(self) -> list[AdapterInfo]:
        with self._lock:
            return [self._adapters[n] for n in sorted(self._adapters)]

    def _not_found(self, name: str) -> AdapterNotFoundError:
        names = self.names()
        listed = [BASE, *names[:MAX_LISTED]] + (
            [f"... {len(names) - MAX_LISTED} more"] if len(names) > MAX_LISTED else []
        )
        return AdapterNotFoundError(name, listed)

    def store_dir(self, name: str) -> Path | None:
        """The artefact-store folder of a tenant's adapter version ``tenant/name@vN`` when it holds an
        adapter (its config and weights); None for other names or an empty folder."""
        ref = parse_adapter_name(name)
        if self.store is None or ref is None or ref.tenant is None or ref.version is None:
            return None
        folder = version_dir(self.store, ref.tenant, ref.name, ref.version)
        try:
            ok = (folder / "adapter_config.json").is_file() and any((folder / w).is_file() for w in WEIGHT_FILES)
        except OSError:
            return None
        return folder if ok else None

    def locate(self, name: str) -> Path | None:
        """The folder ``name`` is served from: a registered adapter's, else its artefact-store folder;
        None when it is not known here. Reads only: registration waits for the engine thread."""
        with self._lock:
            info = self._adapters.get(name)
        return info.path if info is not None else self.store_dir(name)

    def servable(self, name: str) -> None:
        """Raise unless a request for ``name`` can be served: ``AdapterNotFoundError`` (404) for an
        unknown name, ``InvalidRequestError`` (400) for a store version the engine cannot load now."""
        if name == BASE:
            return
        with self._lock:
            if name in self._adapters:
                return
        if self.store_dir(name) is None:
            raise self._not_found(name)
        if self._frozen:
            raise InvalidRequestError(f"cannot serve {name!r}: {self._frozen}", name=name)

    def resolve(self, name: str) -> str:
        """A request's model name -> PEFT's name in ``adapter_names`` (``acquire`` it first)."""
        if name == BASE:
            return PEFT_BASE
        with self._lock:
            info = self._adapters.get(name)
            if info is None:
                raise self._not_found(name)
            if name not in self._lru:
                raise RuntimeError(f"adapter {name!r} is not resident: acquire() it before the batch runs")
            return info.key

    def groups(self, names: list[str]) -> list[list[int]]:
        """Row indices of the batches to run so that none needs more than ``max_resident`` adapters
        (row i uses ``names[i]``; ``BASE`` needs none). One group while the batch fits; else the
        resident adapters' rows first (no load), then the others, ``max_resident`` adapters a group."""
        adapters = list(dict.fromkeys(n for n in names if n != BASE))
        if not self.max_resident or len(adapters) <= self.max_resident or self._frozen:
            return [list(range(len(names)))]
        with self._lock:
            adapters.sort(key=lambda n: n not in self._lru)  # stable: resident ones first
        group_of = {n: i // self.max_resident for i, n in enumerate(adapters)}
        groups: list[list[int]] = [[] for _ in range(max(group_of.values()) + 1)]
        for i, n in enumerate(names):
            groups[group_of.get(n, 0)].append(i)
        return groups

    # ---- changes (the engine thread) --------------------------------------------------------------

    def freeze(self, reason: str) -> None:
        """From now on no adapter is loaded, registered or evicted (``reason`` says why, in errors):
        the int8 base, whose quantised Linears PEFT cannot wrap."""
        self._frozen = reason

    def register(self, name: str, path: Path) -> AdapterInfo:
        """Check ``path`` (config, weights present and of the configured rank) and serve it as ``name``
        from the next batch on; its weights load on first use. 409 if ``name`` is taken."""
        validate_name(name)
        if self._frozen:
            raise InvalidRequestError(f"cannot add adapter {name!r}: {self._frozen}", name=name)
        with self._lock:
            if name in self._adapters:
                raise ConflictError(f"adapter {name!r} is already loaded; unload it first", name=name)
        path = Path(path)
        cfg = _read_adapter_config(name, path)
        estimate = _check_weights(name, path, cfg)
        info = AdapterInfo(
            name=name,
            path=path,
            rank=int(cfg.get("r", 0)),
            alpha=float(cfg.get("lora_alpha", 0)),
            target_modules=_target_modules(cfg),
            size_bytes=estimate,
            card=read_card(path),
            layout=slot_layout(cfg),
        )
        with self._lock:
            if name in self._adapters:  # pragma: no cover - one writer thread; kept for safety
                raise ConflictError(f"adapter {name!r} is already loaded; unload it first", name=name)
            self._adapters[name] = info
        self._publish()
        log.info("registered adapter %s from %s", name, path)
        return info

    def load(self, name: str, path: Path) -> AdapterInfo:
        """Register ``name`` and make it resident now (evicting by LRU past the budget); a folder
        that fails to load is unregistered again and the resident adapters keep serving."""
        info = self.register(name, path)
        try:
            self._make_resident([name], needed={name}, cold=False)
        except AdapterLoadError:
            with self._lock:
                self._adapters.pop(name, None)
            self._publish()
            raise
        return info

    def acquire(self, names: Iterable[str]) -> dict[str, DomainLLMError]:
        """Make ``names`` resident for the batch about to run: register store versions on first use,
        load the missing ones, and evict least recently used adapters the batch does not need while
        over budget. Returns {name: error} for the names that cannot be served (unknown: 404; a
        folder that fails to load: 422); the others are resident."""
        wanted = list(dict.fromkeys(n for n in names if n != BASE))
        failures: dict[str, DomainLLMError] = {}
        for name in wanted:
            with self._lock:
                known = name in self._adapters
            if known:
                continue
            folder = self.store_dir(name)
            if folder is None:
                failures[name] = self._not_found(name)
                continue
            try:
                self.register(name, folder)
            except DomainLLMError as exc:
                failures[name] = exc
        needed = {n for n in wanted if n not in failures}
        with self._lock:
            missing = [n for n in wanted if n in needed and n not in self._lru]
        for name in missing:
            try:
                self._make_resident([name], needed=needed, cold=True)
            except DomainLLMError as exc:
                failures[name] = exc
                needed.discard(name)
        with self._lock:
            for name in wanted:
                if name in self._lru:
                    self._lru.move_to_end(name)
        self._shrink(keep=needed)
        return failures

    def _make_resident(self, names: list[str], *, needed: set[str], cold: bool) -> None:
        for name in names:
            with self._lock:
                if name in self._lru:
                    continue
                info = self._adapters[name]
            if self._frozen:
                raise InvalidRequestError(f"cannot load adapter {name!r}: {self._frozen}", name=name)
            started = time.perf_counter()
            reused = self._reuse_slot(info, needed)
            if not reused:
                # room first (never down to no adapter at all: dropping PEFT's wrapper costs a re-wrap)
                self._shrink(keep=needed, room=1, floor=1)
                self._load_weights_of(info)
            seconds = time.perf_counter() - started
            if cold:
                self.cold_loads += 1
                metrics.ADAPTER_COLD_LOADS.labels(name).inc()
                metrics.ADAPTER_COLD_LOAD_SECONDS.observe(seconds)
            log.info(
                "%s adapter %s from %s into %s %s in %.0f ms (%.1f MB)",
                "cold-loaded" if cold else "loaded",
                name,
                info.path,
                "reused slot" if reused else "new slot",
                info.key,
                seconds * 1000,
                info.size_bytes / 1e6,
            )
        self._shrink(keep=needed)
        self._publish()

    def _reuse_slot(self, info: AdapterInfo, needed: set[str]) -> bool:
        """At the budget, write ``info``'s weights over the least recently used adapter's, in place,
        when its slot was built for the same layout (``slot_layout``): a copy of a few MB instead of
        PEFT's delete and load, which rebuild the LoRA layers and walk the whole model (about 0.1-1 s
        on 2 cores, against a few ms). False when no such slot is free; nothing changed then."""
        if not self.max_resident or info.layout is None or self._peft is None:
            return False
        with self._lock:
            if len(self._lru) < self.max_resident:
                return False
            victim_name = next((n for n in self._lru if n not in needed), None)
            victim = self._adapters.get(victim_name) if victim_name is not None else None
        if victim is None or victim.layout != info.layout:
            return False
        slot = self._slot_params(victim.key)
        try:
            state = _read_weights(info.path)
            config = _read_lora_config(info.path)
        except Exception as exc:  # an unreadable folder: the request fails, the victim keeps its slot
            raise AdapterLoadError(info.name, str(info.path), f"{type(exc).__name__}: {exc}") from exc
        if state.keys() != slot.keys() or any(state[k].shape != p.shape for k, p in slot.items()):
            return False  # same config, other tensors (another base?): PEFT decides, and explains
        with torch.no_grad():
            for k, param in slot.items():
                param.copy_(state[k])
        # a new config object: the LoRA router notices the slot's weights changed (core.lora_stack)
        self._peft.peft_config[victim.key] = config
        with self._lock:
            self._lru.pop(victim.name, None)
            victim.resident, info.key, victim.key = False, victim.key, ""
            info.size_bytes, info.resident = victim.size_bytes, True
            self._lru[info.name] = None
        self.evictions += 1
        self.slot_reuses += 1
        metrics.ADAPTER_EVICTIONS.labels(victim.name).inc()
        log.info("evicted adapter %s (still registered) for %s", victim.name, info.name)
        return True

    def _slot_params(self, key: str) -> dict[str, torch.nn.Parameter]:
        """A slot's parameters by the names PEFT saves them under (the slot's name left out)."""
        params = self._slots.get(key)
        if params is None:
            marker = f".{key}."
            params = {n.replace(marker, "."): p for n, p in self._peft.named_parameters() if marker in n}
            self._slots[key] = params
        return params

    def _shrink(self, *, keep: set[str], room: int = 0, floor: int = 0) -> None:
        """Evict least recently used resident adapters not in ``keep`` until ``room`` more fit in the
        budget, keeping at least ``floor`` resident."""
        if not self.max_resident or self._frozen:
            return
        while True:
            with self._lock:
                over = len(self._lru) + room > self.max_resident and len(self._lru) > floor
                victim = next((n for n in self._lru if n not in keep), None) if over else None
            if victim is None:
                return
            self._evict(victim)
            self.evictions += 1
            metrics.ADAPTER_EVICTIONS.labels(victim).inc()

    def _load_weights_of(self, info: AdapterInfo) -> None:
        """Load ``info`` through PEFT into a new slot."""
        first = self._peft is None
        key = f"{SLOT_PREFIX}{self._next_slot}"
        self._next_slot += 1
        try:
            with _quiet_peft():
                self._load_weights(key, info.path)
        except Exception as exc:  # any failure inside PEFT: undo, keep the resident ones serving
            with _quiet_peft():
                self._rollback(key, first)
            raise AdapterLoadError(info.name, str(info.path), f"{type(exc).__name__}: {exc}") from exc
        size = self._adapter_bytes(key)
        with self._lock:
            info.key, info.size_bytes, info.resident = key, size, True
            self._lru[info.name] = None

    def _load_weights(self, key: str, path: Path) -> None:
        from peft import PeftModel

        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self.base_model, str(path), adapter_name=key)
        else:
            self._peft.load_adapter(str(path), adapter_name=key)
        self._peft.eval()

    def _rollback(self, key: str, first: bool) -> None:
        try:
            if self._peft is not None and key in self._peft.peft_config:
                if len(self._peft.peft_config) == 1:
                    self.base_model = self._peft.unload()
                    self._peft = None
                else:
                    self._peft.delete_adapter(key)
            elif first:
                self._strip_lora_layers()
        except Exception:  # pragma: no cover - best effort; the original error is what matters
            log.exception("rollback of adapter %s failed", key)

    def _strip_lora_layers(self) -> None:
        """Undo a first load that failed after PEFT had injected layers into the base model."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for parent in list(self.base_model.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, BaseTunerLayer):
                    setattr(parent, child_name, child.get_base_layer())
        if hasattr(self.base_model, "peft_config"):  # left behind by the failed PeftModel init
            del self.base_model.peft_config

    def evict(self, name: str) -> None:
        """Free a resident adapter's weights; it stays registered (its next request loads it again)."""
        with self._lock:
            if name not in self._adapters:
                raise self._not_found(name)
            resident = name in self._lru
        if resident:
            if self._frozen:
                raise InvalidRequestError(f"cannot evict adapter {name!r}: {self._frozen}", name=name)
            self._evict(name)
            self.evictions += 1
            metrics.ADAPTER_EVICTIONS.labels(name).inc()

    def _evict(self, name: str) -> None:
        with self._lock:
            info = self._adapters[name]
        with _quiet_peft():
            if len(self._peft.peft_config) == 1:
                # unload() removes the LoRA wrappers and hands back the untouched base model
                self.base_model = self._peft.unload()
                self._peft = None
            else:
                self._peft.delete_adapter(info.key)
        with self._lock:
            self._slots.pop(info.key, None)
            self._lru.pop(name, None)
            info.resident, info.key = False, ""
        self._publish()
        log.info("evicted adapter %s (still registered)", name)

    def unload(self, name: str) -> None:
        """Stop serving ``name``: its weights are freed and its registration dropped (later requests
        get 404; a store version is found again on its next request)."""
        if name == BASE:
            raise InvalidRequestError("the base model cannot be unloaded")
        with self._lock:
            if name not in self._adapters:
                raise self._not_found(name)
            resident = name in self._lru
        if resident:
            if self._frozen:
                raise InvalidRequestError(f"cannot unload adapter {name!r}: {self._frozen}", name=name)
            self._evict(name)
        with self._lock:
            del self._adapters[name]
        self._publish()
        log.info("unloaded adapter %s", name)

    def _adapter_bytes(self, key: str) -> int:
        total = 0
        for pname, param in self._peft.named_parameters():
            if f".{key}." in pname or pname.endswith(f".{key}"):
                total += param.numel() * param.element_size()
        return total

    def _publish(self) -> None:
        with self._lock:
            registered, resident = len(self._adapters), len(self._lru)
        metrics.ADAPTERS_LOADED.set(registered)
        metrics.ADAPTERS_RESIDENT.set(resident)

    def discover(self, folder: Path) -> dict[str, str]:
        """Register every adapter folder directly under ``folder`` (``tenants/`` is the artefact store,
        looked up per request) and make the first ones resident, up to the budget; return
        {name: error} for the folders that failed."""
        failures: dict[str, str] = {}
        if not folder.is_dir():
            return failures
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            if not (sub / "adapter_config.json").exists() or sub.name in self._adapters:
                continue
            try:
                info = self.register(sub.name, sub)
                if not self.max_resident or len(self._lru) < self.max_resident:
                    self._make_resident([info.name], needed={info.name}, cold=False)
            except (AdapterLoadError, InvalidRequestError) as exc:
                with self._lock:
                    self._adapters.pop(sub.name, None)
                log.error("skipping adapter %s: %s", sub.name, exc)
                failures[sub.name] = str(exc)
        self._publish()
        return failures
