"""How the bot answers one customer message.

    message ─ mask PII ─ canned answer? ─ rule topic or intent that always hands off?
            ─ rewrite a follow-up into a standalone question (with the last question)
            ─ curated FAQ match above the threshold? → the FAQ answer (a template match)
            ─ split into parts, retrieve each (hybrid) ─ best passage too weak? → hand off
            ─ generate with the support adapter over the numbered passages
            ─ clean, cite each sentence's best document as [n], confidence = retrieval and support, weighted
            ─ confidence too low or a never-say rule broken? → hand off

``plan`` does everything before generation, so a route can stream the generation itself;
``finish`` turns the generated text into the reply. A wrong confident answer costs more than a
handoff, so every doubt ends in a handoff, with its reason kept for the team's stats.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from apps.http.pii import mask_pii
from apps.support.intents import Intent, IntentClassifier
from apps.support.rules import Rules
from apps.support.settings import SupportSettings
from core.errors import InputTooLargeError, InvalidRequestError
from core.interface import Engine
from core.prompts import Message
from core.sampling import SamplingParams
from domains import support

log = logging.getLogger(__name__)

_QUESTION_WORDS = r"(?:how|what|when|where|why|can|could|do|does|did|is|are|will|would|should|who|which|may)"
_PART_SPLIT = re.compile(rf",?\s+(?:and|also|plus)\s+(?={_QUESTION_WORDS}\b)", re.IGNORECASE)
_FOLLOW_UP = re.compile(
    r"^\s*(and|also|what about|how about|but|so|then|what if|same|ok(ay)?,?|and if)\b"
    r"|\b(it|that|this|they|them|those|these|there|one)\b[^a-z]*$",
    re.IGNORECASE,
)
# Sentences in retrieved text that address the model rather than the reader: dropped before the
# passages reach the prompt (retrieved text is data; see also the never-say rules on the way out).
_INJECTION = re.compile(
    r"(ignore|disregard|forget|override)\b.{0,40}\b(instructions?|rules|prompt|guidelines)"
    r"|\b(system|admin|developer) (note|prompt|message|instruction)"
    r"|\byou are now\b|\bnew instructions?\b|\bact as\b|\bpretend to be\b",
    re.IGNORECASE,
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_TEMPLATE_SLOT = re.compile(r"\{\{[^}]*\}\}")
_MODEL_CITATION = re.compile(r"\s*\[\d+\]")


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
    cosine: float  # MiniLM similarity to the (part of the) question it was retrieved for
    chunk_id: str = ""


@dataclass
class Reply:
    answer: str
    citations: list[Citation]
    confidence: float
    intent: str | None
    handoff: bool
    source: str  # "faq" | "generated" | "canned" | "handoff"
    reason: str | None = None  # why it handed off: "rule:fraud", "no_match", "low_confidence", ...
    question: str = ""  # the standalone (masked) question that was answered
    details: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "citations": [c.__dict__ for c in self.citations],
            "confidence": round(self.confidence, 4),
            "intent": self.intent,
            "handoff": self.handoff,
            "source": self.source,
        }


@dataclass
class Plan:
    """A message made ready: either a finished ``reply``, or a ``prompt`` to generate from."""

    question: str
    intent: Intent | None
    reply: Reply | None = None
    prompt: list[Message] | None = None
    passages: list[Passage] = field(default_factory=list)
    retrieval: float = 0.0


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


def neutralise(text: str) -> str:
    """Retrieved text without the sentences that try to instruct the model."""
    kept = [s for s in _SENTENCE.split(text) if s.strip() and not _INJECTION.search(s)]
    if len(kept) != len([s for s in _SENTENCE.split(text) if s.strip()]):
        log.info("dropped instruction-like text from a retrieved passage")
    return " ".join(kept)


def clean_generation(text: str) -> str:
    """The model's answer without template slots it learnt from its training data ("{{Order
    Number}}"), and cut at the last full sentence when generation stopped mid-sentence."""
    text = _MODEL_CITATION.sub("", text)  # its own [n] follow the prompt's numbering: finish() cites anew
    sentences = [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]
    kept = [s for s in sentences if not _TEMPLATE_SLOT.search(s)]
    if kept and not re.search(r"[.!?)\]]$", kept[-1]) and len(kept) > 1:
        kept = kept[:-1]
    return " ".join(kept).strip()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.clip(a @ b.T, -1.0, 1.0)  # unit vectors: [len(a), len(b)]


