"""What the API and the CLI call: the catalogue, the signals and the pipeline, wired to one Redis.

Writes are validated whole before anything is stored: a request with one bad event stores none of
them (the client fixes and resends the batch). Files are different: their good rows go in and the
bad ones come back in ``errors``, since a catalogue export with a few broken lines must not block
the rest.

The trained ranker is a file in the shared artefact store (``ranker_path``), one for every tenant,
written by ``domainllm recommend train-ranker`` through ``save_rankers``, which then bumps its version
key in Redis; every replica reads that key at most every half second and reloads the file when it
moved (``core.shared_state``).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import redis

from apps.recommend.catalogue import Catalogue
from apps.recommend.settings import RecommendSettings
from apps.recommend.signals import RedisSignals
from apps.recommend.users import stored_user_id
from apps.tenants.models import ModelRouter
from core.errors import InputTooLargeError, InvalidRequestError, NotFoundError
from core.interface import Engine
from core.shared_state import SharedVersion
from domains.recommend.index import EmbedFn
from domains.recommend.pipeline import Pipeline, PipelineConfig
from domains.recommend.ranking import Rankers
from domains.recommend.records import (
    Event,
    Item,
    RowError,
    parse_event,
    parse_events_text,
    parse_id,
    parse_item,
    parse_items_text,
)
from domains.recommend.rules import Filters
from domains.recommend.scoring import LLMScorer

log = logging.getLogger(__name__)

FEEDBACK_TYPES = ("click", "cart", "purchase")


def _check_batch(raw: list[Any], what: str, limit: int) -> None:
    """A request's batch of ``what``s (event, item) holds one to ``limit`` of them."""
    if not raw:
        raise InvalidRequestError(f"send at least one {what}")
    if len(raw) > limit:
        raise InputTooLargeError(
            f"{len(raw)} {what}s in one request; the limit is {limit}", limit=limit, actual=len(raw)
        )


class UnknownItemError(NotFoundError):
    error_type = "unknown_item"


class UnknownRecommendationError(NotFoundError):
    error_type = "unknown_recommendation"


def _errors(errors: list[RowError]) -> list[dict[str, str]]:
    return [asdict(e) for e in errors]


def ranker_version(client: redis.Redis, settings: RecommendSettings) -> SharedVersion:
    """The version key of the ranker file. Every tenant's service reads the same file, so the key is
    under the app's own prefix: a tenant's namespace is ``{base}.t-{tenant}`` (``tenant_namespace``)."""
    base = settings.namespace.partition(".t-")[0]
    return SharedVersion(client, f"{base}:ranker:version")


