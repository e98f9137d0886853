"""The support bot as one service: the knowledge base, the rules, the conversations in Redis and the
answering pipeline, wired together. Routes and the CLI call this; it knows nothing of HTTP."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

import redis

from apps.support.answer import Plan, Reply, SupportBot
from apps.support.conversations import ConversationStore
from apps.support.documents import Document
from apps.support.inbox import Inbox
from apps.support.intents import IntentClassifier
from apps.support.kb import KnowledgeBase
from apps.support.rules import Rules, load_rules
from apps.support.settings import SupportSettings
from apps.support.webhook import WebhookQueue
from apps.tenants.models import ModelRouter
from apps.tenants.store import DEFAULT_TENANT
from core.batching import one_admission
from core.interface import Engine
from core.shared_state import SharedVersion

log = logging.getLogger(__name__)


def kb_version(client: redis.Redis, settings: SupportSettings) -> SharedVersion:
    """The version key of a tenant's knowledge base (its settings' namespace is the tenant's): the
    generation in its folder, announced by whoever wrote it."""
    return SharedVersion(client, f"{settings.namespace}:kb:version")


class SupportService:
    def __init__(
        self,
        settings: SupportSettings,
        client: redis.Redis,
        engine: Engine,
        rules: Rules | None = None,
        *,
        webhooks: WebhookQueue | None = None,
        tenant: str = DEFAULT_TENANT,
        has_webhook: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.rules = rules or load_rules(settings.rules_path)
        self.store = ConversationStore(client, namespace=settings.namespace, session_ttl_s=settings.session_ttl_s)
        # handoffs to a person, their live events, the team's webhook and the daily analytics
        self.inbox = Inbox(self.store, settings, webhooks, tenant=tenant, has_target=has_webhook)
        self.kb = KnowledgeBase(
            settings.kb_dir,
            engine,
            chunk_tokens=settings.chunk_tokens,
            overlap_tokens=settings.chunk_overlap_tokens,
            version=kb_version(client, settings),
        )
        self.kb.warm_up()
        self.intents = IntentClassifier(engine, settings.adapter)
        self.router: ModelRouter | None = None  # the tenant's adapter route (set by the composition root)
        self.bot = SupportBot(engine, self.kb, self.rules, settings, self.intents)

    def warm_up(self) -> None:
        """Embed the KB's sentences once the engine is up (until then the first questions are slower)."""
        try:
            log.info("support: %d knowledge-base texts embedded for answering", self.bot.warm_up())
        except Exception as exc:  # questions embed what they need themselves
            log.warning("support: warming up the answerer failed (%s); answering embeds on demand", exc)

    def fresh_kb(self) -> KnowledgeBase:
        """The knowledge base, reloaded when another process (a replica, ``domainllm support ingest``)
        wrote a newer generation: its version key in Redis is read at most every half second."""
        if self.kb.refresh_if_changed():
            log.info("knowledge base reloaded: generation %d, %d chunks", self.kb.generation, len(self.kb))
        return self.kb

    # ---- conversations ------------------------------------------------------------------------------

    def create_session(self, meta: dict[str, Any] | None = None) -> str:
        return self.store.create_session(meta)

    def _earlier_questions(self, session_id: str) -> list[str]:
        """The customer's earlier questions that the bot answered (not greetings or handed-off ones),
        oldest first: the context a follow-up may refer to."""
        history = self.store.history(session_id, limit=2 * self.settings.history_turns)
        return [
            m["text"]
            for m, reply in itertools.pairwise(history)
            if m.get("role") == "user"
            and reply.get("role") == "assistant"
            and (reply.get("meta") or {}).get("source") == "extracted"
        ]

    def begin(self, session_id: str, message: str) -> Plan:
        """Check the session and the message, then plan the answer (nothing stored on bad input)."""
        self.store.require(session_id)
        self.fresh_kb()
        route = self.router.route(sticky_key=session_id) if self.router is not None else None
        with one_admission():  # refused at its first engine call when the engine is full, never halfway
            # checks the message first; a session stays on one version of the tenant's adapter
            plan = self.bot.plan(message, self._earlier_questions(session_id), model=route.model if route else None)
        if route is not None and self.router is not None:
            self.router.served(route)
        self.store.add_message(session_id, "user", message.strip())
        self.inbox.remember_passages(session_id, plan.passages)  # what an agent sees if this turn hands off
        return plan

    def complete(self, session_id: str, reply: Reply) -> dict[str, Any]:
        """Store the bot's reply and its outcome; open a handoff when it hands off."""
        body = reply.public()
        message_id = self.store.add_message(
            session_id,
            "assistant",
            reply.answer,
            source=reply.source,
            handoff=reply.handoff,
            confidence=round(reply.confidence, 4),
            intent=reply.intent or "unknown",
            model=reply.model,
        )
        if reply.handoff and self.router is not None:
            self.router.outcome(reply.model, "handoff")
        unanswered = reply.handoff and not (reply.reason or "").startswith("rule:")
        counted = self.store.record_outcome(
            session_id,
            message_id,
            question=reply.question,
            intent=reply.intent or "unknown",
            handoff=reply.handoff,
            source=reply.source,
            confidence=reply.confidence,
            unanswered=unanswered,
        )
        if counted:
            self.inbox.record_turn(session_id, answered=not reply.handoff)
        if reply.handoff:
            record = self.inbox.open(
                session_id, reply.reason or "handoff", question=reply.question, unanswered=unanswered
            )
            body["handoff_id"] = record["id"]
            log.info("session %s handed off: %s", session_id, reply.reason)
        return {"message_id": message_id, **body}

    def request_handoff(self, session_id: str, reason: str | None) -> dict[str, Any]:
        self.store.require(session_id)
        record = self.inbox.open(session_id, reason or "customer asked for a person")  # the desk masks PII
        return {"handoff": True, "handoff_id": record["id"], "message": self.rules.handoff_message}

    def feedback(self, session_id: str, message_id: str, rating: str, comment: str | None) -> dict[str, Any]:
        result = self.store.feedback(session_id, message_id, rating, comment)
        if result["changed"] and self.router is not None:  # joined to the version that gave the answer
            model = self.store.message_meta(session_id, message_id).get("model")
            self.router.outcome(model, rating)
            if result["previous"]:
                self.router.outcome(model, result["previous"], -1)
        return {"ok": True}

    def stats(self) -> dict[str, Any]:
        active = self.inbox.counts()
        kb = self.fresh_kb()
        return {
            **self.store.stats(),
            "open_handoffs": active["open"],
            "taken_handoffs": active["taken"],
            "kb": {"documents": len(kb.documents()), "chunks": len(kb)},
            "intents_available": self.intents.available if self.engine.ready else None,
            "model": self.bot.model if self.engine.ready else None,
        }

    # ---- knowledge base -----------------------------------------------------------------------------

    def add_documents(self, docs: list[Document]) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.kb.upsert_many(docs)]