class SupportBot:
    def __init__(
        self, engine: Engine, kb: Any, rules: Rules, settings: SupportSettings, intents: IntentClassifier
    ) -> None:
        self.engine = engine
        self.kb = kb
        self.rules = rules
        self.settings = settings
        self.intents = intents

    @property
    def model(self) -> str:
        return self.settings.adapter if self.engine.has_model(self.settings.adapter) else "base"

    def serving(self) -> support.SupportServing:
        """How the answering model is prompted: as its adapter card says it was trained, else (the base
        model) the domain's instruction with the configured passage length."""
        card = self.engine.serving_config(self.model)
        return support.read_serving(card, passage_tokens=self.settings.passage_tokens)

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.settings.max_new_tokens, temperature=0.0)

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
        return message.strip()

    def _handoff(self, plan_question: str, intent: Intent | None, reason: str, **details: Any) -> Reply:
        return Reply(
            answer=self.rules.handoff_message,
            citations=[],
            confidence=0.0,
            intent=intent.name if intent else None,
            handoff=True,
            source="handoff",
            reason=reason,
            question=plan_question,
            details=details,
        )

    def plan(self, message: str, earlier_questions: list[str] | None = None) -> Plan:
        masked = mask_pii(self.check_message(message))
        canned = self.rules.canned_answer(masked)
        if canned is not None:
            reply = Reply(canned.answer, [], 1.0, None, False, "canned", question=masked)
            return Plan(masked, None, reply=reply)
        question = standalone_question(masked, [mask_pii(q) for q in earlier_questions or []])
        intent = self.intents.classify([masked])[0]
        sure = intent is not None and intent.confidence >= self.settings.intent_rule_confidence
        topic = self.rules.handoff_topic(masked, intent.name if sure and intent else None)
        if topic is not None:
            return Plan(question, intent, reply=self._handoff(question, intent, f"rule:{topic}"))
        parts = split_parts(question, self.settings.max_parts)
        if len(parts) == 1:
            faq = self.kb.faq_match(question)
            if faq is not None and faq.score >= self.settings.faq_threshold:
                citation = Citation(1, faq.doc_id, faq.title or faq.question, faq.url)
                score = min(1.0, max(0.0, float(faq.score)))  # float32 cosines can pass 1.0
                reply = Reply(faq.answer, [citation], score, intent.name if intent else None, False, "faq")
                reply.question = question
                return Plan(question, intent, reply=reply)
        passages, strength = self._retrieve(parts)
        if not passages or strength < self.settings.min_retrieval:
            reply = self._handoff(question, intent, "no_match", retrieval=strength)
            return Plan(question, intent, reply=reply, passages=passages, retrieval=strength)
        prompt = support.prompt(
            question,
            [support.passage_text(p.text, p.title) for p in passages],
            self.engine.truncate_tokens,
            self.serving(),
        )
        return Plan(question, intent, prompt=prompt, passages=passages, retrieval=strength)

    def _retrieve(self, parts: list[str]) -> tuple[list[Passage], float]:
        """The passages for all parts (each part's best first) and the retrieval strength: the mean
        over parts of each part's best cosine (query to title + section + passage) among the
        passages kept, so one unanswerable part weakens the whole. Text that tries to instruct the
        model is dropped first (a passage left empty does not count)."""
        per_part = max(1, -(-self.settings.top_k // len(parts)))
        chosen: dict[str, Passage] = {}
        strengths = []
        for part in parts:
            kept = []
            for hit in self.kb.search(part, k=self.settings.top_k, mode="hybrid"):
                text = neutralise(hit.text)
                title = "" if _INJECTION.search(hit.title) else hit.title
                if text:
                    kept.append(Passage(text, hit.doc_id, title, hit.url, float(hit.dense_score or 0.0), hit.chunk_id))
            kept.sort(key=lambda p: p.cosine, reverse=True)
            strengths.append(kept[0].cosine if kept else 0.0)
            for passage in kept[:per_part]:
                chosen.setdefault(passage.chunk_id, passage)
        passages = sorted(chosen.values(), key=lambda p: p.cosine, reverse=True)[: self.settings.top_k]
        return passages, float(np.mean(strengths)) if strengths else 0.0

    def finish(self, plan: Plan, generated: str) -> Reply:
        """The reply for a generated text: cleaned, cited, scored, or handed off."""
        intent = plan.intent.name if plan.intent else None
        answer = clean_generation(generated)
        if not answer:
            return self._handoff(plan.question, plan.intent, "empty_answer")
        broken = self.rules.violations(answer)
        if broken:
            log.warning("a generated answer broke never-say rules %s; handing off", broken)
            return self._handoff(plan.question, plan.intent, f"never_say:{broken[0]}")
        sentences = [s for s in _SENTENCE.split(answer) if s.strip()]
        vecs = self.engine.embed([*sentences, *[p.text for p in plan.passages]])
        sims = _cosines(vecs[: len(sentences)], vecs[len(sentences) :])  # [sentences, passages]
        best = sims.max(axis=1)  # each sentence's best support
        support = float(best.mean())
        w = self.settings.retrieval_weight
        confidence = min(1.0, max(0.0, w * plan.retrieval + (1 - w) * support))
        cited: dict[str, int] = {}  # doc id -> citation number, in order of first use
        first_passage: dict[str, Passage] = {}
        out = []
        for sentence, row in zip(sentences, sims, strict=True):
            j = int(row.argmax())
            if row[j] >= 0.3:
                doc = plan.passages[j]
                n = cited.setdefault(doc.doc_id, len(cited) + 1)
                first_passage.setdefault(doc.doc_id, doc)
                sentence = f"{sentence.rstrip()} [{n}]"
            out.append(sentence)
        if not cited:  # grounded on the passages all the same: name the strongest one
            cited[plan.passages[0].doc_id] = 1
            first_passage[plan.passages[0].doc_id] = plan.passages[0]
        citations = [
            Citation(n, doc_id, first_passage[doc_id].title, first_passage[doc_id].url)
            for doc_id, n in sorted(cited.items(), key=lambda dn: dn[1])
        ]
        details = {
            "retrieval": plan.retrieval,
            "support": support,
            "support_by_sentence": [round(float(b), 4) for b in best],
            "would_cite": [c.doc_id for c in citations],
            "would_answer": " ".join(out),
        }
        if confidence < self.settings.min_confidence:
            return self._handoff(plan.question, plan.intent, "low_confidence", confidence=confidence, **details)
        return Reply(
            " ".join(out), citations, confidence, intent, False, "generated", question=plan.question, details=details
        )

    def answer(self, message: str, earlier_questions: list[str] | None = None) -> Reply:
        """Plan and, when needed, generate (blocking); the streaming route does the same in steps."""
        plan = self.plan(message, earlier_questions)
        if plan.reply is not None:
            return plan.reply
        assert plan.prompt is not None
        completion = self.engine.generate(plan.prompt, model=self.model, params=self.sampling())
        return self.finish(plan, completion.text)


class StreamGuard:
    """Lets generated text reach the customer a sentence at a time, and only text that passes the
    checks ``finish`` applies: sentences with template slots are held back, the model's own [n]
    markers are dropped, and the first never-say phrase stops the stream (the final event then
    carries the handoff). The final event's answer stays authoritative."""

    _BOUNDARY = re.compile(r"[.!?]\s+|\n+")

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.buffer = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        """Text that may be shown now ('' while a sentence is still being written)."""
        if self.stopped:
            return ""
        self.buffer += delta
        ends = [m.end() for m in self._BOUNDARY.finditer(self.buffer)]
        if not ends:
            return ""
        ready, self.buffer = self.buffer[: ends[-1]], self.buffer[ends[-1] :]
        return self._approve(ready)

    def flush(self) -> str:
        """What is left once generation ended."""
        rest, self.buffer = self.buffer, ""
        return "" if self.stopped else self._approve(rest)

    def _approve(self, text: str) -> str:
        text = _MODEL_CITATION.sub("", text)
        sentences = [s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]
        kept = [s.strip() for s in sentences if not _TEMPLATE_SLOT.search(s)]
        approved = " ".join(kept)
        if approved and self.rules.violations(approved):
            self.stopped = True
            return ""
        return f"{approved} " if approved else ""