class RecommendService:
    def __init__(
        self,
        settings: RecommendSettings,
        client: redis.Redis,
        embed: EmbedFn,
        engine: Callable[[], Engine | None] | None = None,
        dim: int = 384,
    ) -> None:
        """``embed``: texts -> unit vectors (``engine.embed``, which runs on the engine thread);
        ``engine``: returns the engine when it is ready to score, else None (served without the LLM)."""
        self.settings = settings
        self.client: Any = client  # redis-py's sync/async union types are noise here
        self.ns = settings.namespace
        self.catalogue = Catalogue(client, settings.namespace, embed, dim)
        self.signals = RedisSignals(
            client,
            settings.namespace,
            half_life_s=settings.popularity_half_life_s,
            window=settings.covis_window,
            history_len=settings.history_len,
            user_ttl_s=settings.user_ttl_s,
        )
        self._engine: Callable[[], Engine | None] = engine or (lambda: None)
        self.router: ModelRouter | None = None  # the tenant's adapter route (set by the composition root)
        self._rankers: Rankers | None = None
        self._ranker_version = ranker_version(client, settings)
        self._ranker_watch = self._ranker_version.watch()

    def _key(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    def _user(self, user_id: str) -> str:
        """The id under which the user is stored: a pseudonym when the id is personal data."""
        return stored_user_id(user_id, self.ns, self.settings.pseudonym_key.get_secret_value().encode())

    def _users(self, events: list[Event]) -> list[Event]:
        return [replace(e, user_id=stored) if (stored := self._user(e.user_id)) != e.user_id else e for e in events]

    def rankers(self) -> Rankers:
        """The trained rankers, else the hand-set fallback; reloaded when their version key moved."""
        version = self._ranker_watch.check()  # read before loading: a save during the load bumps again
        if version is not None or self._rankers is None:
            self._rankers = Rankers.load(self.settings.ranker_path) or Rankers.fallback()
            if version is not None:
                self._ranker_watch.accept(version)
        return self._rankers

    def save_rankers(self, rankers: Rankers) -> int:
        """Save newly trained rankers where every replica reads them, and tell the replicas (the new
        version, returned); in force everywhere within a second."""
        rankers.save(self.settings.ranker_path)
        return self._ranker_version.bump()

    def pipeline(self, use_llm: bool = True, model: str | None = None) -> Pipeline:
        engine = self._engine() if (use_llm and self.settings.use_llm) else None
        rankers = self.rankers()
        cfg = PipelineConfig(
            candidates_per_source=self.settings.candidates_per_source,
            llm_candidates=self.settings.llm_candidates,
            mmr_lambda=self.settings.mmr_lambda,
        )
        # the prompt follows the adapter's card; prompt_history is for a model without one (the base)
        llm = None
        if engine is not None:
            llm = LLMScorer(
                engine,
                model or self.settings.adapter,
                history=self.settings.prompt_history,
                deadline_s=self.settings.llm_deadline_s,
            )
        return Pipeline(self.catalogue.sync(), self.signals, cfg, rankers.final, rankers.pre, llm)

    # ---- recommend -----------------------------------------------------------------------------

    def recommend(
        self,
        user_id: str,
        *,
        k: int = 10,
        context_item: str | None = None,
        category: str | None = None,
        exclude: list[str] | None = None,
        price_min: float | None = None,
        price_max: float | None = None,
        mmr_lambda: float | None = None,
    ) -> dict[str, Any]:
        user_id = parse_id(user_id, "user_id")
        if not 1 <= k <= self.settings.max_k:
            raise InvalidRequestError(f"k must be between 1 and {self.settings.max_k}, got {k}")
        if price_min is not None and price_max is not None and price_min > price_max:
            raise InvalidRequestError("price_min must not be above price_max")
        if mmr_lambda is not None and not 0 <= mmr_lambda <= 1:
            raise InvalidRequestError("mmr_lambda must be between 0 and 1")
        stored = self._user(user_id)
        # a user stays on one version of the tenant's adapter (sticky) while a traffic split runs
        route = self.router.route(sticky_key=stored) if self.router is not None else None
        pipeline = self.pipeline(model=route.model if route else None)
        if mmr_lambda is not None:
            pipeline.config = PipelineConfig(**{**asdict(pipeline.config), "mmr_lambda": mmr_lambda})
        if context_item is not None and context_item not in pipeline.index:
            raise UnknownItemError(f"unknown context_item {context_item!r}")
        now = time.time()
        blocked = self.signals.excluded(stored)
        if self.settings.exclude_shown and self.settings.shown_ttl_s > 0:
            blocked |= self.signals.shown(stored, now - self.settings.shown_ttl_s)
        filters = Filters(category, price_min, price_max, frozenset(exclude or ()))
        result = pipeline.recommend(
            self.signals.history(stored), k=k, blocked=blocked, filters=filters, context_item=context_item, now=now
        )
        rid = uuid.uuid4().hex
        items = []
        for r in result.items:
            item = pipeline.index.items[r.item_id]
            items.append(
                {
                    "item_id": item.id,
                    "title": item.title,
                    "category": item.category,
                    "price": item.price,
                    "score": round(r.score, 6),
                    "reason": r.reason,
                    "source": r.source,
                }
            )
        model = result.llm_model or "none"
        self._log_recommendation(rid, stored, result.items, result.cold_start, now, model)
        if route is not None and self.router is not None and result.llm_model == route.model:
            self.router.served(route)
        return {
            "recommendation_id": rid,
            "user_id": user_id,
            "items": items,
            "cold_start": result.cold_start,
            "model": model,
            "ranker": result.ranker,
        }

    def _log_recommendation(
        self, rid: str, user_id: str, ranked: list[Any], cold: bool, now: float, model: str = "none"
    ) -> None:
        key = self._key("rec", rid)
        pipe = self.client.pipeline(transaction=False)
        items = json.dumps({r.item_id: r.source for r in ranked})
        pipe.hset(key, mapping={"user": user_id, "ts": repr(now), "items": items, "model": model})
        pipe.expire(key, self.settings.recommendation_ttl_s)
        pipe.hincrby(self._key("stats"), "requests", 1)
        if cold:
            pipe.hincrby(self._key("stats"), "cold_start_requests", 1)
        pipe.execute()  # impressions and "shown" come with POST /impressions: a GET changes no later answer

    # ---- events --------------------------------------------------------------------------------

    def _check_known(self, events: list[Event], where: list[str]) -> None:
        index = self.catalogue.sync()
        for e, w in zip(events, where, strict=True):
            if e.item_id not in index:
                raise UnknownItemError(f"{w}: unknown item {e.item_id!r}; add it to the catalogue first")

    def _record(self, events: list[Event]) -> None:
        index = self.catalogue.sync()
        categories = {e.item_id: index.items[e.item_id].category for e in events if e.item_id in index}
        self.signals.record(events, categories, self.settings.exclude_event_types)

    def add_events(self, raw: list[dict[str, Any]]) -> dict[str, Any]:
        """All or nothing: every event is checked (shape, known item) before any is stored."""
        _check_batch(raw, "event", self.settings.max_events_per_request)
        now = time.time()
        events, where = [], []
        for n, r in enumerate(raw):
            try:
                events.append(parse_event(r, now=now))
            except InvalidRequestError as exc:
                raise InvalidRequestError(f"events[{n}]: {exc.message}") from None
            where.append(f"events[{n}]")
        self._check_known(events, where)
        self._record(self._users(events))
        return {"accepted": len(events)}

    def add_events_text(self, text: str, fmt: str) -> dict[str, Any]:
        """A file of events: good rows stored, bad rows (and unknown items) reported."""
        events, errors = parse_events_text(text, fmt)
        index = self.catalogue.sync()
        good = [e for e in events if e.item_id in index]
        errors += [
            RowError(f"user {e.user_id}", f"unknown item {e.item_id!r}") for e in events if e.item_id not in index
        ]
        good = self._users(good)
        for start in range(0, len(good), 5000):
            self._record(good[start : start + 5000])
        return {"accepted": len(good), "rejected": len(errors), "errors": _errors(errors[:100])}

    # ---- items ---------------------------------------------------------------------------------

    def upsert_items(self, raw: list[dict[str, Any]]) -> dict[str, Any]:
        """All or nothing, like events."""
        _check_batch(raw, "item", self.settings.max_items_per_request)
        items: dict[str, Item] = {}
        for n, r in enumerate(raw):
            try:
                item = parse_item(r, max_text_chars=self.settings.max_text_chars)
            except InvalidRequestError as exc:
                raise InvalidRequestError(f"items[{n}]: {exc.message}") from None
            items[item.id] = item
        added, updated = self.catalogue.upsert(list(items.values()))
        return {"added": added, "updated": updated}

    def upsert_items_text(self, text: str, fmt: str) -> dict[str, Any]:
        items, errors = parse_items_text(text, fmt, max_text_chars=self.settings.max_text_chars)
        added = updated = 0
        for start in range(0, len(items), 512):
            a, u = self.catalogue.upsert(items[start : start + 512])
            added, updated = added + a, updated + u
        return {"added": added, "updated": updated, "rejected": len(errors), "errors": _errors(errors[:100])}

    def delete_items(self, ids: list[str]) -> dict[str, Any]:
        if not ids:
            raise InvalidRequestError("name at least one item id")
        for i in ids:
            parse_id(i, "each id")
        deleted, unknown = self.catalogue.delete(list(dict.fromkeys(ids)))
        self.signals.forget_items(deleted)
        return {"deleted": deleted, "unknown": unknown}

    # ---- feedback and stats --------------------------------------------------------------------

    def feedback(self, recommendation_id: str, item_id: str, kind: str, ts: Any = None) -> dict[str, Any]:
        """Attribute a click, cart or purchase to the recommendation (and source) that showed the item.
        Counted once per (recommendation, item, type); the event also enters the user's history."""
        if kind not in FEEDBACK_TYPES:
            raise InvalidRequestError(f"type must be one of {', '.join(FEEDBACK_TYPES)}, got {kind!r}")
        rec = self.client.hgetall(self._key("rec", recommendation_id))
        if not rec:
            raise UnknownRecommendationError(f"unknown or expired recommendation_id {recommendation_id!r}")
        shown: dict[str, str] = json.loads(rec[b"items"])
        if item_id not in shown:
            raise InvalidRequestError(f"item {item_id!r} was not in recommendation {recommendation_id!r}")
        user = rec[b"user"].decode()
        event = parse_event({"user_id": user, "item_id": item_id, "type": kind, "ts": ts})
        first = self.client.sadd(self._key("rec", recommendation_id, "fb"), f"{kind}:{item_id}") == 1
        if first:
            pipe = self.client.pipeline(transaction=False)
            pipe.expire(self._key("rec", recommendation_id, "fb"), self.settings.recommendation_ttl_s)
            pipe.hincrby(self._key("stats"), f"{kind}s:{shown[item_id]}", 1)
            pipe.execute()
            model = rec.get(b"model", b"none").decode()
            # joined to the version that ranked it, once per recommendation and kind: a rate per list
            per_list = self.client.sadd(self._key("rec", recommendation_id, "fb"), f"{kind}:*") == 1
            if self.router is not None and model != "none" and per_list:
                self.router.outcome(model, kind)
        if item_id in self.catalogue.sync():
            self._record([event])
        return {"attributed": first, "source": shown[item_id], "user_id": user}

    def impressions(self, recommendation_id: str, item_ids: list[str] | None = None) -> dict[str, Any]:
        """The storefront showed these items of a recommendation (all of them when ``item_ids`` is
        None): each counts as one impression of its source, once, and is kept off the user's next
        lists for ``shown_ttl_s``."""
        rec = self.client.hgetall(self._key("rec", recommendation_id))
        if not rec:
            raise UnknownRecommendationError(f"unknown or expired recommendation_id {recommendation_id!r}")
        listed: dict[str, str] = json.loads(rec[b"items"])
        wanted = list(dict.fromkeys(item_ids)) if item_ids is not None else list(listed)
        strangers = [i for i in wanted if i not in listed]
        if strangers:
            raise InvalidRequestError(f"items {strangers[:5]} were not in recommendation {recommendation_id!r}")
        seen_key = self._key("rec", recommendation_id, "seen")
        pipe = self.client.pipeline(transaction=False)
        for item in wanted:
            pipe.sadd(seen_key, item)
        fresh = [item for item, added in zip(wanted, pipe.execute(), strict=True) if added]
        pipe = self.client.pipeline(transaction=False)
        pipe.expire(seen_key, self.settings.recommendation_ttl_s)
        for item in fresh:
            pipe.hincrby(self._key("stats"), f"impressions:{listed[item]}", 1)
        pipe.execute()
        user = rec[b"user"].decode()
        if fresh and self.settings.exclude_shown and self.settings.shown_ttl_s > 0:
            self.signals.mark_shown(user, fresh, time.time(), self.settings.shown_ttl_s)
        return {"recorded": len(fresh), "already": len(wanted) - len(fresh), "user_id": user}

    def stats(self) -> dict[str, Any]:
        raw = {k.decode(): int(v) for k, v in self.client.hgetall(self._key("stats")).items()}
        sources: dict[str, dict[str, float]] = {}
        for key, value in raw.items():
            if ":" in key:
                metric, source = key.split(":", 1)
                sources.setdefault(source, {"impressions": 0, "clicks": 0, "carts": 0, "purchases": 0})[metric] = value
        for s in sources.values():
            shown = s["impressions"]
            s["ctr"] = round(s["clicks"] / shown, 6) if shown else 0.0
            s["conversion"] = round(s["purchases"] / shown, 6) if shown else 0.0
        return {
            "requests": raw.get("requests", 0),
            "cold_start_requests": raw.get("cold_start_requests", 0),
            "sources": dict(sorted(sources.items())),
            "catalogue_items": len(self.catalogue.sync()),
        }
