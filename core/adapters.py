"""Named PEFT LoRA adapters on the one base model.

The registry owns the model object that inference runs on: the plain base model while no adapter
is loaded, a ``PeftModel`` wrapping it afterwards. LoRA layers wrap the base ``Linear`` modules in
place, so each adapter costs its own weights only (a few MB), never a copy of the base.

Not thread-safe by itself: the engine calls it from its one worker thread, between batches.
"""

from __future__ import annotations

import json
import logging
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.errors import AdapterLoadError, AdapterNotFoundError, ConflictError, InvalidRequestError

log = logging.getLogger(__name__)

BASE = "base"
PEFT_BASE = "__base__"  # PEFT's name for "no adapter" inside a mixed batch
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
CARD_FILE = "adapter_card.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
VERSIONED_RE = re.compile(r"^(?P<tenant>[a-z0-9][a-z0-9_-]{0,31})/(?P<name>[a-z0-9][a-z0-9_-]{0,63})@v(?P<version>[1-9][0-9]{0,5})$")
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


@dataclass
class AdapterInfo:
    name: str
    path: Path
    rank: int
    alpha: float
    target_modules: list[str]
    size_bytes: int
    loaded_at: float = field(default_factory=time.time)
    card: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.name,
            "path": str(self.path),
            "rank": self.rank,
            "alpha": self.alpha,
            "target_modules": self.target_modules,
            "size_bytes": self.size_bytes,
            "loaded_at": self.loaded_at,
            "card": self.card,
        }


def validate_name(name: str) -> str:
    if name in (BASE, PEFT_BASE):
        raise InvalidRequestError(f"{name!r} is reserved for the base model")
    if not NAME_RE.match(name):
        raise InvalidRequestError(
            f"adapter name {name!r} is invalid: use 1-64 of a-z, 0-9, '.', '_', '-', starting alphanumeric"
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


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """PEFT warns on routine operations (deleting the active adapter, a deprecated transformers
    property it reads); we handle those cases on purpose, so keep the known messages out of logs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Adapter .* was active which is now deleted")
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


class AdapterRegistry:
    def __init__(self, base_model: torch.nn.Module) -> None:
        self.base_model = base_model
        self._peft: Any = None  # peft.PeftModel once the first adapter is loaded
        self._adapters: dict[str, AdapterInfo] = {}

    @property
    def model(self) -> torch.nn.Module:
        """The module to run forward/generate on."""
        return self._peft if self._peft is not None else self.base_model

    @property
    def has_adapters(self) -> bool:
        return self._peft is not None

    def names(self) -> list[str]:
        return sorted(self._adapters)

    def info(self, name: str) -> AdapterInfo:
        if name not in self._adapters:
            raise AdapterNotFoundError(name, [BASE, *self.names()])
        return self._adapters[name]

    def all(self) -> list[AdapterInfo]:
        return [self._adapters[n] for n in self.names()]

    def resolve(self, name: str) -> str:
        """Map a request's model name to the name PEFT uses in ``adapter_names``; unknown names raise."""
        if name == BASE:
            return PEFT_BASE
        if name not in self._adapters:
            raise AdapterNotFoundError(name, [BASE, *self.names()])
        return name

    def load(self, name: str, path: Path) -> AdapterInfo:
        validate_name(name)
        if name in self._adapters:
            raise ConflictError(f"adapter {name!r} is already loaded; unload it first", name=name)
        path = Path(path)
        cfg = _read_adapter_config(name, path)
        first = self._peft is None
        try:
            with _quiet_peft():
                self._load_weights(name, path)
        except Exception as exc:  # any failure inside PEFT: undo, keep the loaded ones serving
            with _quiet_peft():
                self._rollback(name, first)
            raise AdapterLoadError(name, str(path), f"{type(exc).__name__}: {exc}") from exc
        info = AdapterInfo(
            name=name,
            path=path,
            rank=int(cfg.get("r", 0)),
            alpha=float(cfg.get("lora_alpha", 0)),
            target_modules=sorted(cfg.get("target_modules") or []),
            size_bytes=self._adapter_bytes(name),
            card=self._read_card(path),
        )
        self._adapters[name] = info
        log.info("loaded adapter %s from %s (%.1f MB)", name, path, info.size_bytes / 1e6)
        return info

    def _load_weights(self, name: str, path: Path) -> None:
        from peft import PeftModel

        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self.base_model, str(path), adapter_name=name)
        else:
            self._peft.load_adapter(str(path), adapter_name=name)
        self._peft.eval()

    def _rollback(self, name: str, first: bool) -> None:
        try:
            if self._peft is not None and name in self._peft.peft_config:
                if len(self._peft.peft_config) == 1:
                    self._peft.unload()
                    self._peft = None
                else:
                    self._peft.delete_adapter(name)
            elif first:
                self._strip_lora_layers()
        except Exception:  # pragma: no cover - best effort; the original error is what matters
            log.exception("rollback of adapter %s failed", name)

    def _strip_lora_layers(self) -> None:
        """Undo a first load that failed after PEFT had injected layers into the base model."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for parent in list(self.base_model.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, BaseTunerLayer):
                    setattr(parent, child_name, child.get_base_layer())
        if hasattr(self.base_model, "peft_config"):  # left behind by the failed PeftModel init
            del self.base_model.peft_config

    def unload(self, name: str) -> None:
        if name == BASE:
            raise InvalidRequestError("the base model cannot be unloaded")
        if name not in self._adapters:
            raise AdapterNotFoundError(name, [BASE, *self.names()])
        with _quiet_peft():
            self._remove(name)
        del self._adapters[name]
        log.info("unloaded adapter %s", name)

    def _remove(self, name: str) -> None:
        if len(self._adapters) == 1:
            # unload() removes the LoRA wrappers and hands back the untouched base model
            self.base_model = self._peft.unload()
            self._peft = None
        else:
            self._peft.delete_adapter(name)

    def _adapter_bytes(self, name: str) -> int:
        total = 0
        for pname, param in self._peft.named_parameters():
            if f".{name}." in pname or pname.endswith(f".{name}"):
                total += param.numel() * param.element_size()
        return total

    @staticmethod
    def _read_card(path: Path) -> dict[str, Any]:
        card_path = path / CARD_FILE
        if not card_path.is_file():
            return {}
        try:
            card = json.loads(card_path.read_text())
        except ValueError:
            log.warning("ignoring unreadable adapter card %s", card_path)
            return {}
        return card if isinstance(card, dict) else {}

    def discover(self, folder: Path) -> dict[str, str]:
        """Load every adapter folder under ``folder``; return {name: error} for the ones that failed."""
        failures: dict[str, str] = {}
        if not folder.is_dir():
            return failures
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            if not (sub / "adapter_config.json").exists() or sub.name in self._adapters:
                continue
            try:
                self.load(sub.name, sub)
            except (AdapterLoadError, InvalidRequestError) as exc:
                log.error("skipping adapter %s: %s", sub.name, exc)
                failures[sub.name] = str(exc)
        return failures
