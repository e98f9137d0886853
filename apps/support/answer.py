"""How the bot answers one customer message.

    message ─ mask PII ─ canned answer? ─ rule topic or intent that always hands off?
            ─ rewrite a follow-up into a standalone question (with the last question)
            ─ split into parts ─ the extractive answerer (``extractive.py``): the knowledge base's
              own sentences that answer each part, chosen by a fitted selector, quoted verbatim
              with [n] citations (curated FAQ answers are candidates like any other sentence)
            ─ the selector's confidence below its threshold, a fact check or a never-say rule
              failed? → hand off

Nothing is generated: a 135M model that writes free text states facts its sources do not hold,
and a citation does not make them true (issue 14). Every doubt ends in a handoff, with its reason
kept for the team's stats.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from apps.http.pii import mask_pii
from apps.support.extractive import ExtractiveAnswerer, Selector, Sentence, unlisted_contacts
from apps.support.intents import Intent, IntentClassifier
from apps.support.rules import Rules
from apps.support.settings import SupportSettings
from core.errors import InputTooLargeError, InvalidRequestError
from core.interface import Engine

log = logging.getLogger(__name__)

_QUESTION_WORDS = r"(?:how|what|when|where|why|can|could|do|does|did|is|are|will|would|should|who|which|may)"
_PART_SPLIT = re.compile(rf",?\s+(?:and|also|plus)\s+(?={_QUESTION_WORDS}\b)", re.IGNORECASE)
_FOLLOW_UP = re.compile(
    r"^\s*(and|also|what about|how about|but|so|then|what if|same|ok(ay)?,?|and if)\b"
    r"|\b(it|that|this|they|them|those|these|there|one)\b[^a-z]*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Citation:
    n: int
    doc_id: str
    title: str
    url: str | None


@dataclass(frozen=True)
class Passage:
    text: str
    doc_id: str
    title: str
    url: str | None
    cosine: float  # retrieval cosine of the best passage holding it
    chunk_id: str = ""


@dataclass
class Reply:
    answer: str
    citations: list[Citation]
    confidence: float
    intent: str | None
    handoff: bool
    source: str  # "extracted" | "canned" | "handoff"
    reason: str | None = None  # why it handed off: "rule:fraud", "no_match", "low_confidence", ...
    question: str = ""  # the standalone (masked) question that was answered
    details: dict[str, Any] = field(default_factory=dict)
    model: str = ""  # the model whose intent head screened the message (a tenant's version, or the shared one)

    def public(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "answer": self.answer,
            "citations": [c.__dict__ for c in self.citations],
            "confidence": round(self.confidence, 4),
            "intent": self.intent,
            "handoff": self.handoff,
            "source": self.source,
        }


@dataclass
class Plan:
    """A message answered: the ``reply`` and the passages behind it (what an agent sees on a handoff)."""

    question: str
    intent: Intent | None
    reply: Reply
    passages: list[Passage] = field(default_factory=list)


_STARTS_QUESTION = re.compile(rf"^\W*(and |also |plus )?{_QUESTION_WORDS}\b", re.IGNORECASE)


def split_parts(question: str, max_parts: int) -> list[str]:
    """The parts of a multi-part question: by question marks, then by "and <question word>". A
    sentence that asks nothing ("It's been two weeks.") stays with the part before it, as does a
    fragment of one or two words."""
    parts = [p.strip() for p in re.split(r"(?<=[?.!])\s+", question) if p.strip()]
    if len(parts) == 1:
        parts = [p.strip(" ,") for p in _PART_SPLIT.split(question) if p.strip(" ,")]
    merged: list[str] = []
    for p in parts:
        asks = p.endswith("?") or bool(_STARTS_QUESTION.match(p))
        if merged and (len(p.split()) < 3 or not asks):
            merged[-1] = f"{merged[-1]} {p}"
        else:
            merged.append(p)
    if len(merged) > 1 and not (merged[0].endswith("?") or _STARTS_QUESTION.match(merged[0])):
        merged[:2] = [f"{merged[0]} {merged[1]}"]  # a statement first is the context of the question
    if len(merged) > max_parts:
        merged = [*merged[: max_parts - 1], " ".join(merged[max_parts - 1 :])]
    return merged or [question]


def standalone_question(message: str, earlier_questions: list[str]) -> str:
    """A follow-up ("and to Canada?", "how long does that take?") joined to the last question, so
    retrieval sees what it refers to; a self-contained message is left as it is."""
    if not earlier_questions:
        return message
    short = len(message.split()) <= 4
    if short or _FOLLOW_UP.search(message):
        return f"{earlier_questions[-1].rstrip(' ?.!')}? {message}"
    return message


def _passages(sentences: Sequence[Sentence]) -> list[Passage]:
    """The sections the chosen sentences come from, each once: what an agent reads when this turn
    hands off (the bot's best evidence, whether or not it dared to answer)."""
    out: dict[tuple[str, int], Passage] = {}
    for s in sentences:
        key = (s.doc_id, s.section_index)
        if key not in out:
            text = s.source or s.text
            out[key] = Passage(text, s.doc_id, s.title, s.url, float(s.passage_cosine), f"{s.doc_id}#{s.section_index}")
    return list(out.values())


class SupportBot:
    def __init__(
        self,
        engine: Engine,
        kb: Any,
        rules: Rules,
        settings: SupportSettings,
        intents: IntentClassifier,
        selector: Selector | None = None,
    ) -> None:
        self.engine = engine
        self.kb = kb
        self.rules = rules
        self.settings = settings
        self.intents = intents
        self.extractive = ExtractiveAnswerer(
            engine, kb, selector or Selector.load(settings.selector_path), banned=rules.violations
        )

    @property
    def model(self) -> str:
        """The model whose intent head screens messages: the support adapter, else the base model."""
        return self.settings.adapter if self.engine.has_model(self.settings.adapter) else "base"

    def warm_up(self) -> int:
        """Embed the knowledge base's sentences once, so a question costs the embedding of its parts."""
        return self.extractive.warm_up()

    def check_message(self, message: str) -> str:
        if not isinstance(message, str) or not message.strip():
            raise InvalidRequestError("message must be a non-empty string")
        try:
            message.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequestError("message is not valid Unicode text (lone surrogate characters)") from None
        if len(message) > self.settings.max_message_chars:
            raise InputTooLargeError(
                f"message holds {len(message)} characters; the limit is {self.settings.max_message_chars}",
                limit=self.settings.max_message_chars,
                actual=len(message),
            )
        if not any(ch.isprintable() and not ch.isspace() for ch in message):
            raise InvalidRequestError("message holds only control characters and spaces")
        return message.strip()

    def _handoff(
        self, question: str, intent: Intent | None, reason: str, *, confidence: float = 0.0, **details: Any
    ) -> Reply:
        return Reply(
            answer=self.rules.handoff_message,
            citations=[],
            confidence=float(confidence),
            intent=intent.name if intent else None,
            handoff=True,
            source="handoff",
            reason=reason,
            question=question,
            details=details,
        )

    def plan(self, message: str, earlier_questions: list[str] | None = None, model: str | None = None) -> Plan:
        """The reply to ``message`` (masked first), with the passages behind it. ``model``: the support
        model that screens it (the tenant's routed version); by default the shared adapter."""
        model = model or self.model
        plan = self._plan(message, earlier_questions, model)
        plan.reply.model = model
        return plan

    def _plan(self, message: str, earlier_questions: list[str] | None, model: str) -> Plan:
        masked = mask_pii(self.check_message(message))
        canned = self.rules.canned_answer(masked)
        if canned is not None:
            reply = Reply(canned.answer, [], 1.0, None, False, "canned", question=masked)
            return Plan(masked, None, reply=reply)
        question = standalone_question(masked, [mask_pii(q) for q in earlier_questions or []])
        intent = self.intents.classify([masked], model=model)[0]
        sure = intent is not None and intent.confidence >= self.settings.intent_rule_confidence
        topic = self.rules.handoff_topic(masked, intent.name if sure and intent else None)
        if topic is not None:
            return Plan(question, intent, reply=self._handoff(question, intent, f"rule:{topic}"))
        parts = split_parts(question, self.settings.max_parts)
        found = self.extractive.answer(question, parts)
        passages = _passages(found.selected)
        details = {**found.details, "sentences": [s.text for s in found.selected]}
        if found.handoff:
            reason = found.reason or "low_confidence"
            reply = self._handoff(question, intent, reason, confidence=found.confidence, **details)
            return Plan(question, intent, reply=reply, passages=passages)
        shown = " ".join([found.answer, *(c.title for c in found.citations)])
        unlisted = unlisted_contacts(shown, self.settings.answer_contacts) if self.settings.answer_contacts else []
        if unlisted:  # a KB page may be hostile: only the team's own contacts reach a customer
            log.warning("an answer held contacts outside the allowlist %s; handing off", unlisted)
            reply = self._handoff(question, intent, "unlisted_contact", confidence=found.confidence, **details)
            return Plan(question, intent, reply=reply, passages=passages)
        citations = [Citation(c.n, c.doc_id, c.title, c.url) for c in found.citations]
        reply = Reply(
            found.answer,
            citations,
            found.confidence,
            intent.name if intent else None,
            False,
            "extracted",
            question=question,
            details=details,
        )
        return Plan(question, intent, reply=reply, passages=passages)

    def answer(self, message: str, earlier_questions: list[str] | None = None) -> Reply:
        """The reply alone (the evaluations call this)."""
        return self.plan(message, earlier_questions).reply
