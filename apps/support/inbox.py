"""The handoff workflow as the bot, the routes and the streams see it: the desk (state and events in
Redis), the daily analytics and the team's webhook, kept in step.

    the bot hands off, or the customer asks ─▶ open ──▶ analytics + webhook handoff.opened
    the customer writes while it is active  ─▶ customer_message (the bot stays silent) ──▶ webhook
    an agent takes, replies, closes         ─▶ take / reply / close ──▶ webhook taken / closed
    the customer rates, leaves an e-mail    ─▶ csat ──▶ analytics;  contact ──▶ webhook handoff.contact
    the customer's event stream is open     ─▶ check_no_agent: past the timeout, tell them, once

Who may act as an agent is the routes' business (the admin key today); the agent names themself in
each request, and the desk holds them to it (only the taker replies or closes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from apps.http.pii import mask_pii
from apps.support.analytics import SupportAnalytics
from apps.support.conversations import ConversationStore
from apps.support.handoffs import DEFAULT_TENANT, HandoffDesk
from apps.support.settings import SupportSettings
from apps.support.webhook import WebhookQueue, build_event, target_for

log = logging.getLogger(__name__)


def passage_records(passages: Sequence[Any]) -> list[dict[str, Any]]:
    """The retrieved passages of a turn as the agent reads them (what ``answer.Passage`` holds)."""
    return [
        {
            "doc_id": getattr(p, "doc_id", ""),
            "title": getattr(p, "title", ""),
            "url": getattr(p, "url", None),
            "text": getattr(p, "text", ""),
            "score": round(float(getattr(p, "cosine", 0.0)), 4),
        }
        for p in passages
    ]


class Inbox:
    def __init__(
        self,
        sessions: ConversationStore,
        settings: SupportSettings,
        webhooks: WebhookQueue | None = None,
        *,
        tenant: str = DEFAULT_TENANT,
        has_target: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``has_target``: whether the tenant's helpdesk webhook is set now (another tenant's is in
        Redis, ``apps.tenants.delivery``); by default, whether the settings name one."""
        self.sessions = sessions
        self.settings = settings
        self.tenant = tenant
        self.clock = clock
        self.desk = HandoffDesk(
            sessions,
            tenant,
            retention_s=settings.handoff_retention_s,
            max_text_chars=settings.max_message_chars,
            clock=clock,
        )
        self.analytics = SupportAnalytics(
            sessions.r, sessions.ns, tenant, retention_days=settings.analytics_retention_days, clock=clock
        )
        self.webhooks = webhooks
        self._has_target = has_target or (lambda: target_for(settings, tenant) is not None)

    def _notify(self, event_type: str, handoff: dict[str, Any], **extra: Any) -> None:
        """Queue a webhook event. The state has changed already, so a broker hiccup is logged, not
        raised: the customer and the agent are not failed for the helpdesk's copy."""
        if self.webhooks is None or not self._has_target():
            return
        try:
            self.webhooks.enqueue(build_event(event_type, self.tenant, handoff, **extra))
        except Exception as exc:  # any broker failure
            log.error("could not queue the %s webhook for handoff %s: %s", event_type, handoff.get("id"), exc)

    # ---- the bot's side --------------------------------------------------------------------------

    def remember_passages(self, session_id: str, passages: Sequence[Any]) -> None:
        self.desk.remember_passages(session_id, passage_records(passages))

    def record_turn(self, session_id: str, *, answered: bool) -> None:
        self.analytics.record_turn(self.sessions.session_key(session_id), answered=answered)

    def open(self, session_id: str, reason: str, *, question: str = "", unanswered: bool = False) -> dict[str, Any]:
        """Open (or return) the session's handoff. ``unanswered``: the bot could not answer
        ``question``, so it counts among the day's top unanswered questions."""
        record, created = self.desk.open(session_id, reason=reason, question=question)
        if created:
            self.analytics.record_handoff(
                self.sessions.session_key(session_id), record["question"] if unanswered else None
            )
            self._notify("handoff.opened", record, conversation=record["conversation"], passages=record["passages"])
            log.info("handoff %s opened for session %s: %s", record["id"], session_id, record["reason"])
        return record

    # ---- the customer's side ---------------------------------------------------------------------

    def customer_message(self, session_id: str, text: str) -> dict[str, Any] | None:
        """The message forwarded to the agent when a handoff is active (the bot must not answer it);
        None when there is none and the bot answers as usual."""
        message = self.desk.customer_message(session_id, text)
        if message is not None:
            handoff = self.desk.require(message["handoff_id"])
            self._notify("handoff.customer_message", handoff, message=message)
        return message

    def csat(self, session_id: str, rating: int, comment: str | None = None) -> dict[str, Any]:
        record = self.desk.csat(session_id, rating, comment)
        self.analytics.record_csat(rating)
        log.info("handoff %s rated %d by its customer", record["id"], rating)
        return record

    def contact(self, session_id: str, email: str) -> dict[str, Any]:
        record = self.desk.contact(session_id, email)
        log.info("handoff %s: the customer left an address to be answered at: %s", record["id"], mask_pii(email))
        self._notify("handoff.contact", record, contact={"email": record["contact_email"]})
        return record

    def session_state(self, session_id: str) -> dict[str, Any]:
        return self.desk.session_state(session_id)

    def check_no_agent(self, handoff_id: str) -> bool:
        return self.desk.notify_no_agent(
            handoff_id, self.settings.handoff_timeout_s, self.settings.handoff_timeout_message
        )

    # ---- the agent's side ------------------------------------------------------------------------

    def take(self, handoff_id: str, agent: str) -> dict[str, Any]:
        record, changed = self.desk.take(handoff_id, agent)
        if changed:
            self._notify("handoff.taken", record)
        return record

    def reply(self, handoff_id: str, agent: str, text: str) -> dict[str, Any]:
        return self.desk.reply(handoff_id, agent, text)

    def close(self, handoff_id: str, agent: str) -> dict[str, Any]:
        record, changed = self.desk.close(handoff_id, agent)
        if changed:
            self._notify("handoff.closed", record)
        return record

    def list_handoffs(self, status: str | None, limit: int) -> dict[str, Any]:
        cursor = self.desk.inbox_cursor()  # first: an event after it is never missed by a client that follows
        return {"handoffs": self.desk.list_handoffs(status, limit), "cursor": cursor}

    def get(self, handoff_id: str) -> dict[str, Any]:
        return self.desk.require(handoff_id)

    def counts(self) -> dict[str, int]:
        return self.desk.counts()

    def report(self, days: int, top: int = 10) -> dict[str, Any]:
        return {**self.analytics.report(days, top), "now": self.counts()}
