"""The adapters loaded and unloaded at run time (``POST``/``DELETE /v1/adapters``), the same on every
replica.

    {ns}:set                  hash     name -> JSON {"path": folder, or null once unloaded, "at": time}
    {ns}:version              int      bumped after each change (``core.shared_state``)
    {ns}:version:changed      pub/sub  the new version

The replica that takes the request changes its own engine first, so the caller gets the same
answer as before (201, 404, 409, 422), then records the change and bumps the version. When Redis
does not answer, the change stands on this replica and is recorded as soon as Redis is back (before
this replica reconciles, so it never undoes its own change). Every replica
runs one listener (``follow``) that reconciles its engine with the record: it loads what is recorded
and not registered, and unloads what is recorded as unloaded and still registered. It reconciles on
start and after every reconnect as well, so a replica started later, or cut off from Redis for a
while, ends with the same set. A folder under the adapters folder is recorded relative to it, so
replicas that mount the shared store at different paths find it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import redis

from apps.settings import AppSettings
from core.adapters import AdapterInfo
from core.errors import DomainLLMError
from core.interface import Engine
from core.shared_state import SharedVersion, Subscriber

log = logging.getLogger(__name__)


class AdapterSet:
    def __init__(self, client: redis.Redis, namespace: str, adapters_root: Path) -> None:
        self.r: Any = client
        self.ns = namespace
        self.root = adapters_root
        self.version = SharedVersion(client, f"{namespace}:version")
        self._changing = threading.Lock()  # this replica's changes and its reconciling, one at a time
        self._unrecorded: dict[str, Path | None] = {}  # changes made here while Redis did not answer

    @classmethod
    def of(cls, settings: AppSettings, client: redis.Redis) -> AdapterSet:
        return cls(client, f"{settings.tenancy_namespace}:adapters:runtime", settings.adapters_path)

    @property
    def key(self) -> str:
        return f"{self.ns}:set"

    def _record(self, name: str, folder: Path | None) -> int:
        stored = None
        if folder is not None:
            stored = str(folder.relative_to(self.root)) if folder.is_relative_to(self.root) else str(folder)
        self.r.hset(self.key, name, json.dumps({"path": stored, "at": time.time()}))
        return self.version.bump()

    def _record_or_keep(self, name: str, folder: Path | None) -> None:
        self._unrecorded[name] = folder
        try:
            self._record_unrecorded()
        except redis.RedisError as exc:
            log.warning(
                "adapter %s changed on this replica only for now (Redis: %s); recorded once it answers", name, exc
            )

    def _record_unrecorded(self) -> None:
        while self._unrecorded:
            name, folder = next(iter(self._unrecorded.items()))
            self._record(name, folder)
            del self._unrecorded[name]

    def load(self, engine: Engine, name: str, folder: Path) -> AdapterInfo:
        """Load ``name`` from ``folder`` here (its errors are the caller's), then on every replica."""
        with self._changing:
            info = engine.load_adapter(name, folder)
            self._record_or_keep(name, folder)
        return info

    def unload(self, engine: Engine, name: str) -> None:
        """Unload ``name`` here (404 if it is not loaded), then on every replica."""
        with self._changing:
            engine.unload_adapter(name)
            self._record_or_keep(name, None)

    def recorded(self) -> dict[str, Path | None]:
        """Every adapter changed at run time: name -> its folder, or None when it was unloaded last."""
        out: dict[str, Path | None] = {}
        for name, raw in self.r.hgetall(self.key).items():
            path = json.loads(raw)["path"]
            out[name.decode() if isinstance(name, bytes) else name] = None if path is None else self.root / path
        return out

    def reconcile(self, engine: Engine) -> list[str]:
        """Bring ``engine``'s adapters in line with the record; what changed (``+name``, ``-name``).
        A folder that fails to load here is logged and left, like one that fails at start."""
        if not engine.ready:
            return []  # the warm-up reconciles once the engine is up
        changed = []
        with self._changing:
            self._record_unrecorded()  # first, or this replica would undo its own unrecorded change
            registered = {i.name: i.path for i in engine.adapters()}
            for name, folder in sorted(self.recorded().items()):
                try:
                    if folder is not None and name not in registered:
                        engine.load_adapter(name, folder)
                        changed.append(f"+{name}")
                    elif folder is None and name in registered:
                        engine.unload_adapter(name)
                        changed.append(f"-{name}")
                except (DomainLLMError, OSError) as exc:
                    log.error("adapter %s not %s here: %s", name, "loaded" if folder else "unloaded", exc)
        if changed:
            log.info("adapters in step with the other replicas: %s", " ".join(changed))
        return changed

    def follow(self, engine: Engine) -> Subscriber:
        """Start this replica's listener: reconcile now (if the engine is up), on each change, on each reconnect."""

        def on_change(_channel: str, _message: str | None) -> None:
            self.reconcile(engine)

        return Subscriber(self.r, [self.version.channel], on_change, name="adapter-set").start()
