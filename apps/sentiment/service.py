"""The monitor's moving parts bundled per namespace: settings, rules, Redis stores, the dispatcher.

The API, the CLI and the worker tasks all build one ``SentimentContext`` and call its methods, so
each way in and each scheduled job runs the same code. A namespace is a separate set of Redis keys
(the live monitor uses ``sentiment``; a replay or a test uses its own).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from apps.sentiment.alerts import Alert, AlertStore
from apps.sentiment.config import MonitorConfig, load_monitor_config
from apps.sentiment.dispatch import Dispatcher
from apps.sentiment.feeds import PollResult, poll_feed
from apps.sentiment.ingest import IngestResult, ingest_file, normalize_all, store_items
from apps.sentiment.monitor import run_monitor
from apps.sentiment.settings import SentimentSettings
from apps.sentiment.store import NewsStore
from core.config import Settings
from core.redis_client import connect

log = logging.getLogger(__name__)
_CONFIGS: dict[tuple[str, float], MonitorConfig] = {}


def monitor_config(path: Path, shared_data_dir: Path) -> MonitorConfig:
    """The YAML at ``path``, loaded once per modification time."""
    key = (str(path.resolve()), path.stat().st_mtime if path.exists() else 0.0)
    if key not in _CONFIGS:
        _CONFIGS[key] = load_monitor_config(path, shared_data_dir)
    return _CONFIGS[key]


@dataclass
class SentimentContext:
    settings: SentimentSettings
    config: MonitorConfig
    store: NewsStore
    alerts: AlertStore
    dispatcher: Dispatcher | None = None
    config_arg: str | None = None  # the config path to hand on to tasks (None: the worker's default)
    feed_client: httpx.Client | None = field(default=None, repr=False)
    # the settings deliveries go by, read at each send: a tenant's webhook is set over the API
    delivery_source: Callable[[], SentimentSettings] | None = field(default=None, repr=False)

    @classmethod
    def build(
        cls,
        settings: SentimentSettings,
        core: Settings,
        *,
        namespace: str | None = None,
        config_path: str | Path | None = None,
        client: redis.Redis | None = None,
        dispatcher: Dispatcher | None = None,
    ) -> SentimentContext:
        path = Path(config_path) if config_path else settings.config_path
        client = client or connect(core.effective_redis_url, decode=True)
        ns = namespace or settings.namespace
        return cls(
            settings=settings,
            config=monitor_config(path, core.shared_data_dir),
            store=NewsStore(client, ns, item_ttl_s=settings.item_ttl_s),
            alerts=AlertStore(client, ns),
            dispatcher=dispatcher,
            config_arg=str(config_path) if config_path else None,
        )

    @property
    def namespace(self) -> str:
        return self.store.ns

    # ---- ingestion ---------------------------------------------------------------------------

    def hand_on(self, result: IngestResult) -> IngestResult:
        """Queue the new items for enrichment (they are in ``pending`` already, so none is lost if
        this fails: the sweeper queues them again)."""
        if result.new_ids and self.dispatcher is not None:
            self.dispatcher.enrich(result.new_ids, namespace=self.namespace, config=self.config_arg)
        return result

    def ingest_records(
        self, records: list[tuple[str, Any]], *, via: str, source: str, strict: bool = False
    ) -> IngestResult:
        items, rejected = normalize_all(records, self.settings, via=via, source=source, strict=strict)
        return self.hand_on(store_items(self.store, items, rejected, via))

    def ingest_file(self, path: Path) -> IngestResult:
        return self.hand_on(ingest_file(self.store, path, self.settings))

    def poll_feeds(self, urls: list[str] | None = None, now: float | None = None) -> list[PollResult]:
        results = []
        client = self.feed_client or httpx.Client(follow_redirects=True, max_redirects=5)
        try:
            for url in urls if urls is not None else self.settings.feeds:
                poll = poll_feed(self.store, url, self.settings, client, now)
                self.hand_on(poll.result)
                results.append(poll)
        finally:
            if self.feed_client is None:
                client.close()
        return results

    def scan_inbox(self) -> list[tuple[str, IngestResult | str]]:
        """Ingest each file dropped in the inbox, then move it to done/ (or failed/ with the reason
        logged). A crash between the two re-ingests the file next time: harmless, ids dedupe."""
        inbox = self.settings.inbox_dir
        if inbox is None or not inbox.is_dir():
            return []
        out: list[tuple[str, IngestResult | str]] = []
        for path in sorted(p for p in inbox.iterdir() if p.is_file() and not p.name.startswith(".")):
            try:
                result: IngestResult | str = self.ingest_file(path)
                folder = "done"
            except FileNotFoundError:  # another scan (beat and a manual run) took it first
                continue
            except Exception as exc:  # one bad file must not stop the others; it is kept aside with why
                log.warning("inbox file %s refused: %s", path.name, exc)
                result, folder = str(exc), "failed"
            (inbox / folder).mkdir(exist_ok=True)
            try:
                path.replace(inbox / folder / path.name)
            except FileNotFoundError:  # moved by a concurrent scan; its items deduped by id
                continue
            out.append((path.name, result))
        return out

    # ---- monitoring and delivery -------------------------------------------------------------

    def delivery_settings(self) -> SentimentSettings:
        """The settings with the delivery targets in force now (a tenant's own webhook included)."""
        return self.delivery_source() if self.delivery_source is not None else self.settings

    def hand_on_alert(self, alert: Alert) -> None:
        if self.dispatcher is None:
            return
        for target in self.delivery_settings().targets():
            self.dispatcher.deliver(alert.id, target, namespace=self.namespace)

    def monitor(self, now: float | None = None) -> list[Alert]:
        return run_monitor(self.store, self.alerts, self.config, now, on_alert=self.hand_on_alert)

    def resend(self, alert_id: str | None = None) -> list[tuple[str, str]]:
        """Send dead-lettered deliveries again (of one alert, or all); with an alert id, also any
        target that never succeeded. Returns the (alert, target) pairs queued."""
        pairs = self.alerts.take_dead_letters(alert_id)
        if alert_id is not None:
            done = self.alerts.delivery(alert_id)
            pairs += [(alert_id, t) for t in self.delivery_settings().targets()
                      if done.get(t, {}).get("state") != "sent" and (alert_id, t) not in pairs]  # fmt: skip
        if self.dispatcher is not None:
            for a, t in pairs:
                self.dispatcher.deliver(a, t, namespace=self.namespace)
        return pairs

    def sweep(self, now: float | None = None) -> int:
        """Queue again the items pending longer than the grace period (a lost task, a worker that
        died past its retries), and drop buckets past retention. Returns the number re-queued."""
        now = time.time() if now is None else now
        stale = self.store.pending(self.settings.pending_grace_s, now=now)
        if stale and self.dispatcher is not None:
            log.warning(
                "sweep: %d items pending for over %.0fs; queued again", len(stale), self.settings.pending_grace_s
            )
            self.dispatcher.enrich(stale, namespace=self.namespace, config=self.config_arg)
        cutoff = now - self.config.retention_s
        for scope in self.store.active_scopes(0):
            self.store.trim(scope, cutoff, self.config.bucket_s)
        return len(stale)
