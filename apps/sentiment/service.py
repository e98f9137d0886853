"""The monitor's moving parts bundled per namespace: settings, rules, Redis stores, the dispatcher.

The API, the CLI and the worker tasks all build one ``SentimentContext`` and call its methods, so
each way in and each scheduled job runs the same code. A namespace is a separate set of Redis keys
(the live monitor uses ``sentiment``; a replay or a test uses its own).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
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
from apps.sentiment.items import NewsItem
from apps.sentiment.monitor import run_monitor
from apps.sentiment.settings import SentimentSettings
from apps.sentiment.store import NewsStore
from apps.tenants.models import ModelRouter
from core.config import Settings
from core.errors import ConflictError, InvalidRequestError, NotFoundError
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
    # which version of the tenant's sentiment adapter labels each item (apps.tenants.models)
    router: ModelRouter | None = field(default=None, repr=False)

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

    def hand_on_alert(self, alert: Alert, targets: list[str]) -> None:
        """Queue a new alert's deliveries (its outbox entries) now; if this fails, or the process dies
        first, beat's outbox drain queues them."""
        self._queue_deliveries([(alert.id, t) for t in targets])

    def _queue_deliveries(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Queue each (alert, target) and then drop its outbox entry; stop at the first that cannot be
        queued (the broker is down): the rest stay in the outbox. Returns those queued."""
        queued: list[tuple[str, str]] = []
        if self.dispatcher is None:
            return queued
        for alert_id, target in pairs:
            try:
                self.dispatcher.deliver(alert_id, target, namespace=self.namespace)
            except Exception as exc:  # whatever the broker raised: the outbox keeps the rest for the drain
                log.warning("delivery of %s to %s not queued (%s); left in the outbox", alert_id, target, exc)
                break
            self.alerts.outbox_done(alert_id, target)
            queued.append((alert_id, target))
        return queued

    def monitor(self, now: float | None = None) -> list[Alert]:
        # an alert is stored with its deliveries' outbox entries only where they can be sent (a context
        # with no dispatcher, such as a bare replay, delivers nothing, as before)
        targets = self.delivery_settings().targets() if self.dispatcher is not None else []
        return run_monitor(self.store, self.alerts, self.config, now, targets=targets,
                           on_alert=lambda alert: self.hand_on_alert(alert, targets))  # fmt: skip

    def drain_outbox(self, now: float | None = None) -> list[tuple[str, str]]:
        """Queue the deliveries left in the outbox for ``outbox_grace_s`` (a monitor that died between
        firing and queuing, a broker that was down); run by beat. Idempotent: an entry is taken by one
        drain at a time, and a delivery queued twice is sent once (``deliver`` claims and checks)."""
        if self.dispatcher is None:
            return []
        return self._queue_deliveries(self.alerts.take_outbox(self.settings.outbox_grace_s, now=now))

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

    def label_feedback(
        self,
        *,
        label: str,
        item_id: str | None = None,
        text: str | None = None,
        model: str | None = None,
        given: str | None = None,
        entity: str | None = None,
    ) -> dict[str, Any]:
        """An analyst's right label for a stored item (or a classified text): counted as correct or
        incorrect for the model version that gave its label (the A/B report), and kept as a labelled
        row that ``corrections_csv`` hands back as a training file in the documented format."""
        if (item_id is None) == (text is None):
            raise InvalidRequestError("send either item_id (a stored news item) or text (with model and given)")
        if item_id is not None:
            (record,) = self.store.get([item_id])
            if record is None:
                raise NotFoundError(f"no news item {item_id!r}")
            enrichment = record.get("enrichment")
            if not enrichment:
                raise ConflictError(f"news item {item_id!r} is not labelled yet; retry once it is enriched")
            item = NewsItem.from_dict({k: v for k, v in record.items() if k != "enrichment"})
            text, model, given = item.text, enrichment.get("model"), enrichment.get("label")
        elif model is None or given is None:
            raise InvalidRequestError("with text, say which model labelled it and the label it gave (model, given)")
        correct = given == label
        if self.router is not None:
            self.router.outcome(model, "correct" if correct else "incorrect")
        row = {"text": text, "label": label, "entity": entity or "", "model": model, "at": time.time()}
        digest = hashlib.sha256(str(text).encode("utf-8")).hexdigest()[:20]
        self.store.r.hset(self.store.key("corrections"), digest, json.dumps(row))
        return {"correct": correct, "model": str(model)}

    def corrections_csv(self) -> str:
        """The analysts' labelled rows as a training file (text,label,entity): feedback back into training."""
        rows = [json.loads(v) for v in self.store.r.hvals(self.store.key("corrections"))]
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["text", "label", "entity"])
        for row in sorted(rows, key=lambda r: r["at"]):
            writer.writerow([row["text"], row["label"], row.get("entity", "")])
        return out.getvalue()

    def sweep(self, now: float | None = None) -> int:
        """Queue again the items pending for longer than the visibility timeout since they were last
        queued (a lost task, a worker that died past its retries), and drop buckets past retention.
        Returns the number re-queued.

        Not sooner: until then a queued copy may still be waiting or running (a worker that dies
        holding it has it redelivered by the broker after that same timeout), and each item taken is
        stamped as queued again, so the sweeper never stacks copies of one item."""
        now = time.time() if now is None else now
        stale: list[str] = []
        if self.dispatcher is not None:
            stale = self.store.take_stale(self.settings.visibility_timeout_s, now=now)
            if stale:
                log.warning("sweep: %d items pending for over %ds; queued again", len(stale),
                            self.settings.visibility_timeout_s)  # fmt: skip
                self.dispatcher.enrich(stale, namespace=self.namespace, config=self.config_arg)
        cutoff = now - self.config.retention_s
        for scope in self.store.active_scopes(0):
            self.store.trim(scope, cutoff, self.config.bucket_s)
        return len(stale)
